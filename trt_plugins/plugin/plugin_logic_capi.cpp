#include "plugin_logic_capi.h"

#include <exception>
#include <string>
#include <vector>

#include "plugin_logic.h"

using minfer::plugin::Attributes;
using minfer::plugin::ElementType;
using minfer::plugin::Field;
using minfer::plugin::FieldType;
using minfer::plugin::TensorDims;

struct minfer_plugin_attributes {
  Attributes attributes;
};

namespace {

thread_local std::string last_error;

/* Runs `body`, turning any exception into -1 and its message into minfer_plugin_last_error(). */
template <typename Body>
int32_t guarded(Body&& body) {
  try {
    last_error.clear();
    body();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown error";
  }
  return -1;
}

FieldType field_type(int32_t code) {
  return code >= 0 && code <= static_cast<int32_t>(FieldType::kOther) ? static_cast<FieldType>(code)
                                                                       : FieldType::kOther;
}

ElementType element_type(int32_t code) {
  return code >= 0 && code <= static_cast<int32_t>(ElementType::kOther) ? static_cast<ElementType>(code)
                                                                         : ElementType::kOther;
}

TensorDims tensor_dims(const minfer_plugin_dims* dims) {
  if (dims == nullptr || dims->rank < 0 || dims->rank > minfer::plugin::kMaxRank) {
    throw minfer::plugin::PluginError("dims must have a rank in [0, 8]");
  }
  TensorDims out{dims->rank, {}};
  for (int32_t i = 0; i < dims->rank; ++i) out.d[static_cast<size_t>(i)] = dims->d[i];
  return out;
}

int32_t write_fields(const std::vector<Field>& fields, minfer_plugin_field* out, int32_t capacity) {
  const auto count = static_cast<int32_t>(fields.size());
  for (int32_t i = 0; i < count && i < capacity; ++i) {
    const Field& field = fields[static_cast<size_t>(i)];
    out[i] = {field.name, field.data, static_cast<int32_t>(field.type), field.length};
  }
  return count;
}

}  // namespace

extern "C" {

const char* minfer_plugin_last_error(void) { return last_error.c_str(); }

int32_t minfer_plugin_parse(const minfer_plugin_field* fields, int32_t count, minfer_plugin_attributes** out) {
  return guarded([&] {
    std::vector<Field> converted;
    for (int32_t i = 0; i < count; ++i) {
      converted.push_back({fields[i].name, fields[i].data, field_type(fields[i].type), fields[i].length});
    }
    *out = new minfer_plugin_attributes{Attributes::parse(converted.data(), count)};
  });
}

void minfer_plugin_free(minfer_plugin_attributes* attributes) { delete attributes; }

int32_t minfer_plugin_field_names(minfer_plugin_field* out, int32_t capacity) {
  return write_fields(Attributes::field_names(), out, capacity);
}

int32_t minfer_plugin_serialize(const minfer_plugin_attributes* attributes, minfer_plugin_field* out,
                                int32_t capacity) {
  return write_fields(attributes->attributes.fields(), out, capacity);
}

int32_t minfer_plugin_check_input_types(const int32_t* input_types, int32_t num_inputs) {
  return guarded([&] {
    std::vector<ElementType> types;
    for (int32_t i = 0; i < num_inputs; ++i) types.push_back(element_type(input_types[i]));
    minfer::plugin::check_input_types(types.data(), num_inputs);
  });
}

int32_t minfer_plugin_supports_format(int32_t pos, const int32_t* types, const int32_t* linear, int32_t num_inputs,
                                      int32_t num_outputs) {
  std::vector<minfer::plugin::TensorFormat> formats;
  for (int32_t i = 0; i < num_inputs + num_outputs; ++i) formats.push_back({element_type(types[i]), linear[i] != 0});
  return minfer::plugin::supports_format(pos, formats.data(), num_inputs, num_outputs) ? 1 : 0;
}

int32_t minfer_plugin_problem(const minfer_plugin_attributes* attributes, const minfer_plugin_dims* q,
                              const minfer_plugin_dims* k, const minfer_plugin_dims* v, int32_t type,
                              minfer_problem* problem) {
  return guarded([&] {
    *problem = minfer::plugin::make_problem(attributes->attributes, tensor_dims(q), tensor_dims(k), tensor_dims(v),
                                            element_type(type));
  });
}

int32_t minfer_plugin_workspace_bytes(const minfer_plugin_attributes* attributes, const minfer_plugin_dims* q,
                                      const minfer_plugin_dims* k, const minfer_plugin_dims* v, int32_t type,
                                      size_t* bytes) {
  return guarded([&] {
    *bytes = minfer::plugin::workspace_bytes(attributes->attributes, tensor_dims(q), tensor_dims(k), tensor_dims(v),
                                             element_type(type));
  });
}

int32_t minfer_plugin_enqueue(const minfer_plugin_attributes* attributes, const minfer_plugin_dims* q_dims,
                              const minfer_plugin_dims* k_dims, const minfer_plugin_dims* v_dims, int32_t type,
                              const void* q, const void* k, const void* v, void* out, void* workspace,
                              void* stream) {
  return guarded([&] {
    minfer::plugin::enqueue(attributes->attributes, tensor_dims(q_dims), tensor_dims(k_dims), tensor_dims(v_dims),
                            element_type(type), q, k, v, out, workspace, stream);
  });
}

}  // extern "C"
