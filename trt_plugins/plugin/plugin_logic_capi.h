/* A C face of plugin_logic.h for the tests (ctypes): it drives the plugin's decisions and its exact
 * enqueue sequence without TensorRT, translating C structs the way SparsePrefillAttentionPlugin.cpp
 * translates TensorRT's. Calls return 0 on success, -1 on failure with the message in
 * minfer_plugin_last_error(). Built as libminfer_plugin_logic.so; not part of the product's API. */
#ifndef MINFER_PLUGIN_LOGIC_CAPI_H
#define MINFER_PLUGIN_LOGIC_CAPI_H

#include <stddef.h>
#include <stdint.h>

#include "minfer/minfer_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* type: 0 INT32, 1 INT64, 2 FLOAT32, 3 FLOAT64, 4 CHAR, 5 other (minfer::plugin::FieldType order). */
typedef struct minfer_plugin_field {
  const char* name;
  const void* data;
  int32_t type;
  int32_t length;
} minfer_plugin_field;

/* element type: 0 float16, 1 bfloat16, 2 float32, 3 other (minfer::plugin::ElementType order). */
typedef struct minfer_plugin_dims {
  int32_t rank;
  int64_t d[8];
} minfer_plugin_dims;

typedef struct minfer_plugin_attributes minfer_plugin_attributes;

const char* minfer_plugin_last_error(void);

/* createPlugin: parse and validate fields; *out is freed with minfer_plugin_free. */
int32_t minfer_plugin_parse(const minfer_plugin_field* fields, int32_t count, minfer_plugin_attributes** out);
void minfer_plugin_free(minfer_plugin_attributes* attributes);

/* getFieldNames / getFieldsToSerialize: the number of fields, written to `out` up to `capacity`;
 * serialised fields point into `attributes`. */
int32_t minfer_plugin_field_names(minfer_plugin_field* out, int32_t capacity);
int32_t minfer_plugin_serialize(const minfer_plugin_attributes* attributes, minfer_plugin_field* out,
                                int32_t capacity);

/* getOutputDataTypes' check and supportsFormatCombination (returns 1 if supported, 0 if not). */
int32_t minfer_plugin_check_input_types(const int32_t* input_types, int32_t num_inputs);
int32_t minfer_plugin_supports_format(int32_t pos, const int32_t* types, const int32_t* linear, int32_t num_inputs,
                                      int32_t num_outputs);

/* configurePlugin/onShapeChange (the validated problem) and getWorkspaceSize (bytes for these dims). */
int32_t minfer_plugin_problem(const minfer_plugin_attributes* attributes, const minfer_plugin_dims* q,
                              const minfer_plugin_dims* k, const minfer_plugin_dims* v, int32_t type,
                              minfer_problem* problem);
int32_t minfer_plugin_workspace_bytes(const minfer_plugin_attributes* attributes, const minfer_plugin_dims* q,
                                      const minfer_plugin_dims* k, const minfer_plugin_dims* v, int32_t type,
                                      size_t* bytes);

/* enqueue: problem -> minfer_workspace_size -> minfer_launch on `stream` (a cudaStream_t). */
int32_t minfer_plugin_enqueue(const minfer_plugin_attributes* attributes, const minfer_plugin_dims* q_dims,
                              const minfer_plugin_dims* k_dims, const minfer_plugin_dims* v_dims, int32_t type,
                              const void* q, const void* k, const void* v, void* out, void* workspace,
                              void* stream);

#ifdef __cplusplus
}
#endif

#endif /* MINFER_PLUGIN_LOGIC_CAPI_H */
