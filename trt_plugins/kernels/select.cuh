// Deterministic top-k selection for one CTA: the `keep` highest of x[first, n), ties to the lower index,
// written ascending (the reference's stable sort). Radix select over order-preserving integer keys,
// then one ordered compaction; integer counting only, so the result never depends on scheduling.
#pragma once

#include <stdint.h>

namespace minfer {

__device__ __forceinline__ uint32_t order_key(float x) {
  uint32_t bits = __float_as_uint(x == 0.f ? 0.f : x);  // -0 ranks with +0, as in torch.sort
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

// Exclusive prefix sum over the CTA (blockDim.x a multiple of 32, at most 1024); total in *total.
__device__ __forceinline__ int block_exclusive_scan(int value, int* scratch /* 33 ints */, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int inclusive = value;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int other = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += other;
  }
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? scratch[lane] : 0;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int other = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += other;
    }
    if (lane < warps) scratch[lane] = w;  // inclusive warp prefix
    if (lane == 31) scratch[32] = w;
  }
  __syncthreads();
  const int result = inclusive - value + (warp > 0 ? scratch[warp - 1] : 0);
  *total = scratch[32];
  __syncthreads();
  return result;
}

struct SelectScratch {
  int hist[2048];
  int scan[33];
  uint32_t threshold;
  int need_equal;
};

// Writes the chosen indices of x[first, n) (keep of them, 0 <= keep <= n - first) ascending to out.
__device__ inline void select_top(const float* x, int first, int n, int keep, int* out, SelectScratch& s) {
  const int tid = threadIdx.x, threads = blockDim.x;
  if (keep <= 0) return;
  if (keep >= n - first) {
    for (int i = first + tid; i < n; i += threads) out[i - first] = i;
    return;
  }
  uint32_t prefix = 0, prefix_mask = 0;
  int remaining = keep;  // how many of the keys matching prefix are still to take
  const int shifts[3] = {21, 10, 0}, widths[3] = {11, 11, 10};
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = shifts[pass], buckets = 1 << widths[pass];
    for (int i = tid; i < buckets; i += threads) s.hist[i] = 0;
    __syncthreads();
    for (int i = first + tid; i < n; i += threads) {
      const uint32_t key = order_key(x[i]);
      if ((key & prefix_mask) == prefix) atomicAdd(&s.hist[(key >> shift) & (buckets - 1)], 1);
    }
    __syncthreads();
    if (tid == 0) {
      int above = 0, bucket = buckets - 1;
      for (; bucket > 0 && above + s.hist[bucket] < remaining; --bucket) above += s.hist[bucket];
      s.threshold = uint32_t(bucket);
      s.need_equal = remaining - above;
    }
    __syncthreads();
    prefix |= s.threshold << shift;
    prefix_mask |= uint32_t(buckets - 1) << shift;
    remaining = s.need_equal;
    __syncthreads();
  }
  // prefix is the keep-th highest key; take all above it and the first `remaining` equal to it
  const int span = n - first, per = (span + threads - 1) / threads;
  const int lo = first + min(span, tid * per), hi = first + min(span, (tid + 1) * per);
  int above = 0, equal = 0;
  for (int i = lo; i < hi; ++i) {
    const uint32_t key = order_key(x[i]);
    above += key > prefix;
    equal += key == prefix;
  }
  int total;
  const int equal_before = block_exclusive_scan(equal, s.scan, &total);
  const int equal_taken = max(0, min(equal, remaining - equal_before));
  int position = block_exclusive_scan(above + equal_taken, s.scan, &total);
  int equal_seen = 0;
  for (int i = lo; i < hi; ++i) {
    const uint32_t key = order_key(x[i]);
    bool take = key > prefix;
    if (key == prefix) take = equal_seen++ < equal_taken;
    if (take) out[position++] = i;
  }
}

}  // namespace minfer
