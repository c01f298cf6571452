/* Drives libminfer_trt_plugins (linked against mock_nvinfer) the way TensorRT does, through its
 * public headers: registration (static on dlopen, or IPluginRegistry::loadLibrary), createPlugin
 * with the fields TensorRT's ONNX parser makes of the node's attributes, every build and runtime
 * method except a real launch, and the serialise -> createPlugin(kRUNTIME) round trip.
 *
 *   glue_check <plugin library> static|dynamic
 *
 * Prints each failed check and exits 1 if any failed. A real launch is the GPU tests' job
 * (tests/test_plugin_logic.py runs the same enqueue sequence on the device). */
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "minfer/minfer_kernels.h"
#include "mock_nvinfer.h"

using namespace nvinfer1;

namespace {

int failures = 0;

/* getOutputShapes receives a builder; the plugin copies Q's dimensions and never calls it. */
struct UnusedExprBuilder final : IExprBuilder {};

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

bool logged(const std::string& text) {
  for (const std::string& message : mock_logged_messages()) {
    if (message.find(text) != std::string::npos) return true;
  }
  return false;
}

/* One layer of four heads, one per kind, as the ONNX parser hands the node's attributes over. */
struct Layer {
  float scale = 0.125F;
  int32_t block_size = 64;
  std::vector<int32_t> kind{0, 1, 2, 3}, sink{0, 4, 30, 0}, local{0, 100, 100, 0}, vertical_size{0, 0, 300, 0},
      slash_size{0, 0, 200, 0}, last_q{0, 0, 64, 0}, top_k{0, 0, 0, 3};

  std::vector<PluginField> fields() const {
    const auto n = static_cast<int32_t>(kind.size());
    return {{"scale", &scale, PluginFieldType::kFLOAT32, 1},
            {"block_size", &block_size, PluginFieldType::kINT32, 1},
            {"kind", kind.data(), PluginFieldType::kINT32, n},
            {"sink", sink.data(), PluginFieldType::kINT32, n},
            {"local", local.data(), PluginFieldType::kINT32, n},
            {"vertical_size", vertical_size.data(), PluginFieldType::kINT32, n},
            {"slash_size", slash_size.data(), PluginFieldType::kINT32, n},
            {"last_q", last_q.data(), PluginFieldType::kINT32, n},
            {"top_k", top_k.data(), PluginFieldType::kINT32, n}};
  }

