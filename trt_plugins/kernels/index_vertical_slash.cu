// Vertical-slash index building on the GPU (docs/op-spec.md steps 1-4), deterministic throughout:
//   row_stats   softmax max/sum of the last lq queries, per key split, then folded in split order;
//   scores      column and diagonal sums of the softmax; CTA t owns keys [64t, 64t+64) and the 64
//               diagonals whose first row lands there, so each score is one CTA's fixed-order sum;
//   select      forced sinks/local diagonals, then a radix top-k (ties to the lower index);
//   lags        the greedy chunk cover, then the held bitmap.
#include <cuda_runtime.h>

#include <cmath>

#include "kernels.h"
#include "select.cuh"
#include "tile_math.cuh"

namespace minfer {
namespace {

constexpr int kScoreTilesPerCta = 8;

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

template <typename T, int D>
__device__ __forceinline__ void load_last_queries(const LaunchParams& p, const T* q, const VsHead& v, uint32_t q_tiles) {
  const int64_t seq = p.seq_len;
  const T* q_head = q + (int64_t(v.b) * p.num_q_heads + v.h) * seq * D;
  for (int rg = 0; rg * kBlock < v.hp->lq; ++rg)
    load_row_range<T, D>(q_tiles + rg * Tile<D>::kBytes, q_head, seq - v.hp->lq + rg * kBlock, seq);
}

// Per key split: each estimate row's running max (base 2, scaled) and sum of exponentials.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const __grid_constant__ LaunchParams p, const T* q,
                                                             const T* k, char* ws) {
  extern __shared__ __align__(128) char smem[];
  const VsHead v = vs_head(p);
  const int64_t seq = p.seq_len;
  const int lq = v.hp->lq, groups = (lq + kBlock - 1) / kBlock;
  const uint32_t q_tiles = smem_addr(smem), k_tile = q_tiles + 4 * Tile<D>::kBytes;
  const T* k_head = k + (int64_t(v.b) * p.num_kv_heads + v.h / p.group) * seq * D;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
  load_last_queries<T, D>(p, q, v, q_tiles);
  cp_async_commit();

  float run_max[4][2], run_sum[4][2];
#pragma unroll
  for (int rg = 0; rg < 4; ++rg)
    for (int r = 0; r < 2; ++r) run_max[rg][r] = -INFINITY, run_sum[rg][r] = 0.f;
  const int64_t first = int64_t(blockIdx.x) * kRowSplitKeys, last = min(seq, first + kRowSplitKeys);
  for (int64_t key0 = first; key0 < last; key0 += kBlock) {
    load_row_range<T, D>(k_tile, k_head, key0, seq);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int rg = 0; rg < 4; ++rg) {
      if (rg >= groups) break;
      uint32_t qa[D / 16][4];
      load_q_fragments<D>(qa, q_tiles + rg * Tile<D>::kBytes);
      float s[32];
      qk_tile<T, D>(s, qa, k_tile);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = seq - lq + rg * kBlock + 16 * warp + g + 8 * r;
        float tile_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int64_t key = key0 + 8 * n + 2 * t4 + c;
            float x = s[4 * n + 2 * r + c] * p.scale_log2;
            if (key > row || key >= seq) x = -INFINITY;
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
    }
    __syncthreads();
  }
  float2* partials = reinterpret_cast<float2*>(ws + p.layout.row_partials) +
                     (v.index * p.layout.row_splits + blockIdx.x) * p.layout.max_lq;
#pragma unroll
  for (int rg = 0; rg < 4; ++rg)
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

// Column scores of keys [64t, 64t+64) and diagonal scores of d = S - lq - 64t - e, e in [0, 64).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) scores_kernel(const __grid_constant__ LaunchParams p, const T* q,
                                                          const T* k, char* ws, int t_first) {
  extern __shared__ __align__(128) char smem[];
  const VsHead v = vs_head(p);
  const int64_t seq = p.seq_len;
  const int lq = v.hp->lq, groups = (lq + kBlock - 1) / kBlock;
  const uint32_t q_tiles = smem_addr(smem), k_tile = q_tiles + 4 * Tile<D>::kBytes;
  float(*probs)[kBlock + 1] = reinterpret_cast<float(*)[kBlock + 1]>(smem + 5 * Tile<D>::kBytes);
  const T* k_head = k + (int64_t(v.b) * p.num_kv_heads + v.h / p.group) * seq * D;
  const float2* stats = reinterpret_cast<const float2*>(ws + p.layout.row_stats) + v.index * p.layout.max_lq;
  float* column_scores = reinterpret_cast<float*>(ws + p.layout.column_scores) + v.index * seq;
  float* diagonal_scores = reinterpret_cast<float*>(ws + p.layout.diagonal_scores) + v.index * seq;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3, tid = threadIdx.x;
  const int num_key_tiles = int((seq + kBlock - 1) / kBlock);
  const int t_head_first = -((lq - 1 + kBlock - 1) / kBlock);  // tiles below it own no diagonal of this head
  load_last_queries<T, D>(p, q, v, q_tiles);
  cp_async_commit();

  for (int i = 0; i < kScoreTilesPerCta; ++i) {
    const int t = t_first + int(blockIdx.x) * kScoreTilesPerCta + i;
    if (t >= num_key_tiles) break;
    if (t < t_head_first) continue;
    float acc = 0.f;  // threads 0..63: column 64t + tid; threads 64..127: diagonal of e = tid - 64
    const int last_tile = min(t + (62 + lq) / kBlock, num_key_tiles - 1);
    for (int kt = max(t, 0); kt <= last_tile; ++kt) {
      load_row_range<T, D>(k_tile, k_head, int64_t(kt) * kBlock, seq);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      for (int rg = 0; rg < groups; ++rg) {
        uint32_t qa[D / 16][4];
        load_q_fragments<D>(qa, q_tiles + rg * Tile<D>::kBytes);
        float s[32];
        qk_tile<T, D>(s, qa, k_tile);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int local_row = 16 * warp + g + 8 * r, est_row = rg * kBlock + local_row;
          const int64_t row = seq - lq + est_row;
          const float2 st = est_row < lq ? stats[est_row] : make_float2(0.f, 1.f);
          // one correctly rounded reciprocal per row: 16 IEEE divisions per row cost about 8 instructions
          // each (and a slow-path call), most of this loop
          const float inv_sum = __frcp_rn(st.y);
#pragma unroll
          for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int col = 8 * n + 2 * t4 + c;
              const int64_t key = int64_t(kt) * kBlock + col;
              const bool ok = est_row < lq && key <= row && key < seq;
              probs[local_row][col] = ok ? exp2f(s[4 * n + 2 * r + c] * p.scale_log2 - st.x) * inv_sum : 0.f;
            }
        }
        __syncthreads();
        if (tid < kBlock) {
          if (kt == t)
            for (int r = 0; r < kBlock; ++r) acc += probs[r][tid];
        } else {
          const int base = (t - kt) * kBlock + (tid - kBlock) + rg * kBlock;  // column of row 0
          for (int r = max(0, -base); r < kBlock && base + r < kBlock; ++r) acc += probs[r][base + r];
        }
        __syncthreads();
      }
    }
    if (tid < kBlock) {
      const int64_t key = int64_t(t) * kBlock + tid;
      if (key >= 0 && key < seq) column_scores[key] = acc;
    } else {
      const int64_t d = seq - lq - int64_t(t) * kBlock - (tid - kBlock);
      if (d >= 0 && d < seq) diagonal_scores[d] = acc;
    }
  }
  cp_async_wait<0>();
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

