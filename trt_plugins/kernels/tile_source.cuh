// Which 64-key tiles a query block computes: the op's chunks, then (vertical-slash) its gathered
// columns in groups of 64. The attention kernel and minfer_debug_tiles run this same code, so a
// test can compare the kernel's tiles with the reference's HeadIndex.chunk_starts/block_columns.
#pragma once

#include <stdint.h>

#include "params.h"

namespace minfer {

// Lives in shared memory; every thread calls next() together (it synchronises the CTA).
struct TileSource {
  int kind, n_chunks, next_chunk;
  int64_t start_m;
  int sink_blocks, first_local;  // a_shape: chunks are blocks [0, sink_blocks) then [first_local, m]
  const int* chunk_list;         // block_sparse: the query block's key blocks; vertical_slash: lags
  const int* cols;               // vertical_slash: selected columns
  const uint32_t* held;          // vertical_slash: held bitmap
  int col_pos, col_end, pending_n;
  int warp_count[2];
  int pending[128];

  // thread 0 only; the caller synchronises before next()
  __device__ void init(const LaunchParams& p, const char* ws, int b, int h, int m) {
    const HeadParams& hp = p.heads[h];
    kind = hp.kind;
    start_m = int64_t(m) * kBlock;
    next_chunk = 0;
    col_pos = col_end = pending_n = 0;
    if (kind == MINFER_DENSE) {
      n_chunks = m + 1;
    } else if (kind == MINFER_A_SHAPE) {
      const int sb = min(int((int64_t(hp.sink) + kBlock - 1) / kBlock), m + 1);
      const int fl = int(max(start_m - hp.local + 1, int64_t(0)) / kBlock);
      sink_blocks = fl <= sb ? m + 1 : sb;
      first_local = fl <= sb ? m + 1 : fl;
      n_chunks = sink_blocks + (m + 1 - first_local);
    } else if (kind == MINFER_BLOCK_SPARSE) {
      const Layout& L = p.layout;
      chunk_list = reinterpret_cast<const int*>(ws + L.blocks) +
                   ((int64_t(b) * L.bs_heads + hp.slot) * p.num_blocks + m) * L.blocks_stride;
      n_chunks = min(hp.nv, m + 1);
    } else {
      const Layout& L = p.layout;
      const int64_t head = int64_t(b) * L.vs_heads + hp.slot;
      const int* lags = reinterpret_cast<const int*>(ws + L.lags) + head * L.diagonals_stride;
      const int nlags = reinterpret_cast<const int*>(ws + L.lag_counts)[head];
      int lo = 0, hi = nlags;  // first lag < start_m + 64 (lags descend)
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (lags[mid] >= start_m + kBlock) lo = mid + 1; else hi = mid;
      }
      chunk_list = lags + lo;
      n_chunks = nlags - lo;
      cols = reinterpret_cast<const int*>(ws + L.columns) + head * L.columns_stride;
      held = reinterpret_cast<const uint32_t*>(ws + L.held) + head * L.held_words;
      lo = 0, hi = hp.nv;  // columns < start_m + 64 (columns ascend)
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (cols[mid] < start_m + kBlock) lo = mid + 1; else hi = mid;
      }
      col_end = lo;
    }
  }

  __device__ int64_t chunk_start(int i) const {
    switch (kind) {
      case MINFER_DENSE: return int64_t(i) * kBlock;
      case MINFER_A_SHAPE: return int64_t(i < sink_blocks ? i : first_local + i - sink_blocks) * kBlock;
      case MINFER_BLOCK_SPARSE: return int64_t(chunk_list[i]) * kBlock;
      default: return start_m - chunk_list[i];
    }
  }

  // Writes the next tile's 64 key positions to keys[] and whether it needs the token mask; false at the end.
  __device__ bool next(const LaunchParams& p, int* keys, int* needs_mask) {
    const int tid = threadIdx.x;
    const int i = next_chunk;
    if (i < n_chunks) {
      const int64_t start = chunk_start(i);
      __syncthreads();
      if (tid < kBlock) keys[tid] = int(start + tid);
      if (tid == 0) {
        next_chunk = i + 1;
        *needs_mask = kind == MINFER_A_SHAPE || start < 0 || start + kBlock - 1 > start_m ||
                      start + kBlock - 1 >= p.seq_len;
      }
      __syncthreads();
      return true;
    }
    if (kind != MINFER_VERTICAL_SLASH) return false;
    // gather the next 64 columns that no chunk of this query block holds
    while (true) {
      const int pend = pending_n, pos = col_pos, end = col_end;
      __syncthreads();
      if (pend >= kBlock || pos >= end) break;
      int v = -1;
      bool keep = false;
      if (tid < kBlock && pos + tid < end) {
        v = cols[pos + tid];
        const int64_t u = start_m - v + kBlock - 1;
        keep = !((held[u >> 5] >> (u & 31)) & 1u);
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, keep);
      const int lane = tid & 31, warp = tid >> 5;
      if (warp < 2 && lane == 0) warp_count[warp] = __popc(ballot);
      __syncthreads();
      if (keep) pending[pend + (warp == 1 ? warp_count[0] : 0) + __popc(ballot & ((1u << lane) - 1u))] = v;
      if (tid == 0) {
        pending_n = pend + warp_count[0] + warp_count[1];
        col_pos = pos + kBlock;
      }
      __syncthreads();
    }
    const int pend = pending_n;
    if (pend == 0) return false;
    if (tid < kBlock) keys[tid] = tid < pend ? pending[tid] : -1;
    const int rest = max(pend - kBlock, 0);
    const int carry = tid < rest ? pending[kBlock + tid] : 0;
    __syncthreads();
    if (tid < rest) pending[tid] = carry;
    if (tid == 0) {
      pending_n = rest;
      *needs_mask = 1;
    }
    __syncthreads();
    return true;
  }
};

// Work item x of the attention grid. KV head outermost, then query blocks from the last (the heaviest) to the
// first, then the batch and the query heads of the KV group: the CTAs in flight then share one KV head and
// neighbouring query blocks, whose chunks overlap (dense blocks read the same prefix, a lag c of block m is
// the lag c + 64 of block m + 1), so K/V tiles come from L2. Query block outermost left L2 hits at 9%
// (ncu, 128K i.i.d.) and the kernel bound by HBM bandwidth.
__device__ __forceinline__ void decode_work_item(const LaunchParams& p, int64_t x, int& b, int& h, int& m) {
  const int64_t per_block = int64_t(p.batch) * p.group, per_kv_head = per_block * p.num_blocks;
  const int kvh = int(x / per_kv_head);
  const int64_t r = x % per_kv_head;
  m = p.num_blocks - 1 - int(r / per_block);
  const int64_t rr = r % per_block;
  b = int(rr / p.group);
  h = kvh * p.group + int(rr % p.group);
}

}  // namespace minfer
