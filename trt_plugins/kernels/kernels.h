// Host-side entry points of the library's kernels (each file launches its own); used by launch.cu.
#pragma once

#include <cuda_runtime.h>

#include "params.h"

namespace minfer {

// Vertical-slash index: estimate, column/diagonal selection, chunk lags and held bitmap.
cudaError_t launch_vertical_slash_index(const LaunchParams& p, minfer_dtype dtype, int head_dim, const void* q,
                                        const void* k, char* ws, cudaStream_t stream);

// Block-sparse index: pooled Q/K and per-query-block top-k.
cudaError_t launch_block_sparse_index(const LaunchParams& p, minfer_dtype dtype, int head_dim, const void* q,
                                      const void* k, char* ws, cudaStream_t stream);

cudaError_t launch_block_scores(const LaunchParams& p, int head_dim, const char* ws, float* scores,
                                cudaStream_t stream);

// A work item of query blocks per CTA (three on sm_90a, two elsewhere); the block size, shared memory and item
// size follow the loaded binary's body.
cudaError_t launch_attention(const LaunchParams& p, minfer_dtype dtype, int head_dim, const void* q, const void* k,
                             const void* v, void* out, const char* ws, cudaStream_t stream);

cudaError_t launch_debug_tiles(const LaunchParams& p, const char* ws, const int32_t* items, int64_t num_items,
                               int32_t max_tiles, int32_t* tile_keys, int32_t* tile_counts, cudaStream_t stream);

cudaError_t attention_kernel_versions(int* ptx_version, int* binary_version);

}  // namespace minfer
