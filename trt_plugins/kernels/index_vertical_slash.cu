// Vertical-slash index building on the GPU (docs/op-spec.md steps 1-4), deterministic throughout:
//   row_stats   softmax max/sum of the last lq queries, per key split, then folded in split order;
//   scores      column and diagonal sums of the softmax; key tile t owns keys [64t, 64t+64) and the 64
//               diagonals whose first row lands there, and one CTA sums a run of tiles' scores, each in
//               ascending row order, so each score is one CTA's fixed-order sum;
//   select      forced sinks/local diagonals, then a radix top-k (ties to the lower index);
//   lags        the greedy chunk cover, then the held bitmap.
#include <cuda_runtime.h>

#include <cmath>

#include "kernels.h"
#include "select.cuh"
#include "tile_math.cuh"

namespace minfer {
namespace {

// Key tiles whose scores one CTA sums. A run computes each tile's probabilities once and the ext = (62 + lq) / 64
// tiles past it again (the tails of its last tile's diagonals): 1/16 more at lq = 64, where a CTA per 8 tiles that
// computed both tiles of each diagonal did twice the work (index_kernels.py: 1.96 of 3.57 ms at 128K).
constexpr int kScoreTilesPerCta = 16;
constexpr int kMaxRowGroups = (MINFER_MAX_LAST_Q + kBlock - 1) / kBlock;
// Row stride of a tile's probabilities in shared memory: 8 apart mod 32 banks, so a warp's float2 stores (rows
// g, g + 8 .. of the mma layout, columns 2 t4) fill 32 banks per wavefront; at 65 they conflicted 28.6M times in
// one 128K launch (ncu). Column and diagonal reads take consecutive columns of one row, conflict-free at any stride.
constexpr int kProbsStride = kBlock + 8;

struct VsHead {
  int b, slot, h;
  const HeadParams* hp;
  int64_t index;  // b * vs_heads + slot
};

__device__ __forceinline__ VsHead vs_head(const LaunchParams& p) {
  VsHead v;
  v.slot = blockIdx.y;
  v.b = blockIdx.z;
  v.h = p.vs_head_of_slot[v.slot];
  v.hp = &p.heads[v.h];
  v.index = int64_t(v.b) * p.layout.vs_heads + v.slot;
  return v;
}

// The estimate's 64-row query groups the kernels keep in shared memory: as many as the layer's longest lq needs.
__host__ __device__ __forceinline__ int row_groups(const LaunchParams& p) {
  return (p.layout.max_lq + kBlock - 1) / kBlock;
}

template <typename T, int D>
__device__ __forceinline__ void load_last_queries(const LaunchParams& p, const T* q, const VsHead& v, uint32_t q_tiles) {
  const int64_t seq = p.seq_len;
  const T* q_head = q + (int64_t(v.b) * p.num_q_heads + v.h) * seq * D;
  for (int rg = 0; rg * kBlock < v.hp->lq; ++rg)
    load_row_range<T, D>(q_tiles + rg * Tile<D>::kBytes, q_head, seq - v.hp->lq + rg * kBlock, seq);
}

// Runs body(kt, tile) over key tiles first..last of one head in order, the next tile's cp.async copy in flight
// while body works on this one (two buffers from `buffers`; rows outside [0, S) read as zeros). The copies
// committed before the call (the estimate's queries) have landed when body first runs.
template <typename T, int D, typename Body>
__device__ __forceinline__ void stream_key_tiles(uint32_t buffers, const T* k_head, int64_t seq, int first, int last,
                                                 Body&& body) {
  if (first > last) return;
  load_row_range<T, D>(buffers, k_head, int64_t(first) * kBlock, seq);
  cp_async_commit();
  for (int kt = first; kt <= last; ++kt) {
    const int slot = (kt - first) & 1;
    if (kt < last) load_row_range<T, D>(buffers + (slot ^ 1) * Tile<D>::kBytes, k_head, int64_t(kt + 1) * kBlock, seq);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    body(kt, buffers + slot * Tile<D>::kBytes);
    __syncthreads();  // the next iteration refills the buffer body read
  }
  cp_async_wait<0>();
}

// Runs body(rg, s) for each of the estimate's query groups rg, s its logits against k_tile: the row-group walk of
// row_stats and scores, unrolled so that per-group register arrays stay in registers.
template <typename T, int D, typename Body>
__device__ __forceinline__ void for_each_row_group(int groups, uint32_t q_tiles, uint32_t k_tile, Body&& body) {
#pragma unroll
  for (int rg = 0; rg < kMaxRowGroups; ++rg) {
    if (rg >= groups) break;
    float s[32];
    qk_tile_smem_q<T, D>(s, q_tiles + rg * Tile<D>::kBytes, k_tile);
    body(rg, s);
  }
}

// Per key split: each estimate row's running max (base 2, scaled) and sum of exponentials.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const __grid_constant__ LaunchParams p, const T* q,
                                                             const T* k, char* ws) {
  extern __shared__ __align__(128) char smem[];
  const VsHead v = vs_head(p);
  const int64_t seq = p.seq_len;
  const int lq = v.hp->lq, groups = (lq + kBlock - 1) / kBlock;
  const uint32_t q_tiles = smem_addr(smem), k_tiles = q_tiles + row_groups(p) * Tile<D>::kBytes;
  const T* k_head = k + (int64_t(v.b) * p.num_kv_heads + v.h / p.group) * seq * D;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
  load_last_queries<T, D>(p, q, v, q_tiles);
  cp_async_commit();

  float run_max[kMaxRowGroups][2], run_sum[kMaxRowGroups][2];
#pragma unroll
  for (int rg = 0; rg < kMaxRowGroups; ++rg)
    for (int r = 0; r < 2; ++r) run_max[rg][r] = -INFINITY, run_sum[rg][r] = 0.f;
  const int first = int(blockIdx.x) * (kRowSplitKeys / kBlock);
  const int last = int((min(seq, int64_t(first) * kBlock + kRowSplitKeys) + kBlock - 1) / kBlock) - 1;
  stream_key_tiles<T, D>(k_tiles, k_head, seq, first, last, [&](int kt, uint32_t k_tile) {
    for_each_row_group<T, D>(groups, q_tiles, k_tile, [&](int rg, float(&s)[32]) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        // S <= 2^30 (validate.cpp); a real row (below lq) is below S, so key <= row keeps its keys below S
        const int row = int(seq) - lq + rg * kBlock + 16 * warp + g + 8 * r;
        float tile_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int key = kt * kBlock + 8 * n + 2 * t4 + c;
            float x = s[4 * n + 2 * r + c] * p.scale_log2;
            if (key > row) x = -INFINITY;
            s[4 * n + 2 * r + c] = x;
            tile_max = fmaxf(tile_max, x);
          }
        const float new_max = fmaxf(run_max[rg][r], tile_max);
        if (new_max == -INFINITY) continue;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < 8; ++n) sum += exp2f(s[4 * n + 2 * r] - new_max) + exp2f(s[4 * n + 2 * r + 1] - new_max);
        run_sum[rg][r] = run_sum[rg][r] * exp2f(run_max[rg][r] - new_max) + sum;
        run_max[rg][r] = new_max;
      }
    });
  });
  float2* partials = reinterpret_cast<float2*>(ws + p.layout.row_partials) +
                     (v.index * p.layout.row_splits + blockIdx.x) * p.layout.max_lq;
