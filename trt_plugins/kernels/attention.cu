// The sparse attention forward: one CTA per (batch, query head, query block), all heads of the layer in
// one launch, FlashAttention-2 style (online softmax in fp32 over 64-key tiles, K/V double-buffered with
// cp.async, mma.sync m16n8k16), over the tiles TileSource yields.
#include <cuda_runtime.h>

#include <cmath>

#include "kernels.h"
#include "tile_math.cuh"
#include "tile_source.cuh"

namespace minfer {
namespace {

// Q is staged through V's second buffer (it lives in registers once loaded), so a CTA needs 4 tiles of
// shared memory and three CTAs fit on an SM at head_dim 128.
template <int D>
struct AttentionSmem {
  static constexpr int kK = 0;                              // two stages
  static constexpr int kV = kK + 2 * Tile<D>::kBytes;       // two stages; stage 1 first holds Q
  static constexpr int kKeys = kV + 2 * Tile<D>::kBytes;    // int[2][64]
  static constexpr int kFlags = kKeys + 2 * kBlock * 4;     // int[2]
  static constexpr int kSource = kFlags + 16;               // TileSource
  static constexpr int kBytes = kSource + int(sizeof(TileSource));
};

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 3) attention_kernel(const __grid_constant__ LaunchParams p, const T* q,
                                                                const T* k, const T* v, T* out, const char* ws) {
  extern __shared__ __align__(128) char smem[];
  using S = AttentionSmem<D>;
  int b, h, m;
  decode_work_item(p, blockIdx.x, b, h, m);
  const HeadParams& hp = p.heads[h];
  const int64_t seq = p.seq_len;
  const int64_t start_m = int64_t(m) * kBlock;
  const int kvh = h / p.group;
  const T* q_head = q + (int64_t(b) * p.num_q_heads + h) * seq * D;
  const T* k_head = k + (int64_t(b) * p.num_kv_heads + kvh) * seq * D;
  const T* v_head = v + (int64_t(b) * p.num_kv_heads + kvh) * seq * D;
  const uint32_t k_tiles = smem_addr(smem + S::kK), v_tiles = smem_addr(smem + S::kV);
  int* keys = reinterpret_cast<int*>(smem + S::kKeys);
  int* flags = reinterpret_cast<int*>(smem + S::kFlags);
  TileSource& source = *reinterpret_cast<TileSource*>(smem + S::kSource);

  // commit groups in flight are always (K, V) pairs of tiles, oldest first
  load_row_range<T, D>(v_tiles + Tile<D>::kBytes, q_head, start_m, seq);
  cp_async_commit();
  if (threadIdx.x == 0) source.init(p, ws, b, h, m);
  __syncthreads();
  source.next(p, keys, flags);  // every query block has at least its diagonal chunk
  load_rows<T, D>(k_tiles, k_head, keys, seq);
  cp_async_commit();
  load_rows<T, D>(v_tiles, v_head, keys, seq);
  cp_async_commit();
  cp_async_wait<2>();
  __syncthreads();
  uint32_t qa[D / 16][4];
  load_q_fragments<D>(qa, v_tiles + Tile<D>::kBytes);
  // (the next tile's loads into V's second buffer come after next()'s barrier)

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
  const int64_t rows[2] = {start_m + 16 * warp + g, start_m + 16 * warp + g + 8};
  const bool a_shape = hp.kind == MINFER_A_SHAPE;
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  for (int stage = 0;; stage ^= 1) {
    // next() synchronises before it writes, so nobody still reads the buffers it and the loads overwrite
    const bool more = source.next(p, keys + (stage ^ 1) * kBlock, flags + (stage ^ 1));
    if (more) {
      load_rows<T, D>(k_tiles + (stage ^ 1) * Tile<D>::kBytes, k_head, keys + (stage ^ 1) * kBlock, seq);
      cp_async_commit();
      load_rows<T, D>(v_tiles + (stage ^ 1) * Tile<D>::kBytes, v_head, keys + (stage ^ 1) * kBlock, seq);
      cp_async_commit();
      cp_async_wait<3>();  // this tile's K
    } else {
      cp_async_wait<1>();
    }
    const uint32_t k_tile = k_tiles + stage * Tile<D>::kBytes, v_tile = v_tiles + stage * Tile<D>::kBytes;
    float s[32];
    __syncthreads();
    qk_tile<T, D>(s, qa, k_tile);
    if (flags[stage]) {
      const int* tile_keys = keys + stage * kBlock;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const int64_t key = tile_keys[8 * (i >> 2) + 2 * t4 + (i & 1)], row = rows[(i >> 1) & 1];
        bool ok = key >= 0 && key <= row && key < seq;
        if (a_shape) ok = ok && (key < hp.sink || row - key < hp.local);
        if (!ok) s[i] = -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) tile_max = fmaxf(tile_max, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
      tile_max = quad_max(tile_max) * p.scale_log2;
      const float new_max = fmaxf(row_max[r], tile_max);
      const float base = new_max == -INFINITY ? 0.f : new_max;  // a row with nothing visible yet stays 0
      const float alpha = fast_exp2(row_max[r] - base);
      row_max[r] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float e = fast_exp2(fmaf(s[4 * n + 2 * r + c], p.scale_log2, -base));
          s[4 * n + 2 * r + c] = e;
          sum += e;
        }
      row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[4 * n + 2 * r] *= alpha;
        o[4 * n + 2 * r + 1] *= alpha;
      }
    }
    if (more) cp_async_wait<2>(); else cp_async_wait<0>();  // this tile's V
    __syncthreads();
    pv_tile<T, D>(o, s, v_tile);
    if (!more) break;
  }

  T* out_head = out + (int64_t(b) * p.num_q_heads + h) * seq * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = quad_sum(row_sum[r]);
    const float inv = total > 0.f ? 1.f / total : 0.f;
    if (rows[r] >= seq) continue;
    T* dst = out_head + rows[r] * D + 2 * t4;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(dst + 8 * n) = MmaType<T>::pack(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
  }
}