// The greedy chunk cover of the selected diagonals (oldest key first), then the held bitmap.
__global__ void lags_kernel(const __grid_constant__ LaunchParams p, char* ws) {
  const VsHead v = vs_head(p);
  const Layout& L = p.layout;
  const int* diagonals = reinterpret_cast<const int*>(ws + L.diagonals) + v.index * L.diagonals_stride;
  int* lags = reinterpret_cast<int*>(ws + L.lags) + v.index * L.diagonals_stride;
  int* lag_count = reinterpret_cast<int*>(ws + L.lag_counts) + v.index;
  uint32_t* held = reinterpret_cast<uint32_t*>(ws + L.held) + v.index * L.held_words;
  for (int w = threadIdx.x; w < L.held_words; w += blockDim.x) held[w] = 0u;
  if (threadIdx.x == 0) {
    int count = 0;
    for (int i = v.hp->ns - 1; i >= 0; --i) {
      const int d = diagonals[i];
      if (count > 0 && d >= lags[count - 1]) continue;
      lags[count] = count > 0 && d > lags[count - 1] - kBlock ? lags[count - 1] - kBlock : d;
      ++count;
    }
    *lag_count = count;
  }
  __syncthreads();
  const int count = *lag_count;
  const int64_t bits = p.seq_len + kBlock - 1;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {  // lag c holds u in [c-63, c]: bits u+63 in [c, c+63]
    const int64_t lo = max(int64_t(lags[i]), int64_t(0)), hi = min(int64_t(lags[i]) + kBlock - 1, bits - 1);
    for (int64_t bit = lo; bit <= hi; ++bit) atomicOr(&held[bit >> 5], 1u << (bit & 31));
  }
}

template <typename T, int D>
cudaError_t launch_typed(const LaunchParams& p, const void* q, const void* k, char* ws, cudaStream_t stream) {
  const int vs = p.layout.vs_heads;
  const dim3 heads(1, vs, p.batch);
  const int stats_smem = 5 * Tile<D>::kBytes;
  const int scores_smem = 5 * Tile<D>::kBytes + kBlock * (kBlock + 1) * 4;
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
  lags_kernel<<<heads, 256, 0, stream>>>(p, ws);
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
