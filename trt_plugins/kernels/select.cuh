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

constexpr int kLoadsAhead = 8;  // score loads each thread keeps in flight

// The order keys of x[i0 + j * stride] for j < kLoadsAhead, all loads issued before any is used; 0 from `end` on.
__device__ __forceinline__ void load_keys(uint32_t (&keys)[kLoadsAhead], const float* x, int i0, int stride, int end) {
#pragma unroll
  for (int j = 0; j < kLoadsAhead; ++j) keys[j] = i0 + j * stride < end ? order_key(x[i0 + j * stride]) : 0u;
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
  const int lane = tid & 31;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = shifts[pass], buckets = 1 << widths[pass];
    for (int i = tid; i < buckets; i += threads) s.hist[i] = 0;
    __syncthreads();
    // kLoadsAhead loads in flight per thread (one at a time, each pass waited out an L2 round trip per key), and
    // the keys of a warp in its first key's bucket counted by one atomic: the scores crowd into a few buckets
    // (most are tiny probabilities), where an atomic per key serialised
    for (int base = first; base < n; base += threads * kLoadsAhead) {
      uint32_t keys[kLoadsAhead];
      load_keys(keys, x, base + tid, threads, n);
#pragma unroll
      for (int j = 0; j < kLoadsAhead; ++j) {
        const bool counted = base + j * threads + tid < n && (keys[j] & prefix_mask) == prefix;
        const uint32_t bucket = (keys[j] >> shift) & uint32_t(buckets - 1);
        const uint32_t active = __ballot_sync(0xffffffffu, counted);
        if (active == 0u) continue;  // the same for the whole warp
        const int leader = __ffs(active) - 1;
        const uint32_t common = __shfl_sync(0xffffffffu, bucket, leader);
        const uint32_t with_leader = __ballot_sync(0xffffffffu, counted && bucket == common);
        if (lane == leader) atomicAdd(&s.hist[common], __popc(with_leader));
        else if (counted && bucket != common) atomicAdd(&s.hist[bucket], 1);
      }
    }
    __syncthreads();
    // the bucket holding the remaining-th highest key: each thread sums `per` buckets from the top down, a scan
    // gives the count above them, and the thread whose buckets cross `remaining` finds it (bucket 0 at worst)
    const int per = (buckets + threads - 1) / threads, top = buckets - 1 - tid * per;
    int own = 0;
    for (int b = top; b > top - per && b >= 0; --b) own += s.hist[b];
    int total;
    int above = block_exclusive_scan(own, s.scan, &total);
    if (above < remaining && above + own >= remaining) {
      int bucket = top;
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
  for (int i0 = lo; i0 < hi; i0 += kLoadsAhead) {
    uint32_t keys[kLoadsAhead];
    load_keys(keys, x, i0, 1, hi);
#pragma unroll
    for (int j = 0; j < kLoadsAhead; ++j) {
      above += i0 + j < hi && keys[j] > prefix;
      equal += i0 + j < hi && keys[j] == prefix;
    }
  }
  int total;
  const int equal_before = block_exclusive_scan(equal, s.scan, &total);
  const int equal_taken = max(0, min(equal, remaining - equal_before));
  int position = block_exclusive_scan(above + equal_taken, s.scan, &total);
  int equal_seen = 0;
  for (int i0 = lo; i0 < hi; i0 += kLoadsAhead) {
    uint32_t keys[kLoadsAhead];
    load_keys(keys, x, i0, 1, hi);
#pragma unroll
    for (int j = 0; j < kLoadsAhead; ++j) {
      if (i0 + j >= hi) break;
      bool take = keys[j] > prefix;
      if (keys[j] == prefix) take = equal_seen++ < equal_taken;
      if (take) out[position++] = i0 + j;
    }
  }
}

}  // namespace minfer