// minfer_debug_tiles: the same TileSource, writing the keys instead of computing.
__global__ void __launch_bounds__(kThreads) debug_tiles_kernel(const __grid_constant__ LaunchParams p,
                                                               const char* ws, const int32_t* items,
                                                               int32_t max_tiles, int32_t* tile_keys,
                                                               int32_t* tile_counts) {
  __shared__ int keys[kBlock];
  __shared__ int flag;
  __shared__ TileSource source;
  const int64_t item = blockIdx.x;
  const int b = items[3 * item], h = items[3 * item + 1], m = items[3 * item + 2];
  if (threadIdx.x == 0) source.init(p, ws, b, h, m);
  __syncthreads();
  int count = 0;
  while (source.next(p, keys, &flag)) {
    if (count < max_tiles && threadIdx.x < kBlock)
      tile_keys[(item * max_tiles + count) * kBlock + threadIdx.x] = keys[threadIdx.x];
    ++count;
    __syncthreads();
  }
  if (threadIdx.x == 0) tile_counts[item] = count;
}

template <typename T, int D>
cudaError_t launch_attention_typed(const LaunchParams& p, const void* q, const void* k, const void* v, void* out,
                                   const char* ws, cudaStream_t stream) {
  const int smem = AttentionSmem<D>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const int64_t items = int64_t(p.num_blocks) * p.batch * p.num_q_heads;
  attention_kernel<T, D><<<dim3(unsigned(items)), kThreads, smem, stream>>>(
      p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(out), ws);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attention(const LaunchParams& p, minfer_dtype dtype, int head_dim, const void* q, const void* k,
                             const void* v, void* out, const char* ws, cudaStream_t stream) {
  if (dtype == MINFER_BFLOAT16)
    return head_dim == 64 ? launch_attention_typed<__nv_bfloat16, 64>(p, q, k, v, out, ws, stream)
                          : launch_attention_typed<__nv_bfloat16, 128>(p, q, k, v, out, ws, stream);
  return head_dim == 64 ? launch_attention_typed<__half, 64>(p, q, k, v, out, ws, stream)
                        : launch_attention_typed<__half, 128>(p, q, k, v, out, ws, stream);
}

cudaError_t launch_debug_tiles(const LaunchParams& p, const char* ws, const int32_t* items, int64_t num_items,
                               int32_t max_tiles, int32_t* tile_keys, int32_t* tile_counts, cudaStream_t stream) {
  if (num_items == 0) return cudaSuccess;
  debug_tiles_kernel<<<dim3(unsigned(num_items)), kThreads, 0, stream>>>(p, ws, items, max_tiles, tile_keys,
                                                                         tile_counts);
  return cudaGetLastError();
}

cudaError_t attention_kernel_versions(int* ptx_version, int* binary_version) {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, attention_kernel<__nv_bfloat16, 128>);
  if (err != cudaSuccess) return err;
  *ptx_version = attributes.ptxVersion;
  *binary_version = attributes.binaryVersion;
  return cudaSuccess;
}

}  // namespace minfer
