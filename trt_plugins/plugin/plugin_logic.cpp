#include "plugin_logic.h"

#include <limits>
#include <sstream>
#include <string_view>

namespace minfer::plugin {
namespace {

constexpr std::string_view kScale = "scale";
constexpr std::string_view kBlockSize = "block_size";
constexpr std::string_view kRoutingVersion = "plugin_version";
constexpr std::string_view kRoutingNamespace = "plugin_namespace";

std::string quoted(std::string_view text) { return "'" + std::string(text) + "'"; }

std::string dims_text(const TensorDims& dims) {
  std::ostringstream out;
  out << "[";
  for (int32_t i = 0; i < dims.rank; ++i) out << (i ? ", " : "") << dims.d[static_cast<size_t>(i)];
  out << "]";
  return out.str();
}

/* The integers of one field, narrowed to int32 with a message naming the entry that does not fit. */
std::vector<int32_t> read_ints(const Field& field) {
  if (field.type != FieldType::kInt32 && field.type != FieldType::kInt64) {
    throw PluginError("plugin field " + quoted(field.name) + " must hold integers (INT32 or INT64)");
  }
  if (field.length < 0 || (field.length > 0 && field.data == nullptr)) {
    throw PluginError("plugin field " + quoted(field.name) + " has no data");
  }
  std::vector<int32_t> values(static_cast<size_t>(field.length));
  for (size_t i = 0; i < values.size(); ++i) {
    const int64_t value = field.type == FieldType::kInt32 ? static_cast<const int32_t*>(field.data)[i]
                                                          : static_cast<const int64_t*>(field.data)[i];
    if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max()) {
      throw PluginError("plugin field " + quoted(field.name) + " entry " + std::to_string(i) + " (" +
                        std::to_string(value) + ") does not fit int32");
    }
    values[i] = static_cast<int32_t>(value);
  }
  return values;
}

float read_scale(const Field& field) {
  if (field.length != 1 || field.data == nullptr) {
    throw PluginError("plugin field 'scale' must hold one number, got " + std::to_string(field.length));
  }
  if (field.type == FieldType::kFloat32) return *static_cast<const float*>(field.data);
  if (field.type == FieldType::kFloat64) return static_cast<float>(*static_cast<const double*>(field.data));
  throw PluginError("plugin field 'scale' must be a float (FLOAT32 or FLOAT64)");
}

/* plugin_version / plugin_namespace may travel as fields (they are ONNX attributes); they must agree. */
void check_routing(const Field& field, std::string_view expected) {
  if (field.type != FieldType::kChar || (field.length > 0 && field.data == nullptr) || field.length < 0) {
    throw PluginError("plugin field " + quoted(field.name) + " must be a string");
  }
  std::string value;
  if (field.length > 0) value.assign(static_cast<const char*>(field.data), static_cast<size_t>(field.length));
  value = value.substr(0, value.find('\0'));  // the ONNX parser's CHAR fields may or may not end in NUL
  if (value != expected) {
    throw PluginError(std::string(field.name) + " must be " + quoted(expected) + ", got " + quoted(value));
  }
}

void check_status(minfer_status status) {
  if (status != MINFER_OK) throw PluginError(minfer_last_error());
}

bool is_kernel_type(ElementType type) { return type == ElementType::kFloat16 || type == ElementType::kBFloat16; }

}  // namespace

const char* element_type_name(ElementType type) {
  switch (type) {
    case ElementType::kFloat16:
      return "float16";
    case ElementType::kBFloat16:
      return "bfloat16";
    case ElementType::kFloat32:
      return "float32";
    case ElementType::kOther:
      break;
  }
  return "an unsupported type";
}

Attributes Attributes::parse(const Field* fields, int32_t count) {
  if (count < 0 || (count > 0 && fields == nullptr)) throw PluginError("no plugin fields given");
  Attributes attributes;
  std::vector<std::string> seen;
  for (int32_t i = 0; i < count; ++i) {
    const Field& field = fields[i];
    const std::string_view name = field.name ? field.name : "";
    for (const std::string& earlier : seen) {
      if (earlier == name) throw PluginError("plugin field " + quoted(name) + " is given twice");
    }
    seen.emplace_back(name);
    if (name == kScale) {
      attributes.scale_ = read_scale(field);
    } else if (name == kBlockSize) {
      const std::vector<int32_t> values = read_ints(field);
      if (values.size() != 1) throw PluginError("plugin field 'block_size' must hold one integer");
      attributes.block_size_ = values[0];
    } else if (name == kRoutingVersion) {
      check_routing(field, kPluginVersion);
    } else if (name == kRoutingNamespace) {
      check_routing(field, kPluginNamespace);
    } else {
      const HeadField* match = nullptr;
      for (const HeadField& head_field : head_fields()) {
        if (name == head_field.name) match = &head_field;
      }
      if (match == nullptr) throw PluginError("unknown plugin field " + quoted(name));
      attributes.*(match->member) = read_ints(field);
    }
  }
  std::string missing;
  for (const Field& expected : field_names()) {
    bool found = false;
    for (const std::string& name : seen) found = found || name == expected.name;
    if (!found) missing += (missing.empty() ? "" : ", ") + quoted(expected.name);
  }
  if (!missing.empty()) throw PluginError("missing plugin field(s) [" + missing + "]");
  const size_t num_heads = attributes.kind_.size();
  if (num_heads == 0) throw PluginError("plugin field 'kind' is empty: the layer has no heads");
  for (const HeadField& head_field : head_fields()) {
    const size_t size = (attributes.*(head_field.member)).size();
    if (size != num_heads) {
      throw PluginError("attribute " + std::string(head_field.name) + " has " + std::to_string(size) +
                        " entries, expected one per query head (" + std::to_string(num_heads) + ")");
    }
  }
  const minfer_pattern pattern = attributes.pattern();
  check_status(minfer_validate_pattern(&pattern));
  return attributes;
}

