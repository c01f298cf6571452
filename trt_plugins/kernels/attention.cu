// The sparse attention forward: one CTA per (batch, query head, pair of query blocks), all heads of the layer
// in one launch, FlashAttention-2 style (online softmax in fp32 over 64-key tiles, K/V double-buffered with
// cp.async; wgmma on sm_90a, mma.sync m16n8k16 elsewhere), over the tiles PairSchedule yields. A chunk both blocks of the pair hold is
// loaded once and computed for both. One barrier per tile: chunk tiles are scheduled in registers, and the
// next tile's loads go out right after the barrier that frees its buffers (docs/kernels.md).
#include <cuda_runtime.h>

#include <cmath>

#include "kernels.h"
#include "tile_math.cuh"
#include "tile_source.cuh"
#include "wgmma.cuh"

namespace minfer {
namespace {

// Each warp keeps 16 rows of both query blocks, so Q stays in shared memory and is read per k-step.
template <int D>
struct AttentionSmem {
  static constexpr int kK = 0;                            // two stages
  static constexpr int kV = kK + 2 * Tile<D>::kBytes;     // two stages
  static constexpr int kQ = kV + 2 * Tile<D>::kBytes;     // the pair's two query blocks
  static constexpr int kKeys = kQ + 2 * Tile<D>::kBytes;  // int[2][64]
  static constexpr int kSource = kKeys + 2 * kBlock * 4;  // PairSource
  static constexpr int kBytes = kSource + int(sizeof(PairSource));
};

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// One query block's share of this thread: its two rows' output accumulators and softmax statistics.
template <int D>
struct BlockRows {
  float o[D / 2];
  float row_max[2], row_sum[2];
  int row0;  // this thread's rows are row0 and row0 + 8 (S <= 2^30)

  __device__ void init(int start_m) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    row0 = start_m + 16 * warp + (lane >> 2);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // The token rule on a tile's logits (key_of(j): the key of tile column j): causal, in range, A-shape window.
  template <typename KeyOf>
  __device__ void mask(float (&s)[32], KeyOf key_of, const HeadParams& hp, int seq) const {
    const int t4 = threadIdx.x & 3;
    const bool a_shape = hp.kind == MINFER_A_SHAPE;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int key = key_of(8 * (i >> 2) + 2 * t4 + (i & 1)), row = row0 + 8 * ((i >> 1) & 1);
      bool ok = key >= 0 && key <= row && key < seq;
      if (a_shape) ok = ok && (key < hp.sink || row - key < hp.local);
      if (!ok) s[i] = -INFINITY;
    }
  }

  // mask() where the tile needs it for this block (`half` of the pair), then absorb().
  __device__ void absorb_tile(float (&s)[32], const TileDesc& tile, const int* tile_keys, int half,
                              const HeadParams& hp, int seq, float scale_log2) {
    if (tile.uses & (kMaskFirst << half)) {
      if (tile.start == kGathered)
        mask(s, [&](int j) { return tile_keys[j]; }, hp, seq);
      else
        mask(s, [&](int j) { return tile.start + j; }, hp, seq);
    }
    absorb(s, scale_log2);
  }

  // Online softmax: turns the logits into probabilities against the new running max, rescales o.
  __device__ void absorb(float (&s)[32], float scale_log2) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) tile_max = fmaxf(tile_max, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
      tile_max = quad_max(tile_max) * scale_log2;
      const float new_max = fmaxf(row_max[r], tile_max);
      const float base = new_max == -INFINITY ? 0.f : new_max;  // a row with nothing visible yet stays 0
      const float alpha = fast_exp2(row_max[r] - base);
      row_max[r] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float e = fast_exp2(fmaf(s[4 * n + 2 * r + c], scale_log2, -base));
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
  }

