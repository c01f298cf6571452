// Block-sparse index building on the GPU (docs/op-spec.md): pooled means of each block's real rows in
// float32, scores q̄_m · k̄_n for n < m, the diagonal block plus the top min(top_k, m+1) - 1 others.
#include <cuda_runtime.h>

#include "kernels.h"
#include "select.cuh"
#include "tile_math.cuh"

namespace minfer {
namespace {

constexpr int kSelectThreads = 256;

// blockIdx.y < bs_heads: pooled Q of that slot; else pooled K of KV head blockIdx.y - bs_heads.
template <typename T, int D>
__global__ void __launch_bounds__(D) pool_kernel(const __grid_constant__ LaunchParams p, const T* q, const T* k,
                                                 char* ws) {
  const int n = blockIdx.x, y = blockIdx.y, b = blockIdx.z, d = threadIdx.x;
  const int64_t seq = p.seq_len, first = int64_t(n) * kBlock, last = min(seq, first + kBlock);
  const Layout& L = p.layout;
  const bool is_q = y < L.bs_heads;
  const T* src = is_q ? q + (int64_t(b) * p.num_q_heads + p.bs_head_of_slot[y]) * seq * D
                      : k + (int64_t(b) * p.num_kv_heads + (y - L.bs_heads)) * seq * D;
  float sum = 0.f;
  for (int64_t row = first; row < last; ++row) sum += MmaType<T>::to_float(src[row * D + d]);
  float* dst = is_q ? reinterpret_cast<float*>(ws + L.pooled_q) + ((int64_t(b) * L.bs_heads + y) * p.num_blocks + n) * D
                    : reinterpret_cast<float*>(ws + L.pooled_k) +
                          ((int64_t(b) * p.num_kv_heads + (y - L.bs_heads)) * p.num_blocks + n) * D;
  dst[d] = sum / float(last - first);
}

struct BsHead {
  int b, slot, h, m;
  const float* pooled_q;  // of query block m
  const float* pooled_k;  // of block 0 of the head's KV head
};

__device__ __forceinline__ BsHead bs_head(const LaunchParams& p, const char* ws, int head_dim) {
  BsHead v;
  v.m = blockIdx.x;
  v.slot = blockIdx.y;
  v.b = blockIdx.z;
  v.h = p.bs_head_of_slot[v.slot];
  const Layout& L = p.layout;
  v.pooled_q = reinterpret_cast<const float*>(ws + L.pooled_q) +
               ((int64_t(v.b) * L.bs_heads + v.slot) * p.num_blocks + v.m) * head_dim;
  v.pooled_k = reinterpret_cast<const float*>(ws + L.pooled_k) +
               (int64_t(v.b) * p.num_kv_heads + v.h / p.group) * p.num_blocks * head_dim;
  return v;
}

// The one definition of a pooled score (the selection and minfer_debug_block_scores both use it).
__device__ __forceinline__ float block_score(const float* pq, const float* pk, int head_dim) {
  float acc = 0.f;
  for (int d = 0; d < head_dim; ++d) acc = fmaf(pq[d], pk[d], acc);
  return acc;
}

__global__ void __launch_bounds__(kSelectThreads) select_kernel(const __grid_constant__ LaunchParams p, char* ws,
                                                                int head_dim) {
  extern __shared__ float scores[];
  __shared__ SelectScratch scratch;
  const BsHead v = bs_head(p, ws, head_dim);
  for (int n = threadIdx.x; n < v.m; n += blockDim.x)
    scores[n] = block_score(v.pooled_q, v.pooled_k + int64_t(n) * head_dim, head_dim);
  __syncthreads();
  const Layout& L = p.layout;
  int* row = reinterpret_cast<int*>(ws + L.blocks) +
             ((int64_t(v.b) * L.bs_heads + v.slot) * p.num_blocks + v.m) * L.blocks_stride;
  const int keep = min(p.heads[v.h].nv, v.m + 1) - 1;
  select_top(scores, 0, v.m, keep, row, scratch);
  for (int i = keep + threadIdx.x; i < L.blocks_stride; i += blockDim.x) row[i] = i == keep ? v.m : -1;
}

__global__ void scores_kernel(const __grid_constant__ LaunchParams p, const char* ws, int head_dim, float* out) {
  const BsHead v = bs_head(p, ws, head_dim);
  float* row = out + ((int64_t(v.b) * p.layout.bs_heads + v.slot) * p.num_blocks + v.m) * p.num_blocks;
  for (int n = threadIdx.x; n < p.num_blocks; n += blockDim.x)
    row[n] = n < v.m ? block_score(v.pooled_q, v.pooled_k + int64_t(n) * head_dim, head_dim) : 0.f;
}

template <typename T, int D>
cudaError_t launch_pool(const LaunchParams& p, const void* q, const void* k, char* ws, cudaStream_t stream) {
  pool_kernel<T, D><<<dim3(p.num_blocks, p.layout.bs_heads + p.num_kv_heads, p.batch), D, 0, stream>>>(
      p, static_cast<const T*>(q), static_cast<const T*>(k), ws);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_block_sparse_index(const LaunchParams& p, minfer_dtype dtype, int head_dim, const void* q,
                                      const void* k, char* ws, cudaStream_t stream) {
  if (p.layout.bs_heads == 0) return cudaSuccess;
  cudaError_t err;
  if (dtype == MINFER_BFLOAT16)
    err = head_dim == 64 ? launch_pool<__nv_bfloat16, 64>(p, q, k, ws, stream)
                         : launch_pool<__nv_bfloat16, 128>(p, q, k, ws, stream);
  else
    err = head_dim == 64 ? launch_pool<__half, 64>(p, q, k, ws, stream) : launch_pool<__half, 128>(p, q, k, ws, stream);
  if (err != cudaSuccess) return err;
  const int smem = p.num_blocks * int(sizeof(float));
  err = cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  select_kernel<<<dim3(p.num_blocks, p.layout.bs_heads, p.batch), kSelectThreads, smem, stream>>>(p, ws, head_dim);
  return cudaGetLastError();
}

cudaError_t launch_block_scores(const LaunchParams& p, int head_dim, const char* ws, float* scores,
                                cudaStream_t stream) {
  if (p.layout.bs_heads == 0) return cudaSuccess;
  scores_kernel<<<dim3(p.num_blocks, p.layout.bs_heads, p.batch), 256, 0, stream>>>(p, ws, head_dim, scores);
  return cudaGetLastError();
}

}  // namespace minfer