const std::vector<Field>& Attributes::field_names() {
  static const std::vector<Field> names = [] {
    std::vector<Field> list{{kScale.data(), nullptr, FieldType::kFloat32, 1},
                            {kBlockSize.data(), nullptr, FieldType::kInt32, 1}};
    for (const HeadField& head_field : head_fields()) list.push_back({head_field.name, nullptr, FieldType::kInt32, 0});
    return list;
  }();
  return names;
}

minfer_pattern Attributes::pattern() const {
  return minfer_pattern{num_heads(),        kind_.data(),   sink_.data(), local_.data(),
                        vertical_size_.data(), slash_size_.data(), last_q_.data(), top_k_.data(),
                        scale_,             block_size_};
}

std::vector<Field> Attributes::fields() const {
  std::vector<Field> list{{kScale.data(), &scale_, FieldType::kFloat32, 1},
                          {kBlockSize.data(), &block_size_, FieldType::kInt32, 1}};
  for (const HeadField& head_field : head_fields()) {
    const HeadArray& values = this->*(head_field.member);
    list.push_back({head_field.name, values.data(), FieldType::kInt32, static_cast<int32_t>(values.size())});
  }
  return list;
}

const std::vector<Attributes::HeadField>& Attributes::head_fields() {
  static const std::vector<HeadField> fields{
      {"kind", &Attributes::kind_},
      {"sink", &Attributes::sink_},
      {"local", &Attributes::local_},
      {"vertical_size", &Attributes::vertical_size_},
      {"slash_size", &Attributes::slash_size_},
      {"last_q", &Attributes::last_q_},
      {"top_k", &Attributes::top_k_},
  };
  return fields;
}

void check_input_types(const ElementType* input_types, int32_t num_inputs) {
  if (num_inputs != kNumInputs) {
    throw PluginError("SparsePrefillAttention takes 3 inputs (Q, K, V), got " + std::to_string(num_inputs));
  }
  const ElementType type = input_types[0];
  if (input_types[1] != type || input_types[2] != type) {
    throw PluginError(std::string("Q, K, V must share one dtype; got ") + element_type_name(input_types[0]) + ", " +
                      element_type_name(input_types[1]) + ", " + element_type_name(input_types[2]));
  }
}

bool supports_format(int32_t pos, const TensorFormat* in_out, int32_t num_inputs, int32_t num_outputs) {
  if (num_inputs != kNumInputs || num_outputs != kNumOutputs || pos < 0 || pos >= num_inputs + num_outputs) {
    return false;
  }
  const TensorFormat& tensor = in_out[pos];
  return tensor.linear && is_kernel_type(tensor.type) && tensor.type == in_out[0].type;
}

minfer_problem make_problem(const Attributes& attributes, const TensorDims& q, const TensorDims& k,
                            const TensorDims& v, ElementType type) {
  const TensorDims* tensors[] = {&q, &k, &v};
  const char* names[] = {"Q", "K", "V"};
  for (int i = 0; i < 3; ++i) {
    if (tensors[i]->rank != kRank) {
      throw PluginError(std::string(names[i]) + " must be 4-D [B, H, S, D], got " + dims_text(*tensors[i]));
    }
    for (int32_t axis = 0; axis < kRank; ++axis) {
      if (tensors[i]->d[static_cast<size_t>(axis)] < 1) {
        throw PluginError(std::string(names[i]) + " has an empty or unknown dimension: " + dims_text(*tensors[i]));
      }
    }
  }
  const bool kv_agree = k.d == v.d;
  const bool q_agrees = q.d[0] == k.d[0] && q.d[2] == k.d[2] && q.d[3] == k.d[3];
  if (!kv_agree || !q_agrees) {
    throw PluginError("K and V must be [B, Hkv, S, D] matching Q " + dims_text(q) + "; got " + dims_text(k) + ", " +
                      dims_text(v));
  }
  if (!is_kernel_type(type)) {
    throw PluginError(std::string("dtype ") + element_type_name(type) + " is not supported (float16, bfloat16)");
  }
  const minfer_problem problem{q.d[0], q.d[1], k.d[1], q.d[2], q.d[3],
                               type == ElementType::kFloat16 ? MINFER_FLOAT16 : MINFER_BFLOAT16};
  const minfer_pattern pattern = attributes.pattern();
  check_status(minfer_validate_problem(&pattern, &problem));
  return problem;
}

size_t workspace_bytes(const Attributes& attributes, const TensorDims& q, const TensorDims& k, const TensorDims& v,
                       ElementType type) {
  const minfer_problem problem = make_problem(attributes, q, k, v, type);
  const minfer_pattern pattern = attributes.pattern();
  size_t bytes = 0;
  check_status(minfer_workspace_size(&pattern, &problem, &bytes));
  return bytes;
}

void enqueue(const Attributes& attributes, const TensorDims& q_dims, const TensorDims& k_dims,
             const TensorDims& v_dims, ElementType type, const void* q, const void* k, const void* v, void* out,
             void* workspace, void* stream) {
  const minfer_problem problem = make_problem(attributes, q_dims, k_dims, v_dims, type);
  const minfer_pattern pattern = attributes.pattern();
  size_t bytes = 0;
  check_status(minfer_workspace_size(&pattern, &problem, &bytes));
  check_status(minfer_launch(&pattern, &problem, q, k, v, out, workspace, bytes, stream));
}

}  // namespace minfer::plugin
