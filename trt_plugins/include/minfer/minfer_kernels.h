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

/* Exported from libminfer_kernels.so (built with hidden visibility otherwise). */
#if defined(__GNUC__)
#define MINFER_API __attribute__((visibility("default")))
#else
#define MINFER_API
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
MINFER_API minfer_status minfer_validate_pattern(const minfer_pattern* pattern);

/* Pattern rules plus shape rules (GQA divisibility, head_dim, dtype, sizes). */
MINFER_API minfer_status minfer_validate_problem(const minfer_pattern* pattern, const minfer_problem* problem);

/* Bytes of device workspace one launch needs for this pattern and problem (the worst case over
 * inputs, so a plugin can size it at build time for the profile's largest shape). */
MINFER_API minfer_status minfer_workspace_size(const minfer_pattern* pattern, const minfer_problem* problem, size_t* bytes);

/* Index building and sparse attention for all heads of the layer, enqueued on `stream`.
 * q, k, v, out: device pointers; workspace: device memory of at least minfer_workspace_size bytes.
 * `stream` is a cudaStream_t. Asynchronous: errors of the kernels themselves surface at the next
 * synchronisation, launch errors are returned here. */
MINFER_API minfer_status minfer_launch(const minfer_pattern* pattern, const minfer_problem* problem, const void* q,
                            const void* k, const void* v, void* out, void* workspace, size_t workspace_bytes,
                            void* stream);

/* The message of the last failed call on this thread ("" if none). */
MINFER_API const char* minfer_last_error(void);

MINFER_API int32_t minfer_abi_version(void);

/* ---- Additions (stable from here on; the declarations above are unchanged). ---- */

/* Most query heads one layer may have: the per-head pattern travels by value in the kernels'
 * parameters (no host-to-device copy in a launch). */
#define MINFER_MAX_HEADS 128

/* Where the built indices live inside the workspace after minfer_launch, for tests and inspection.
 * Offsets are in bytes from the workspace start, -1 where the layer has no head of that kind.
 * Vertical-slash heads and block-sparse heads are numbered by "slot": their rank among the layer's
 * heads of that kind, in head order. Arrays (C order):
 *   column_scores, diagonal_scores  float32 [batch, vs_heads, seq_len]
 *   columns    int32 [batch, vs_heads, columns_stride]   the selected columns, ascending (nv of them)
 *   diagonals  int32 [batch, vs_heads, diagonals_stride] the selected diagonals, ascending (ns of them)
 *   lags       int32 [batch, vs_heads, diagonals_stride] chunk lags, descending (lag_counts of them)
 *   lag_counts int32 [batch, vs_heads]
 *   held       uint32 [batch, vs_heads, held_words]      bit u+63 set iff a chunk holds u = start_m - key
 *   pooled_q   float32 [batch, bs_heads, num_blocks, head_dim]
 *   pooled_k   float32 [batch, num_kv_heads, num_blocks, head_dim]
 *   blocks     int32 [batch, bs_heads, num_blocks, blocks_stride] key blocks per query block,
 *              ascending, -1 padded (the reference's block_sparse_select) */
typedef struct minfer_index_layout {
  int64_t vs_heads, bs_heads, num_blocks;
  int64_t columns_stride, diagonals_stride, held_words, blocks_stride;
  int64_t column_scores, diagonal_scores, columns, diagonals, lags, lag_counts, held;
  int64_t pooled_q, pooled_k, blocks;
  int64_t total_bytes; /* == minfer_workspace_size */
} minfer_index_layout;

MINFER_API minfer_status minfer_index_layout_of(const minfer_pattern* pattern, const minfer_problem* problem,
                                     minfer_index_layout* layout);

/* The key tiles the attention kernel computes for chosen work items, written by the kernel's own tile
 * generator (run after minfer_launch on the same workspace). items: device int32 [num_items, 3]
 * (batch, query head, query block). tile_keys: device int32 [num_items, max_tiles, 64], each tile's
 * 64 key positions (chunks: start..start+63, possibly outside [0, S); columns: ascending, -1 padded).
 * tile_counts: device int32 [num_items], the full count even where it exceeds max_tiles. */
MINFER_API minfer_status minfer_debug_tiles(const minfer_pattern* pattern, const minfer_problem* problem,
                                 const void* workspace, size_t workspace_bytes, const int32_t* items,
                                 int64_t num_items, int32_t max_tiles, int32_t* tile_keys,
                                 int32_t* tile_counts, void* stream);

/* The pooled block scores the block-sparse selection ranked, computed by the selection's own device
 * code: float32 [batch, bs_heads, num_blocks, num_blocks], entry [m, n] for n < m (others 0). */
MINFER_API minfer_status minfer_debug_block_scores(const minfer_pattern* pattern, const minfer_problem* problem,
                                        const void* workspace, size_t workspace_bytes, float* scores,
                                        void* stream);

/* The PTX and binary versions (e.g. 80, 90) of the attention kernel the driver loaded for the current
 * device: ptx_version 80 on an H100 means the sm_80 code path runs from JIT-compiled compute_80 PTX
 * (set CUDA_FORCE_PTX_JIT=1 to force that). */
MINFER_API minfer_status minfer_kernel_versions(int32_t* ptx_version, int32_t* binary_version);

#ifdef __cplusplus
}
#endif

#endif /* MINFER_KERNELS_H */
