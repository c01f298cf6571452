/* Every decision the SparsePrefillAttention TensorRT plugin makes, without TensorRT types.
 *
 * SparsePrefillAttentionPlugin.cpp only translates TensorRT's structs into the ones below and calls
 * these functions, so this layer is what the CPU tests (parsing, validation, formats, serialisation)
 * and the GPU tests (the enqueue sequence against the PyTorch reference) exercise through
 * plugin_logic_capi.h. Rules come from docs/op-spec.md; the pattern and shape rules themselves are
 * the kernel library's (minfer_validate_pattern / minfer_validate_problem), never re-implemented. */
#ifndef MINFER_PLUGIN_LOGIC_H
#define MINFER_PLUGIN_LOGIC_H

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "minfer/minfer_kernels.h"

namespace minfer::plugin {

inline constexpr char kPluginName[] = "SparsePrefillAttention";
inline constexpr char kPluginVersion[] = "1";
inline constexpr char kPluginNamespace[] = "minfer";
inline constexpr int32_t kNumInputs = 3;   // Q, K, V
inline constexpr int32_t kNumOutputs = 1;  // O
inline constexpr int32_t kRank = 4;        // [B, H, S, D]
inline constexpr int32_t kMaxRank = 8;     // TensorRT's Dims::MAX_DIMS

/* A fault the plugin reports to TensorRT; the message is complete (names the field, head or tensor). */
class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/* Element types of plugin fields, as TensorRT's PluginFieldType carries them (kOther: anything else). */
enum class FieldType { kInt32, kInt64, kFloat32, kFloat64, kChar, kOther };

/* One plugin field: what TensorRT's PluginField holds. `length` counts elements (characters for kChar). */
struct Field {
  const char* name;
  const void* data;
  FieldType type;
  int32_t length;
};

/* Tensor element types the plugin meets (kOther: every type the kernels do not take). */
enum class ElementType { kFloat16, kBFloat16, kFloat32, kOther };

const char* element_type_name(ElementType type);

/* One I/O tensor as supportsFormatCombination sees it. */
struct TensorFormat {
  ElementType type;
  bool linear;
};

/* A shape as TensorRT's Dims holds it; -1 marks a dimension unknown at build time. */
struct TensorDims {
  int32_t rank;
  std::array<int64_t, kMaxRank> d;
};

/* One layer's attributes with owned arrays: what createPlugin parses and getFieldsToSerialize emits. */
class Attributes {
 public:
  /* Parses and validates (minfer_validate_pattern) the fields of createPlugin, build or runtime phase. */
  static Attributes parse(const Field* fields, int32_t count);

  /* The fields TensorRT's ONNX parser should look for: names and types, no data (getFieldNames). */
  static const std::vector<Field>& field_names();

  /* The C ABI's view of these attributes; it points into this object. */
  minfer_pattern pattern() const;

  /* The fields that serialise this layer; they point into this object (getFieldsToSerialize). */
  std::vector<Field> fields() const;

  int32_t num_heads() const { return static_cast<int32_t>(kind_.size()); }

 private:
  using HeadArray = std::vector<int32_t>;
  struct HeadField {
    const char* name;
    HeadArray Attributes::*member;
  };
  /* The per-head INTS attributes in ONNX order, and where this object keeps each. */
  static const std::vector<HeadField>& head_fields();

  Attributes() = default;
  float scale_ = 0.0F;
  int32_t block_size_ = 0;
  std::vector<int32_t> kind_, sink_, local_, vertical_size_, slash_size_, last_q_, top_k_;
};

/* O takes Q's dimensions and type: the input getOutputShapes and getOutputDataTypes copy. */
inline constexpr int32_t kOutputSource = 0;

/* getOutputDataTypes: three inputs sharing one type (the kernels' types are checked by the formats). */
void check_input_types(const ElementType* input_types, int32_t num_inputs);

/* supportsFormatCombination: linear float16/bfloat16 everywhere, one type for all four tensors. */
bool supports_format(int32_t pos, const TensorFormat* in_out, int32_t num_inputs, int32_t num_outputs);

/* The launch's problem from Q, K, V dimensions (concrete or a profile's bounds): ranks and agreement
 * of Q/K/V here, then the contract's shape rules through minfer_validate_problem. */
minfer_problem make_problem(const Attributes& attributes, const TensorDims& q, const TensorDims& k,
                            const TensorDims& v, ElementType type);

/* Bytes of workspace for the problem these dimensions describe (make_problem, then
 * minfer_workspace_size). getWorkspaceSize asks it for the profile's largest shapes; enqueue asks it
 * again for the actual shapes and passes that number to minfer_launch. */
size_t workspace_bytes(const Attributes& attributes, const TensorDims& q, const TensorDims& k, const TensorDims& v,
                       ElementType type);

/* The whole enqueue: problem -> workspace size -> minfer_launch. Throws PluginError on any failure. */
void enqueue(const Attributes& attributes, const TensorDims& q_dims, const TensorDims& k_dims,
             const TensorDims& v_dims, ElementType type, const void* q, const void* k, const void* v, void* out,
             void* workspace, void* stream);

}  // namespace minfer::plugin

#endif  // MINFER_PLUGIN_LOGIC_H