  template <typename T>
  __device__ void store(T* out_head, int seq) const {
    const int t4 = threadIdx.x & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float total = quad_sum(row_sum[r]);
      const float inv = total > 0.f ? 1.f / total : 0.f;
      const int row = row0 + 8 * r;
      if (row >= seq) continue;
      T* dst = out_head + int64_t(row) * D + 2 * t4;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<uint32_t*>(dst + 8 * n) = MmaType<T>::pack(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
    }
  }
};

// K and V of one tile into a stage's buffers, as one commit group.
template <typename T, int D>
__device__ __forceinline__ void load_kv(uint32_t k_tile, uint32_t v_tile, const T* k_head, const T* v_head,
                                        const TileDesc& tile, const int* keys, int64_t seq) {
  if (tile.start == kGathered) {
    load_rows<T, D>(k_tile, k_head, keys, seq);
    load_rows<T, D>(v_tile, v_head, keys, seq);
  } else {
    load_row_range<T, D>(k_tile, k_head, tile.start, seq);
    load_row_range<T, D>(v_tile, v_head, tile.start, seq);
  }
  cp_async_commit();
}

#if MINFER_WGMMA
// One block's share of a tile (`half` of the pair): Q K^T, softmax, then P V. (Overlapping the
// two blocks' products with each other's softmax needs both blocks' logits live beside both outputs: at
// head_dim 128 that spills or makes ptxas serialise the wgmma groups, and measured slower; docs/kernels.md.)
template <typename T, int D>
__device__ __forceinline__ void one_block_tile(BlockRows<D>& block, int half, uint32_t q_tile, uint32_t k_tile,
                                               uint32_t v_tile, const TileDesc& tile, const int* tile_keys,
                                               const HeadParams& hp, int seq, float scale_log2) {
  float s[32];
  wgmma::qk_issue<T, D>(s, q_tile, k_tile);
  wgmma::wait<0>(s);
  block.absorb_tile(s, tile, tile_keys, half, hp, seq, scale_log2);
  wgmma::pv_issue<T, D>(block.o, s, v_tile);
  wgmma::wait<0>(block.o);
}
#endif

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 2)
    attention_kernel(const __grid_constant__ LaunchParams p, const T* q, const T* k, const T* v, T* out,
                     const char* ws) {
  extern __shared__ __align__(1024) char smem[];  // wgmma's swizzle needs 1 KB aligned tiles
  using S = AttentionSmem<D>;
  int b, h, pair;
  decode_work_item(p, blockIdx.x, b, h, pair);
  const int m0 = 2 * pair, m1 = m0 + 1 < p.num_blocks ? m0 + 1 : -1;
  const HeadParams& hp = p.heads[h];
  const int seq = int(p.seq_len);  // S <= 2^30
  const int start0 = m0 * kBlock;  // S <= 2^30
  const int kvh = h / p.group;
  const T* q_head = q + (int64_t(b) * p.num_q_heads + h) * seq * D;
  const T* k_head = k + (int64_t(b) * p.num_kv_heads + kvh) * seq * D;
  const T* v_head = v + (int64_t(b) * p.num_kv_heads + kvh) * seq * D;
  const uint32_t k_tiles = smem_addr(smem + S::kK), v_tiles = smem_addr(smem + S::kV);
  const uint32_t q_tiles = smem_addr(smem + S::kQ);
  int* keys = reinterpret_cast<int*>(smem + S::kKeys);
  PairSource& source = *reinterpret_cast<PairSource*>(smem + S::kSource);

  load_row_range<T, D>(q_tiles, q_head, start0, seq);
  if (m1 >= 0) load_row_range<T, D>(q_tiles + Tile<D>::kBytes, q_head, start0 + kBlock, seq);
  cp_async_commit();
  if (threadIdx.x == 0) source.init(p, ws, b, h, m0, m1);
  __syncthreads();
  PairSchedule schedule(source);
  TileDesc tile = schedule.next(source, seq, keys);  // the first block has at least its diagonal chunk
  load_kv<T, D>(k_tiles, v_tiles, k_head, v_head, tile, keys, seq);

  BlockRows<D> block[2];
  block[0].init(start0);
  block[1].init(start0 + kBlock);
  for (int stage = 0;; stage ^= 1) {
    // this tile's K/V (and Q) have landed, and every thread is done with the other stage's buffers
    cp_async_wait<0>();
#if MINFER_WGMMA
    wgmma::fence_async_shared();
#endif
    __syncthreads();
    const TileDesc next = schedule.next(source, seq, keys + (stage ^ 1) * kBlock);
    if (next.uses)
      load_kv<T, D>(k_tiles + (stage ^ 1) * Tile<D>::kBytes, v_tiles + (stage ^ 1) * Tile<D>::kBytes, k_head,
                    v_head, next, keys + (stage ^ 1) * kBlock, seq);
    const uint32_t k_tile = k_tiles + stage * Tile<D>::kBytes, v_tile = v_tiles + stage * Tile<D>::kBytes;
    const int* tile_keys = keys + stage * kBlock;
#if MINFER_WGMMA
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      if (!(tile.uses & (kUsesFirst << half))) continue;  // the same in every thread
      one_block_tile<T, D>(block[half], half, q_tiles + half * Tile<D>::kBytes, k_tile, v_tile, tile, tile_keys, hp,
                           seq, p.scale_log2);
    }
#else
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      if (!(tile.uses & (kUsesFirst << half))) continue;  // the same in every thread
      float s[32];
      qk_tile_smem_q<T, D>(s, q_tiles + half * Tile<D>::kBytes, k_tile);
      block[half].absorb_tile(s, tile, tile_keys, half, hp, seq, p.scale_log2);
      pv_tile<T, D>(block[half].o, s, v_tile);
    }
