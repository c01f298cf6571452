/* The TensorRT face of SparsePrefillAttention: IPluginV3 (OneCore/OneBuild/OneRuntime) and its
 * IPluginCreatorV3One. Glue only: every method translates TensorRT's structs and calls
 * plugin_logic.h, where each decision lives and is tested without TensorRT.
 *
 * Registration, for every way TensorRT users load a plugin library:
 *  - loading the library (trtexec --staticPlugins, polygraphy --plugins, ctypes.CDLL) registers the
 *    creator from a static object, as REGISTER_TENSORRT_PLUGIN does, but under the op's namespace
 *    `minfer` (the macro registers under "");
 *  - IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, IPluginRegistry.load_library, engines
 *    serialised with their plugin library) calls getCreators/setLoggerFinder, as TensorRT's own
 *    plugin libraries export them (plugin/vc/vfcCommon.cpp). loadLibrary refuses a creator that is
 *    already registered, and it dlopens the library first, so getCreators hands over the statically
 *    registered creator: it deregisters it and returns it for loadLibrary to register. */
#include <NvInferRuntime.h>

#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "plugin_logic.h"

namespace minfer::plugin {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ILogger;
using nvinfer1::ILoggerFinder;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginCreatorInterface;
using nvinfer1::IPluginResourceContext;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorRTPhase;

ILoggerFinder* logger_finder = nullptr;

/* Errors go to the logger TensorRT gave loadLibrary, else to libnvinfer's, else to stderr. */
void report(const char* where, const std::exception& error) noexcept {
  const std::string message = std::string(kPluginNamespace) + "::" + kPluginName + " " + where + ": " + error.what();
  ILogger* logger = logger_finder != nullptr ? logger_finder->findLogger() : ::getLogger();
  if (logger != nullptr) {
    logger->log(ILogger::Severity::kERROR, message.c_str());
  } else {
    std::fprintf(stderr, "%s\n", message.c_str());
  }
}

/* Runs `body` for a TensorRT method that returns 0 on success and reports failure with -1. */
template <typename Body>
int32_t status_of(const char* where, Body&& body) noexcept {
  try {
    body();
    return 0;
  } catch (const std::exception& error) {
    report(where, error);
  }
  return -1;
}

ElementType element_type(DataType type) {
  switch (type) {
    case DataType::kHALF:
      return ElementType::kFloat16;
    case DataType::kBF16:
      return ElementType::kBFloat16;
    case DataType::kFLOAT:
      return ElementType::kFloat32;
    default:
      return ElementType::kOther;
  }
}

TensorDims tensor_dims(const Dims& dims) {
  TensorDims out{dims.nbDims, {}};
  for (int32_t i = 0; i < dims.nbDims && i < kMaxRank; ++i) out.d[static_cast<size_t>(i)] = dims.d[i];
  return out;
}

FieldType field_type(PluginFieldType type) {
  switch (type) {
    case PluginFieldType::kINT32:
      return FieldType::kInt32;
    case PluginFieldType::kINT64:
      return FieldType::kInt64;
    case PluginFieldType::kFLOAT32:
      return FieldType::kFloat32;
    case PluginFieldType::kFLOAT64:
      return FieldType::kFloat64;
    case PluginFieldType::kCHAR:
      return FieldType::kChar;
    default:
      return FieldType::kOther;
  }
}

/* Attributes emit only INT32, FLOAT32 (and names carry no data). */
std::vector<PluginField> plugin_fields(const std::vector<Field>& fields) {
  std::vector<PluginField> out;
  for (const Field& field : fields) {
    const PluginFieldType type = field.type == FieldType::kFloat32 ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32;
    out.emplace_back(field.name, field.data, type, field.length);
  }
  return out;
}

class SparsePrefillAttentionPlugin final : public IPluginV3,
                                           public nvinfer1::IPluginV3OneCore,
                                           public nvinfer1::IPluginV3OneBuild,
                                           public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit SparsePrefillAttentionPlugin(Attributes attributes) : attributes_(std::move(attributes)) {}

  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kBUILD:
        return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME:
        return static_cast<IPluginV3OneRuntime*>(this);
      case PluginCapabilityType::kCORE:
        return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
  }

  IPluginV3* clone() noexcept override {
    try {
      return new SparsePrefillAttentionPlugin(attributes_);
    } catch (const std::exception& error) {
      report("clone", error);
    }
    return nullptr;
  }

  const char* getPluginName() const noexcept override { return kPluginName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  int32_t getNbOutputs() const noexcept override { return kNumOutputs; }

  int32_t getOutputDataTypes(DataType* output_types, int32_t num_outputs, const DataType* input_types,
                             int32_t num_inputs) const noexcept override {
    return status_of("getOutputDataTypes", [&] {
      std::vector<ElementType> types;
      for (int32_t i = 0; i < num_inputs; ++i) types.push_back(element_type(input_types[i]));
      check_input_types(types.data(), num_inputs);
      if (num_outputs != kNumOutputs) throw PluginError("expected 1 output");
      output_types[0] = input_types[kOutputSource];
    });
  }

  int32_t getOutputShapes(const DimsExprs* inputs, int32_t num_inputs, const DimsExprs* /*shape_inputs*/,
                          int32_t /*num_shape_inputs*/, DimsExprs* outputs, int32_t num_outputs,
                          nvinfer1::IExprBuilder& /*builder*/) noexcept override {
    return status_of("getOutputShapes", [&] {
      if (num_inputs != kNumInputs || num_outputs != kNumOutputs) throw PluginError("expected 3 inputs, 1 output");
      outputs[0] = inputs[kOutputSource];
    });
  }

  bool supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* in_out, int32_t num_inputs,
                                 int32_t num_outputs) noexcept override {
    std::vector<TensorFormat> formats;
    for (int32_t i = 0; i < num_inputs + num_outputs; ++i) {
      formats.push_back({element_type(in_out[i].desc.type), in_out[i].desc.format == nvinfer1::TensorFormat::kLINEAR});
    }
    return supports_format(pos, formats.data(), num_inputs, num_outputs);
  }

  /* The profile's bounds must make a valid problem: head_dim, GQA and pattern heads fail the build here. */
  int32_t configurePlugin(const DynamicPluginTensorDesc* in, int32_t num_inputs, const DynamicPluginTensorDesc* /*out*/,
                          int32_t num_outputs) noexcept override {
    return status_of("configurePlugin", [&] {
      if (num_inputs != kNumInputs || num_outputs != kNumOutputs) throw PluginError("expected 3 inputs, 1 output");
      const ElementType type = element_type(in[0].desc.type);
      make_problem(attributes_, tensor_dims(in[0].min), tensor_dims(in[1].min), tensor_dims(in[2].min), type);
      make_problem(attributes_, tensor_dims(in[0].max), tensor_dims(in[1].max), tensor_dims(in[2].max), type);
    });
  }

  size_t getWorkspaceSize(const DynamicPluginTensorDesc* in, int32_t /*num_inputs*/,
                          const DynamicPluginTensorDesc* /*out*/, int32_t /*num_outputs*/) const noexcept override {
    try {
      return workspace_bytes(attributes_, tensor_dims(in[0].max), tensor_dims(in[1].max), tensor_dims(in[2].max),
                             element_type(in[0].desc.type));
    } catch (const std::exception& error) {
      report("getWorkspaceSize", error);
    }
    return 0;
  }

  int32_t onShapeChange(const PluginTensorDesc* in, int32_t num_inputs, const PluginTensorDesc* /*out*/,
                        int32_t num_outputs) noexcept override {
    return status_of("onShapeChange", [&] {
      if (num_inputs != kNumInputs || num_outputs != kNumOutputs) throw PluginError("expected 3 inputs, 1 output");
      make_problem(attributes_, tensor_dims(in[0].dims), tensor_dims(in[1].dims), tensor_dims(in[2].dims),
                   element_type(in[0].type));
    });
  }

  int32_t enqueue(const PluginTensorDesc* input_desc, const PluginTensorDesc* /*output_desc*/,
                  const void* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    return status_of("enqueue", [&] {
      minfer::plugin::enqueue(attributes_, tensor_dims(input_desc[0].dims), tensor_dims(input_desc[1].dims),
                              tensor_dims(input_desc[2].dims), element_type(input_desc[0].type), inputs[0], inputs[1],
                              inputs[2], outputs[0], workspace, stream);
    });
  }

  IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

  const PluginFieldCollection* getFieldsToSerialize() noexcept override {
    serialized_ = plugin_fields(attributes_.fields());
    collection_ = {static_cast<int32_t>(serialized_.size()), serialized_.data()};
    return &collection_;
  }

 private:
  Attributes attributes_;
  std::vector<PluginField> serialized_;
  PluginFieldCollection collection_{};
};

class SparsePrefillAttentionCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  SparsePrefillAttentionCreator()
      : names_(plugin_fields(Attributes::field_names())),
        collection_{static_cast<int32_t>(names_.size()), names_.data()} {}

  IPluginV3* createPlugin(const char* /*name*/, const PluginFieldCollection* collection,
                          TensorRTPhase /*phase*/) noexcept override {
    try {
      if (collection == nullptr) throw PluginError("no plugin fields given");
      std::vector<Field> fields;
      for (int32_t i = 0; i < collection->nbFields; ++i) {
        const PluginField& field = collection->fields[i];
        fields.push_back({field.name, field.data, field_type(field.type), field.length});
      }
      return new SparsePrefillAttentionPlugin(Attributes::parse(fields.data(), collection->nbFields));
    } catch (const std::exception& error) {
      report("createPlugin", error);
    }
    return nullptr;
  }

  const PluginFieldCollection* getFieldNames() noexcept override { return &collection_; }
  const char* getPluginName() const noexcept override { return kPluginName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

 private:
  std::vector<PluginField> names_;
  PluginFieldCollection collection_;
};

SparsePrefillAttentionCreator& creator() {
  static SparsePrefillAttentionCreator instance;
  return instance;
}

/* Static registration on load (see the top of this file). */
struct StaticRegistration {
  StaticRegistration() { ::getPluginRegistry()->registerCreator(creator(), kPluginNamespace); }
};
const StaticRegistration static_registration;

}  // namespace
}  // namespace minfer::plugin

/* TENSORRTAPI exports only inside TensorRT's own build; the library is built with hidden visibility. */
#define MINFER_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" MINFER_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& count) {
  using minfer::plugin::creator;
  nvinfer1::IPluginRegistry* registry = ::getPluginRegistry();
  if (registry->getCreator(minfer::plugin::kPluginName, minfer::plugin::kPluginVersion,
                           minfer::plugin::kPluginNamespace) == &creator()) {
    registry->deregisterCreator(creator());
  }
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator()};
  count = 1;
  return creators;
}

extern "C" MINFER_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  minfer::plugin::logger_finder = finder;
}
