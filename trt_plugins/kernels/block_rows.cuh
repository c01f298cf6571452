// One query block's share of a consumer thread: its rows' output accumulators and online-softmax statistics,
// with the token mask and the softmax over a tile's logits in the mma/wgmma accumulator layout. Its own header
// so that bench/wgmma_rate.cu times the consumers' schedule with the kernel's own softmax.
#pragma once

#include <climits>
#include <cmath>

#include "params.h"
#include "tile_math.cuh"
#include "tile_source.cuh"

namespace minfer {

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
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;  // the warp in its warpgroup
    row0 = start_m + 16 * warp + (lane >> 2);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // The token rule on a tile's logits (key_of(j): the key of tile column j): causal, in range, A-shape window.
  // Branch-free (bitwise tests and a select per logit): written with && and ||, ptxas made 4 branches of each of
  // the 32 logits and reloaded the head's window per logit. 0 <= key <= min(row, S - 1) is one unsigned
  // compare; outside A-shape the window test always passes (row - key < INT_MAX for the keys that reach it).
  template <typename KeyOf>
  __device__ void mask(float (&s)[32], KeyOf key_of, const HeadParams& hp, int seq) const {
    const int t4 = threadIdx.x & 3;
    const bool a_shape = hp.kind == MINFER_A_SHAPE;
    const int sink = a_shape ? hp.sink : 0, local = a_shape ? hp.local : INT_MAX;
    const unsigned last[2] = {unsigned(min(row0, seq - 1)), unsigned(min(row0 + 8, seq - 1))};
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int r = (i >> 1) & 1, key = key_of(8 * (i >> 2) + 2 * t4 + (i & 1)), row = row0 + 8 * r;
      const bool ok = (unsigned(key) <= last[r]) & ((key < sink) | (row - key < local));
      s[i] = ok ? s[i] : -INFINITY;
    }
  }

  // mask() where a tile needs it for this block (`block` of the work item), then the online softmax over the first N
  // tiles' logits together (one running maximum and one rescale of o for all of them): s becomes the
  // probabilities against the new maximum, alpha each row's factor for o (applied by rescale()).
  template <int N, int M>
  __device__ void softmax_tiles(float (&s)[M][32], float (&alpha)[2], const TileDesc* tile, const int* const* tile_keys,
                                int block, const HeadParams& hp, int seq, float scale_log2) {
    static_assert(N >= 1 && N <= M, "softmax over the first N of M tiles");
#pragma unroll
    for (int t = 0; t < N; ++t) {
      if (!(tile[t].uses & (kMaskFirst << block))) continue;
      if (tile[t].start == kGathered)
        mask(s[t], [&](int j) { return tile_keys[t][j]; }, hp, seq);
      else
        mask(s[t], [&](int j) { return tile[t].start + j; }, hp, seq);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int t = 0; t < N; ++t)
#pragma unroll
        for (int n = 0; n < 8; ++n)
          tile_max = fmaxf(tile_max, fmaxf(s[t][4 * n + 2 * r], s[t][4 * n + 2 * r + 1]));
      tile_max = quad_max(tile_max) * scale_log2;
      const float new_max = fmaxf(row_max[r], tile_max);
      const float base = new_max == -INFINITY ? 0.f : new_max;  // a row with nothing visible yet stays 0
      alpha[r] = fast_exp2(row_max[r] - base);
      row_max[r] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < N; ++t)
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float e = fast_exp2(fmaf(s[t][4 * n + 2 * r + c], scale_log2, -base));
            s[t][4 * n + 2 * r + c] = e;
            sum += e;
          }
      row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
  }

  // o *= alpha. Once a row's maximum has settled (after the sinks, on LLM-like inputs after the first tile or
  // two) alpha is exactly 1, so a warp whose 16 rows all kept their maxima skips the multiplies.
  __device__ void rescale(const float (&alpha)[2]) {
    if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        o[4 * n + 2 * r] *= alpha[r];
        o[4 * n + 2 * r + 1] *= alpha[r];
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

}  // namespace minfer