#endif
    if (!next.uses) break;
    tile = next;
  }

  T* out_head = out + (int64_t(b) * p.num_q_heads + h) * seq * D;
  block[0].store(out_head, seq);
  if (m1 >= 0) block[1].store(out_head, seq);
}

// minfer_debug_tiles: the schedule of the block's pair, as the attention kernel runs it, writing the keys of
// the tiles that block computes instead of computing them.
__global__ void __launch_bounds__(kThreads) debug_tiles_kernel(const __grid_constant__ LaunchParams p,
                                                               const char* ws, const int32_t* items,
                                                               int32_t max_tiles, int32_t* tile_keys,
                                                               int32_t* tile_counts) {
  __shared__ int keys[kBlock];
  __shared__ PairSource source;
  const int64_t item = blockIdx.x;
  const int b = items[3 * item], h = items[3 * item + 1], m = items[3 * item + 2];
  const int m0 = m & ~1, m1 = m0 + 1 < p.num_blocks ? m0 + 1 : -1;
  const int mine = m == m0 ? kUsesFirst : kUsesSecond;
  if (threadIdx.x == 0) source.init(p, ws, b, h, m0, m1);
  __syncthreads();
  PairSchedule schedule(source);
  int count = 0;
  for (TileDesc tile; (tile = schedule.next(source, p.seq_len, keys)).uses != 0;) {
    if (!(tile.uses & mine)) continue;
    if (count < max_tiles && threadIdx.x < kBlock)
      tile_keys[(item * max_tiles + count) * kBlock + threadIdx.x] =
          tile.start == kGathered ? keys[threadIdx.x] : int(tile.start + threadIdx.x);
    ++count;
  }
  if (threadIdx.x == 0) tile_counts[item] = count;
}

template <typename T, int D>
cudaError_t launch_attention_typed(const LaunchParams& p, const void* q, const void* k, const void* v, void* out,
                                   const char* ws, cudaStream_t stream) {
  const int smem = AttentionSmem<D>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const int64_t items = int64_t((p.num_blocks + 1) / 2) * p.batch * p.num_q_heads;
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