#pragma unroll
  for (int rg = 0; rg < kMaxRowGroups; ++rg)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float m = run_max[rg][r], l = run_sum[rg][r];
#pragma unroll
      for (int d = 1; d < 4; d <<= 1) {  // fold the quad in a fixed order
        const float m2 = __shfl_xor_sync(0xffffffffu, m, d), l2 = __shfl_xor_sync(0xffffffffu, l, d);
        const float mm = fmaxf(m, m2);
        if (mm != -INFINITY) l = l * exp2f(m - mm) + l2 * exp2f(m2 - mm);  // commutative: same in both lanes
        m = mm;
      }
      const int row = rg * kBlock + 16 * warp + g + 8 * r;
      if (t4 == 0 && rg < groups && row < lq) partials[row] = make_float2(m, l);
    }
}

// Folds the splits of each row in split order.
__global__ void row_reduce_kernel(const __grid_constant__ LaunchParams p, char* ws) {
  const VsHead v = vs_head(p);
  const int row = threadIdx.x;
  if (row >= v.hp->lq) return;
  const float2* partials =
      reinterpret_cast<const float2*>(ws + p.layout.row_partials) + v.index * p.layout.row_splits * p.layout.max_lq;
  float m = -INFINITY, l = 0.f;
  const int splits = int((p.seq_len + kRowSplitKeys - 1) / kRowSplitKeys);
  for (int s = 0; s < splits; ++s) {
    const float2 part = partials[int64_t(s) * p.layout.max_lq + row];
    const float mm = fmaxf(m, part.x);
    if (mm == -INFINITY) continue;
    l = l * exp2f(m - mm) + part.y * exp2f(part.x - mm);
    m = mm;
  }
  reinterpret_cast<float2*>(ws + p.layout.row_stats)[v.index * p.layout.max_lq + row] = make_float2(m, l);
}