  minfer_pattern pattern() const {
    return {static_cast<int32_t>(kind.size()), kind.data(), sink.data(), local.data(), vertical_size.data(),
            slash_size.data(), last_q.data(), top_k.data(), scale, block_size};
  }
};

IPluginV3* create(IPluginCreatorV3One& creator, const std::vector<PluginField>& fields, TensorRTPhase phase) {
  const PluginFieldCollection collection{static_cast<int32_t>(fields.size()), fields.data()};
  return creator.createPlugin("layer0_attention", &collection, phase);
}

Dims dims(std::initializer_list<int64_t> values) {
  Dims out{};
  out.nbDims = static_cast<int32_t>(values.size());
  int32_t i = 0;
  for (int64_t value : values) out.d[i++] = value;
  return out;
}

DynamicPluginTensorDesc dynamic_desc(DataType type, Dims min, Dims max) {
  DynamicPluginTensorDesc desc{};
  desc.desc.type = type;
  desc.desc.format = TensorFormat::kLINEAR;
  desc.desc.dims = min;
  for (int32_t i = 0; i < min.nbDims; ++i) {
    if (min.d[i] != max.d[i]) desc.desc.dims.d[i] = -1;
  }
  desc.min = min;
  desc.max = max;
  return desc;
}

PluginTensorDesc runtime_desc(DataType type, Dims shape) {
  PluginTensorDesc desc{};
  desc.type = type;
  desc.format = TensorFormat::kLINEAR;
  desc.dims = shape;
  return desc;
}

void check_fields_equal(const PluginFieldCollection* a, const PluginFieldCollection* b) {
  check(a->nbFields == b->nbFields, "serialised field counts agree");
  for (int32_t i = 0; i < a->nbFields && i < b->nbFields; ++i) {
    const PluginField& x = a->fields[i];
    const PluginField& y = b->fields[i];
    const size_t bytes = static_cast<size_t>(x.length) * 4;  // INT32 and FLOAT32 only
    const bool same = std::strcmp(x.name, y.name) == 0 && x.type == y.type && x.length == y.length &&
                      std::memcmp(x.data, y.data, bytes) == 0;
    check(same, std::string("serialised field ") + x.name + " survives the round trip");
  }
}

void check_plugin(IPluginCreatorV3One& creator) {
  const PluginFieldCollection* names = creator.getFieldNames();
  const char* expected[] = {"scale", "block_size", "kind", "sink", "local", "vertical_size", "slash_size", "last_q",
                            "top_k"};
  check(names->nbFields == 9, "getFieldNames lists 9 fields");
  for (int32_t i = 0; i < names->nbFields && i < 9; ++i) {
    check(std::strcmp(names->fields[i].name, expected[i]) == 0, std::string("field name ") + expected[i]);
  }
  check(names->fields[0].type == PluginFieldType::kFLOAT32, "scale is FLOAT32");

  Layer layer;
  IPluginV3* plugin = create(creator, layer.fields(), TensorRTPhase::kBUILD);
  check(plugin != nullptr, "createPlugin(kBUILD) with the parser's fields");
  if (plugin == nullptr) return;
  auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  check(std::strcmp(core->getPluginName(), "SparsePrefillAttention") == 0, "plugin name");
  check(std::strcmp(core->getPluginVersion(), "1") == 0, "plugin version");
  check(std::strcmp(core->getPluginNamespace(), "minfer") == 0, "plugin namespace");
  check(build->getNbOutputs() == 1, "one output");

  const DataType halves[] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
  DataType out_type = DataType::kFLOAT;
  check(build->getOutputDataTypes(&out_type, 1, halves, 3) == 0 && out_type == DataType::kHALF, "O takes Q's type");
  const DataType mixed[] = {DataType::kHALF, DataType::kBF16, DataType::kHALF};
  check(build->getOutputDataTypes(&out_type, 1, mixed, 3) != 0, "mixed Q/K/V types are refused");
  check(logged("Q, K, V must share one dtype; got float16, bfloat16, float16"), "the type error is logged");

  DimsExprs in_shapes[3]{};
  for (DimsExprs& shape : in_shapes) shape.nbDims = 4;
  in_shapes[0].d[2] = reinterpret_cast<const IDimensionExpr*>(&in_shapes);  // a marker, never dereferenced
  DimsExprs out_shape{};
  UnusedExprBuilder builder;
  check(build->getOutputShapes(in_shapes, 3, nullptr, 0, &out_shape, 1, builder) == 0, "getOutputShapes");
  check(out_shape.nbDims == 4 && out_shape.d[2] == in_shapes[0].d[2], "O has Q's dimensions");

  const Dims q_min = dims({1, 4, 1, 128}), q_max = dims({2, 4, 4096, 128});
  const Dims kv_min = dims({1, 2, 1, 128}), kv_max = dims({2, 2, 4096, 128});
  DynamicPluginTensorDesc io[4] = {dynamic_desc(DataType::kBF16, q_min, q_max),
                                   dynamic_desc(DataType::kBF16, kv_min, kv_max),
                                   dynamic_desc(DataType::kBF16, kv_min, kv_max),
                                   dynamic_desc(DataType::kBF16, q_min, q_max)};
  for (int32_t pos = 0; pos < 4; ++pos) {
    check(build->supportsFormatCombination(pos, io, 3, 1), "bf16 linear supported at " + std::to_string(pos));
  }
  io[3].desc.type = DataType::kHALF;
  check(!build->supportsFormatCombination(3, io, 3, 1), "O of another type is refused");
  io[3].desc.type = DataType::kBF16;
  io[1].desc.format = TensorFormat::kCHW32;
  check(!build->supportsFormatCombination(1, io, 3, 1), "non-linear formats are refused");
  io[1].desc.format = TensorFormat::kLINEAR;
  io[0].desc.type = DataType::kFLOAT;
  check(!build->supportsFormatCombination(0, io, 3, 1), "float32 is refused");
  io[0].desc.type = DataType::kBF16;

  check(build->configurePlugin(io, 3, io + 3, 1) == 0, "configurePlugin with a valid profile");
  const minfer_pattern pattern = layer.pattern();
  const minfer_problem largest{2, 4, 2, 4096, 128, MINFER_BFLOAT16};
  size_t expected_bytes = 0;
  check(minfer_workspace_size(&pattern, &largest, &expected_bytes) == MINFER_OK, "C ABI workspace size");
  check(build->getWorkspaceSize(io, 3, io + 3, 1) == expected_bytes,
        "getWorkspaceSize is the C ABI's size for the profile's largest shape");
  DynamicPluginTensorDesc bad[4] = {io[0], io[1], io[2], io[3]};
  bad[0].max.d[3] = bad[1].max.d[3] = bad[2].max.d[3] = 96;
  bad[0].min.d[3] = bad[1].min.d[3] = bad[2].min.d[3] = 96;
  check(build->configurePlugin(bad, 3, bad + 3, 1) != 0, "configurePlugin refuses head_dim 96");
  check(logged("head_dim 96 is not supported"), "the head_dim error is logged");

  const PluginTensorDesc run_io[4] = {runtime_desc(DataType::kBF16, dims({1, 4, 77, 128})),
                                      runtime_desc(DataType::kBF16, dims({1, 2, 77, 128})),
                                      runtime_desc(DataType::kBF16, dims({1, 2, 77, 128})),
                                      runtime_desc(DataType::kBF16, dims({1, 4, 77, 128}))};
  check(runtime->onShapeChange(run_io, 3, run_io + 3, 1) == 0, "onShapeChange with valid shapes");
  const PluginTensorDesc bad_run[4] = {runtime_desc(DataType::kBF16, dims({1, 4, 77, 128})),
                                       runtime_desc(DataType::kBF16, dims({1, 3, 77, 128})),
                                       runtime_desc(DataType::kBF16, dims({1, 3, 77, 128})), run_io[3]};
  check(runtime->onShapeChange(bad_run, 3, bad_run + 3, 1) != 0, "onShapeChange refuses 4 query heads over 3 KV");
  const void* inputs[3] = {nullptr, nullptr, nullptr};
  void* outputs[1] = {nullptr};
  check(runtime->enqueue(bad_run, bad_run + 3, inputs, outputs, nullptr, nullptr) != 0,
        "enqueue refuses a bad problem before launching");

  const PluginFieldCollection* serialised = runtime->getFieldsToSerialize();
  std::vector<PluginField> copy(serialised->fields, serialised->fields + serialised->nbFields);
  IPluginV3* restored = create(creator, copy, TensorRTPhase::kRUNTIME);
  check(restored != nullptr, "createPlugin(kRUNTIME) from the serialised fields");
  if (restored != nullptr) {
    auto* restored_runtime =
        static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check_fields_equal(serialised, restored_runtime->getFieldsToSerialize());
    IPluginV3* attached = restored_runtime->attachToContext(nullptr);
    check(attached != nullptr && attached != restored, "attachToContext gives a clone");
    delete attached;
    delete restored;
  }
  IPluginV3* clone = plugin->clone();
  check(clone != nullptr && clone != plugin, "clone");
  delete clone;
  delete plugin;

  Layer invalid;
  invalid.last_q[2] = 0;
  check(create(creator, invalid.fields(), TensorRTPhase::kBUILD) == nullptr, "createPlugin refuses last_q 0");
  check(logged("head 2 (vertical_slash): last_q must be in [1, 256], got 0"), "with the contract's message");
  std::vector<PluginField> missing = layer.fields();
  missing.pop_back();
  check(create(creator, missing, TensorRTPhase::kBUILD) == nullptr, "createPlugin refuses a missing field");
  check(logged("missing plugin field(s) ['top_k']"), "naming it");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || (std::strcmp(argv[2], "static") != 0 && std::strcmp(argv[2], "dynamic") != 0)) {
    std::fprintf(stderr, "usage: %s <libminfer_trt_plugins.so> static|dynamic\n", argv[0]);
    return 2;
  }
  IPluginRegistry* registry = getPluginRegistry();
  const bool dynamic = std::strcmp(argv[2], "dynamic") == 0;
  if (dynamic) {
    check(registry->loadLibrary(argv[1]) != nullptr, "IPluginRegistry::loadLibrary (--dynamicPlugins)");
  } else {
    check(dlopen(argv[1], RTLD_NOW | RTLD_LOCAL) != nullptr, "dlopen (--staticPlugins, polygraphy --plugins)");
  }
  auto* creator = static_cast<IPluginCreatorV3One*>(registry->getCreator("SparsePrefillAttention", "1", "minfer"));
  check(creator != nullptr, "minfer::SparsePrefillAttention v1 is registered");
  check(registry->getCreator("SparsePrefillAttention", "1", "") == nullptr, "and not under the empty namespace");
  if (creator != nullptr) check_plugin(*creator);
  for (const std::string& message : mock_logged_messages()) std::printf("logged: %s\n", message.c_str());
  std::printf("%s: %d check(s) failed (%s)\n", failures ? "FAILED" : "passed", failures, argv[2]);
  return failures ? 1 : 0;
}
