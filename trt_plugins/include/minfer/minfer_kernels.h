/* The kernel library's C ABI: everything the TensorRT plugin's enqueue does goes through here, and
 * so does the PyTorch op (runtime/kernels.py), so the GPU tests exercise the plugin's exact path.
 * Semantics: docs/op-spec.md. Tensors are contiguous [B, H, S, D]; no call allocates memory. */
#ifndef MINFER_KERNELS_H
#define MINFER_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MINFER_ABI_VERSION 1
#define MINFER_BLOCK 64
#define MINFER_MAX_LAST_Q 256

typedef enum minfer_status {
  MINFER_OK = 0,
  MINFER_ERR_INVALID_PATTERN = 1,  /* an attribute breaks the contract; message names head and field */
  MINFER_ERR_INVALID_PROBLEM = 2,  /* shapes, dtype or head_dim not supported / inconsistent */
  MINFER_ERR_WORKSPACE = 3,        /* workspace missing or smaller than minfer_workspace_size */
  MINFER_ERR_CUDA = 4              /* a CUDA call failed; message carries cudaGetErrorString */
} minfer_status;

typedef enum minfer_dtype { MINFER_FLOAT16 = 0, MINFER_BFLOAT16 = 1 } minfer_dtype;

typedef enum minfer_kind {
  MINFER_DENSE = 0,
  MINFER_A_SHAPE = 1,
  MINFER_VERTICAL_SLASH = 2,
  MINFER_BLOCK_SPARSE = 3
} minfer_kind;

/* One layer's attributes, host memory, arrays of num_heads (= Hq) entries, as in the ONNX node. */
typedef struct minfer_pattern {
  int32_t num_heads;
  const int32_t* kind;
  const int32_t* sink;
  const int32_t* local;
  const int32_t* vertical_size;
  const int32_t* slash_size;
  const int32_t* last_q;
  const int32_t* top_k;
  float scale;
  int32_t block_size;
} minfer_pattern;

typedef struct minfer_problem {
  int64_t batch;
  int64_t num_q_heads;
  int64_t num_kv_heads;
  int64_t seq_len;
  int64_t head_dim;
  minfer_dtype dtype;
} minfer_problem;

/* The contract's attribute rules (same messages as minfer.patterns.spec). */
minfer_status minfer_validate_pattern(const minfer_pattern* pattern);

/* Pattern rules plus shape rules (GQA divisibility, head_dim, dtype, sizes). */
minfer_status minfer_validate_problem(const minfer_pattern* pattern, const minfer_problem* problem);

/* Bytes of device workspace one launch needs for this pattern and problem (the worst case over
 * inputs, so a plugin can size it at build time for the profile's largest shape). */
minfer_status minfer_workspace_size(const minfer_pattern* pattern, const minfer_problem* problem, size_t* bytes);

/* Index building and sparse attention for all heads of the layer, enqueued on `stream`.
 * q, k, v, out: device pointers; workspace: device memory of at least minfer_workspace_size bytes.
 * `stream` is a cudaStream_t. Asynchronous: errors of the kernels themselves surface at the next
 * synchronisation, launch errors are returned here. */
minfer_status minfer_launch(const minfer_pattern* pattern, const minfer_problem* problem, const void* q,
                            const void* k, const void* v, void* out, void* workspace, size_t workspace_bytes,
                            void* stream);

/* The message of the last failed call on this thread ("" if none). */
const char* minfer_last_error(void);

int32_t minfer_abi_version(void);

#ifdef __cplusplus
}
#endif

#endif /* MINFER_KERNELS_H */