// Column scores of keys [64t, 64t+64) and diagonal scores of d = S - lq - 64t - e, e in [0, 64), for the run of
// key tiles t_first + 16 blockIdx.x .. + 15. A diagonal of tile t has its elements in tiles t .. t + ext; row r of
// query group rg in key tile kt adds to the diagonal of tile kt - rg (column e + r < 64) or kt - rg - 1, held in
// acc[rg] and acc[rg + 1] (acc[j]: tile kt - j). Every score is summed in ascending row order, as before.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) scores_kernel(const __grid_constant__ LaunchParams p, const T* q,
                                                          const T* k, char* ws, int t_first) {
  extern __shared__ __align__(128) char smem[];
  const VsHead v = vs_head(p);
  const int64_t seq = p.seq_len;
  const int lq = v.hp->lq, groups = (lq + kBlock - 1) / kBlock, ext = (62 + lq) / kBlock;
  const uint32_t q_tiles = smem_addr(smem), k_tiles = q_tiles + row_groups(p) * Tile<D>::kBytes;
  float(*probs)[kProbsStride] = reinterpret_cast<float(*)[kProbsStride]>(smem + (row_groups(p) + 2) * Tile<D>::kBytes);
  float2* row_norm = reinterpret_cast<float2*>(probs + kBlock);  // per estimate row: max, 1 / sum
  const T* k_head = k + (int64_t(v.b) * p.num_kv_heads + v.h / p.group) * seq * D;
  const float2* stats = reinterpret_cast<const float2*>(ws + p.layout.row_stats) + v.index * p.layout.max_lq;
  float* column_scores = reinterpret_cast<float*>(ws + p.layout.column_scores) + v.index * seq;
  float* diagonal_scores = reinterpret_cast<float*>(ws + p.layout.diagonal_scores) + v.index * seq;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3, tid = threadIdx.x;
  const int num_key_tiles = int((seq + kBlock - 1) / kBlock);
  const int t0 = t_first + int(blockIdx.x) * kScoreTilesPerCta;
  // the tiles this CTA owns: none below -ext (their diagonals start past the last key), none from the last on
  const int t_begin = max(t0, -ext), t_end = min(t0 + kScoreTilesPerCta, num_key_tiles);
  if (t_begin >= t_end) return;
  load_last_queries<T, D>(p, q, v, q_tiles);
  cp_async_commit();
  // one correctly rounded reciprocal per row and CTA: 16 IEEE divisions per row and tile cost about 8
  // instructions each (and a slow-path call); the first tile's barrier publishes them
  for (int row = tid; row < groups * kBlock; row += kThreads) {
    const float2 st = row < lq ? stats[row] : make_float2(0.f, 1.f);
    row_norm[row] = make_float2(st.x, __frcp_rn(st.y));
  }

  float acc[kMaxRowGroups + 1] = {};  // threads 64..127: the diagonal of e = tid - 64 of tile kt - j
  float column = 0.f;                 // threads 0..63: column 64kt + tid
  const int last = min(t_end - 1 + ext, num_key_tiles - 1);
  stream_key_tiles<T, D>(k_tiles, k_head, seq, max(t_begin, 0), last, [&](int kt, uint32_t k_tile) {
    const auto owned = [&](int t) { return t >= t_begin && t < t_end; };
    for_each_row_group<T, D>(groups, q_tiles, k_tile, [&](int rg, float(&s)[32]) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int local_row = 16 * warp + g + 8 * r, est_row = rg * kBlock + local_row;
        const int row = int(seq) - lq + est_row;  // S <= 2^30 (validate.cpp); a real row's keys are below S
        const float2 norm = row_norm[est_row];
        float x[2];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int key = kt * kBlock + 8 * n + 2 * t4 + c;
            x[c] = est_row < lq && key <= row ? exp2f(s[4 * n + 2 * r + c] * p.scale_log2 - norm.x) * norm.y : 0.f;
          }
          *reinterpret_cast<float2*>(&probs[local_row][8 * n + 2 * t4]) = make_float2(x[0], x[1]);
        }
      }
      __syncthreads();
      // unrolled and branch-free, so 16 loads of a sum are in flight together; adding +0 to a sum of
      // probabilities leaves it unchanged, so the masked adds keep each score the ascending-row sum of its own
      if (tid < kBlock) {
        if (owned(kt))
#pragma unroll 16
          for (int r = 0; r < kBlock; ++r) column += probs[r][tid];
      } else {
        const int e = tid - kBlock;
        const bool lo = owned(kt - rg), hi = owned(kt - rg - 1);
#pragma unroll 16
        for (int r = 0; r < kBlock; ++r) {
          const float x = probs[r][(e + r) & (kBlock - 1)], in_lo = e + r < kBlock ? x : 0.f;
          acc[rg] += lo ? in_lo : 0.f;
          acc[rg + 1] += hi ? x - in_lo : 0.f;
        }
      }
      __syncthreads();
    });
    if (tid < kBlock) {
      const int64_t key = int64_t(kt) * kBlock + tid;
      if (owned(kt) && key < seq) column_scores[key] = column;
      column = 0.f;
      return;
    }
    // tile kt - j's diagonals are complete once kt is their last tile: j = ext, or kt the head's last tile
#pragma unroll
    for (int j = 0; j <= kMaxRowGroups; ++j) {
      const int64_t d = seq - lq - int64_t(kt - j) * kBlock - (tid - kBlock);
      if ((j == ext || (j < ext && kt == num_key_tiles - 1)) && owned(kt - j) && d >= 0 && d < seq)
        diagonal_scores[d] = acc[j];
    }
#pragma unroll
    for (int j = kMaxRowGroups; j > 0; --j) acc[j] = acc[j - 1];
    acc[0] = 0.f;
  });
}

constexpr int kSelectThreads = 1024;

// blockIdx.x 0: columns (forced sinks), 1: diagonals (forced local).
__global__ void __launch_bounds__(kSelectThreads) select_kernel(const __grid_constant__ LaunchParams p, char* ws) {
  __shared__ SelectScratch scratch;
  const VsHead v = vs_head(p);
  const int64_t seq = p.seq_len;
  const bool columns = blockIdx.x == 0;
  const float* scores =
      reinterpret_cast<const float*>(ws + (columns ? p.layout.column_scores : p.layout.diagonal_scores)) +
      v.index * seq;
  int* out = reinterpret_cast<int*>(ws + (columns ? p.layout.columns : p.layout.diagonals)) +
             v.index * (columns ? p.layout.columns_stride : p.layout.diagonals_stride);
  const int forced = columns ? v.hp->sink : v.hp->local, total = columns ? v.hp->nv : v.hp->ns;
  for (int i = threadIdx.x; i < forced; i += blockDim.x) out[i] = i;
  select_top(scores, forced, int(seq), total - forced, out + forced, scratch);
}

constexpr int kLagsThreads = 256, kLagsChunk = 2048;

// The greedy chunk cover of the selected diagonals (oldest key first), then the held bitmap. The cover is warp
// 0's walk over the diagonals, staged through shared memory a chunk at a time: each step takes the largest
// diagonal below the last lag, found among the next 32 by a ballot, so a band of selected diagonals, where all
// but every 64th are held already, costs a step per lag rather than one per diagonal. (One thread's walk took
// 0.20 ms per launch at 128K with 6096 slashes, and 0.43 to 0.49 from 128K to 1M reading global memory;
// bench/index_kernels.py.)
__global__ void __launch_bounds__(kLagsThreads) lags_kernel(const __grid_constant__ LaunchParams p, char* ws) {
  __shared__ int chunk[kLagsChunk];
  __shared__ int cover_count;
  const VsHead v = vs_head(p);
  const Layout& L = p.layout;
  const int* diagonals = reinterpret_cast<const int*>(ws + L.diagonals) + v.index * L.diagonals_stride;
  int* lags = reinterpret_cast<int*>(ws + L.lags) + v.index * L.diagonals_stride;
  uint32_t* held = reinterpret_cast<uint32_t*>(ws + L.held) + v.index * L.held_words;
  for (int w = threadIdx.x; w < L.held_words; w += blockDim.x) held[w] = 0u;
  // warp 0's cover so far and its last lag, the same in every lane; warp-uniform as ptxas can see
  const bool walker = __shfl_sync(0xffffffffu, int(threadIdx.x) / 32, 0) == 0;
  const int lane = threadIdx.x & 31;
  int count = 0, last = 0;
  for (int end = v.hp->ns; end > 0; end -= kLagsChunk) {  // diagonals [begin, end), from the largest
    const int begin = max(0, end - kLagsChunk);
    __syncthreads();  // warp 0 is done with the previous chunk
    for (int i = begin + int(threadIdx.x); i < end; i += blockDim.x) chunk[i - begin] = diagonals[i];
    __syncthreads();
    if (!walker) continue;
    for (int i = end - begin - 1; i >= 0;) {  // lane l looks at chunk[i - l]
      const int j = i - lane, d = j >= 0 ? chunk[j] : 0;
      const unsigned below = __ballot_sync(0xffffffffu, j >= 0 && (count == 0 || d < last));
      if (below == 0u) {  // all 32 held by the last lag (or the chunk's start passed)
        i -= 32;
        continue;
      }
      const int first = __ffs(below) - 1, next = __shfl_sync(0xffffffffu, d, first);
      last = count > 0 && next > last - kBlock ? last - kBlock : next;
      if (lane == 0) lags[count] = last;
      ++count;
      i -= first + 1;
    }
  }
  if (threadIdx.x == 0) {
    reinterpret_cast<int*>(ws + L.lag_counts)[v.index] = count;
    cover_count = count;
  }
  __syncthreads();  // the lags, the count and the cleared bitmap are visible to the whole CTA
  // lag c holds u in [c-63, c]: bits u+63 in [c, c+63], at most three words
  const int64_t bits = p.seq_len + kBlock - 1;
  for (int i = threadIdx.x; i < cover_count; i += blockDim.x) {
    const int64_t lo = max(int64_t(lags[i]), int64_t(0)), hi = min(int64_t(lags[i]) + kBlock - 1, bits - 1);
    for (int64_t w = lo >> 5; w <= hi >> 5; ++w) {
      const int first = int(max(lo, w * 32) & 31), width = int(min(hi, w * 32 + 31) - max(lo, w * 32)) + 1;
      atomicOr(&held[w], (0xffffffffu >> (32 - width)) << first);
    }
  }
}

template <typename T, int D>
cudaError_t launch_typed(const LaunchParams& p, const void* q, const void* k, char* ws, cudaStream_t stream) {
  const int vs = p.layout.vs_heads;
  const dim3 heads(1, vs, p.batch);
  const int stats_smem = (row_groups(p) + 2) * Tile<D>::kBytes;  // the estimate's queries, two key tiles
  // and a tile's probabilities, and each estimate row's max and 1 / sum
  const int scores_smem = stats_smem + kBlock * kProbsStride * 4 + row_groups(p) * kBlock * int(sizeof(float2));
  cudaError_t err = cudaFuncSetAttribute(row_stats_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, stats_smem);
  if (err == cudaSuccess)
    err = cudaFuncSetAttribute(scores_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, scores_smem);
  if (err != cudaSuccess) return err;
  const T* qt = static_cast<const T*>(q);
  const T* kt = static_cast<const T*>(k);
  row_stats_kernel<T, D><<<dim3(p.layout.row_splits, vs, p.batch), kThreads, stats_smem, stream>>>(p, qt, kt, ws);
  row_reduce_kernel<<<heads, MINFER_MAX_LAST_Q, 0, stream>>>(p, ws);
  const int t_first = -((p.layout.max_lq - 1 + kBlock - 1) / kBlock);
  const int tiles = p.num_blocks - t_first;
  scores_kernel<T, D><<<dim3((tiles + kScoreTilesPerCta - 1) / kScoreTilesPerCta, vs, p.batch), kThreads,
                        scores_smem, stream>>>(p, qt, kt, ws, t_first);
  select_kernel<<<dim3(2, vs, p.batch), kSelectThreads, 0, stream>>>(p, ws);
  lags_kernel<<<heads, kLagsThreads, 0, stream>>>(p, ws);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_vertical_slash_index(const LaunchParams& p, minfer_dtype dtype, int head_dim, const void* q,
                                        const void* k, char* ws, cudaStream_t stream) {
  if (p.layout.vs_heads == 0) return cudaSuccess;
  if (dtype == MINFER_BFLOAT16)
    return head_dim == 64 ? launch_typed<__nv_bfloat16, 64>(p, q, k, ws, stream)
                          : launch_typed<__nv_bfloat16, 128>(p, q, k, ws, stream);
  return head_dim == 64 ? launch_typed<__half, 64>(p, q, k, ws, stream)
                        : launch_typed<__half, 128>(p, q, k, ws, stream);
}

}  // namespace minfer
