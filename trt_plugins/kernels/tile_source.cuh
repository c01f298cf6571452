// Which 64-key tiles a query block computes: the op's chunks, then (vertical-slash) its gathered
// columns in groups of 64. The attention kernel runs a work item's blocks' sources merged (ItemSource,
// ItemSchedule), and minfer_debug_tiles walks the same item and keeps one block's tiles, so a test can compare
// the tiles each block computes with the reference's HeadIndex.chunk_starts/block_columns.
#pragma once

#include <stdint.h>

#include "params.h"
#include "tile_math.cuh"

namespace minfer {

// The threads that run a tile schedule together (the column gather synchronises them): the whole CTA, or on
// sm_90a the producer warpgroup alone (the CTA's last), on named barrier 1, so the consumers never wait on it.
struct CtaGroup {
  __device__ int tid() const { return threadIdx.x; }
  __device__ void sync() const { __syncthreads(); }
};
struct ProducerGroup {
  __device__ int tid() const { return int(threadIdx.x) % kThreads; }
  __device__ void sync() const { asm volatile("bar.sync 1, %0;\n" ::"n"(kThreads) : "memory"); }
};

// The pattern kind all blocks of a work item share (one head), where the caller fixes it at compile time: the
// sm_90a producer runs one tile loop per kind, so its per-tile path has no switch on the kind per block (v16's
// chunk selection: 190 SASS instructions, v17's vertical-slash loop 129). kAnyKind reads it from the walk.
constexpr int kAnyKind = -1;

// What a query block's chunks are: ItemSchedule copies it into every thread's registers, since read from the
// TileSource in shared memory it cost the sm_90a producer a chain of shared loads per tile (v13's profile).
struct ChunkWalk {
  int kind, n_chunks;
  int start_m;  // the block's first query (S <= 2^30)
  union {        // one or the other by kind: two registers fewer where registers are spent (sm_80)
    struct {
      int sink_blocks, first_local;  // chunks are blocks [0, sink_blocks) then [first_local, m]
    } a_shape;
    const int* chunk_list;  // block_sparse: the query block's key blocks; vertical_slash: lags
  };

  // First key of chunk i, or kNoChunk past the last; chunk starts ascend. (Keys fit in int: S <= 2^30.) A block
  // missing from its item has no chunks, whatever kKind says.
  static constexpr int kNoChunk = INT32_MAX;
  template <int kKind = kAnyKind>
  __device__ int chunk_start(int i) const {
    if (i >= n_chunks) return kNoChunk;
    switch (kKind == kAnyKind ? kind : kKind) {
      case MINFER_DENSE: return i * kBlock;
      case MINFER_A_SHAPE:
        return (i < a_shape.sink_blocks ? i : a_shape.first_local + i - a_shape.sink_blocks) * kBlock;
      case MINFER_BLOCK_SPARSE: return chunk_list[i] * kBlock;
      default: return start_m - chunk_list[i];
    }
  }

  // Whether the chunk starting at `start` can hold a key this block must mask (the token rule).
  template <int kKind = kAnyKind>
  __device__ bool chunk_needs_mask(int start, int seq_len) const {
    return (kKind == kAnyKind ? kind : kKind) == MINFER_A_SHAPE || start < 0 || start + kBlock - 1 > start_m ||
           start + kBlock - 1 >= seq_len;
  }
};

// One query block's tiles. Lives in shared memory: thread 0 initialises it, then it is read-only except for
// the column gather, which the whole CTA runs together (next_columns synchronises). Chunks are walked by an
// ItemSchedule in every thread's registers, so a chunk tile costs no barrier and no shared-memory keys.
struct TileSource {
  ChunkWalk walk;
  const int* cols;               // vertical_slash: selected columns
  const uint32_t* held;          // vertical_slash: held bitmap
  int col_pos, col_end, pending_n;
  int warp_count[2];
  int pending[128];

  // thread 0 only; m < 0 gives a source without tiles (a block missing from the head's last work item)
  __device__ void init(const LaunchParams& p, const char* ws, int b, int h, int m) {
    const HeadParams& hp = p.heads[h];
    int &kind = walk.kind, &n_chunks = walk.n_chunks;
    const int64_t start_m = int64_t(m) * kBlock;
    kind = m < 0 ? MINFER_DENSE : hp.kind;
    walk.start_m = int(start_m);
    col_pos = col_end = pending_n = 0;
    if (m < 0) {
      n_chunks = 0;
    } else if (kind == MINFER_DENSE) {
      n_chunks = m + 1;
    } else if (kind == MINFER_A_SHAPE) {
      const int sb = min(int((int64_t(hp.sink) + kBlock - 1) / kBlock), m + 1);
      const int fl = int(max(start_m - hp.local + 1, int64_t(0)) / kBlock);
      walk.a_shape.sink_blocks = fl <= sb ? m + 1 : sb;
      walk.a_shape.first_local = fl <= sb ? m + 1 : fl;
      n_chunks = walk.a_shape.sink_blocks + (m + 1 - walk.a_shape.first_local);
    } else if (kind == MINFER_BLOCK_SPARSE) {
      const Layout& L = p.layout;
      walk.chunk_list = reinterpret_cast<const int*>(ws + L.blocks) +
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
      walk.chunk_list = lags + lo;
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

  // Writes the next 64 gathered columns that no chunk of this block holds to keys[] (-1 padded); false when
  // none are left. Column tiles always take the token mask. Run by a group of at least 64 threads together.
  template <typename Group>
  __device__ bool next_columns(int* keys, Group group) {
    if (walk.kind != MINFER_VERTICAL_SLASH) return false;
    const int tid = group.tid();
    while (true) {
      const int pend = pending_n, pos = col_pos, end = col_end;
      group.sync();
      if (pend >= kBlock || pos >= end) break;
      int v = -1;
      bool keep = false;
      if (tid < kBlock && pos + tid < end) {
        v = cols[pos + tid];
        const int u = walk.start_m - v + kBlock - 1;
        keep = !((held[u >> 5] >> (u & 31)) & 1u);
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, keep);
      const int lane = tid & 31, warp = tid >> 5;
      if (warp < 2 && lane == 0) warp_count[warp] = __popc(ballot);
      group.sync();
      if (keep) pending[pend + (warp == 1 ? warp_count[0] : 0) + __popc(ballot & ((1u << lane) - 1u))] = v;
      if (tid == 0) {
        pending_n = pend + warp_count[0] + warp_count[1];
        col_pos = pos + kBlock;
      }
      group.sync();
    }
    const int pend = pending_n;
    if (pend == 0) return false;
    if (tid < kBlock) keys[tid] = tid < pend ? pending[tid] : -1;
    const int rest = max(pend - kBlock, 0);
    const int carry = tid < rest ? pending[kBlock + tid] : 0;
    group.sync();
    if (tid < rest) pending[tid] = carry;
    if (tid == 0) pending_n = rest;
    group.sync();
    return true;
  }
};

// The consecutive query blocks of a work item (kBlocks of them; the last item of a head may hold fewer).
template <int kBlocks>
struct ItemSource {
  TileSource block[kBlocks];

  // thread 0 only; blocks m0 + count.. are absent (sources without tiles)
  __device__ void init(const LaunchParams& p, const char* ws, int b, int h, int m0, int count) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) block[i].init(p, ws, b, h, i < count ? m0 + i : -1);
  }
};

// What ItemSchedule::next says of a tile: which of the item's blocks compute it (bit i of uses: block i), which
// of them mask it (bit kMaskFirst << i), and its keys: 64 consecutive from `start`, or, for a column tile
// (start == kGathered), keys[] in shared memory.
constexpr int kMaxItemBlocks = 4;
constexpr int kUsesFirst = 1, kMaskFirst = 1 << kMaxItemBlocks;
constexpr int kGathered = INT32_MIN;
struct TileDesc {
  int uses;  // 0: no tile left
  int start;
};

// The order an item's tiles come in, each block's own tiles in its own order: first the chunks of all,
// merged by first key so that a chunk several blocks hold is loaded once (block m + 1's lag c + 64 is block
// m's lag c; dense and A-shape prefixes are shared outright), then the blocks' gathered columns in turn,
// so that on sm_90a no block's consumer waits through another's. Every thread holds the same cursor.
// Each block's next kAhead chunk starts are read ahead into registers: a vertical-slash or block-sparse start
// is a load from the workspace, and with one in flight per block a producer that has fallen behind its
// consumers waits out an L2 round trip per tile (kAhead = 1 on sm_80, whose registers are spent). kKind: the
// blocks' kind where the caller fixes it (ChunkWalk), kAnyKind where the walk says.
template <int kBlocks, int kAhead = 1, int kKind = kAnyKind>
struct ItemSchedule {
  static_assert(kBlocks >= 1 && kBlocks <= kMaxItemBlocks, "uses and mask bits per block");
  ChunkWalk walk[kBlocks];     // each block's chunks, in registers
  int idx[kBlocks];            // each block's next chunk to read ahead
  int ahead[kBlocks][kAhead];  // starts of each block's next kAhead chunks, kNoChunk past the last
  int turn;                    // the first block that may give the next column tile
  int columns_left;            // bit i: block i may still have column tiles

  __device__ explicit ItemSchedule(const ItemSource<kBlocks>& src)
      : turn(0), columns_left(kKind == kAnyKind || kKind == MINFER_VERTICAL_SLASH ? (1 << kBlocks) - 1 : 0) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) {
      walk[i] = src.block[i].walk;
      idx[i] = kAhead;
#pragma unroll
      for (int j = 0; j < kAhead; ++j) ahead[i][j] = walk[i].template chunk_start<kKind>(j);
    }
  }

  // The first key of the next chunk tile: the lowest next start of any block (kNoChunk once all are done).
  __device__ int next_chunk_start() const {
    int start = ahead[0][0];
#pragma unroll
    for (int i = 1; i < kBlocks; ++i) start = min(start, ahead[i][0]);
    return start;
  }

  // Whether a chunk tile is still to come (then next_chunk gives it; the columns follow).
  __device__ bool chunks_left() const { return next_chunk_start() != ChunkWalk::kNoChunk; }

  // The next chunk tile, while chunks_left(): needs no other thread.
  __device__ TileDesc next_chunk(int64_t seq_len) {
    const int start = next_chunk_start();
    int uses = 0;
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) {
      if (ahead[i][0] != start) continue;
      uses |= (kUsesFirst << i) | (walk[i].template chunk_needs_mask<kKind>(start, int(seq_len)) ? kMaskFirst << i : 0);
#pragma unroll
      for (int j = 0; j + 1 < kAhead; ++j) ahead[i][j] = ahead[i][j + 1];
      ahead[i][kAhead - 1] = walk[i].template chunk_start<kKind>(idx[i]++);
    }
    return {uses, start};
  }

  // The next column tile, or no tile: called by every thread of the group together (the gather synchronises
  // it), whatever the chunks' state.
  template <typename Group = CtaGroup>
  __device__ TileDesc next_column(ItemSource<kBlocks>& src, int* keys, Group group = {}) {
    while (columns_left) {
      int i = turn;  // the next block from `turn` on that may still have columns
      while (!((columns_left >> i) & 1)) i = i + 1 == kBlocks ? 0 : i + 1;
      turn = i + 1 == kBlocks ? 0 : i + 1;
      if (src.block[i].next_columns(keys, group)) return {(kUsesFirst | kMaskFirst) << i, kGathered};
      columns_left &= ~(1 << i);
    }
    return {0, 0};
  }

  // The next tile of the item: chunks, then columns, then none. Called by every thread of the group together.
  template <typename Group = CtaGroup>
  __device__ TileDesc next(ItemSource<kBlocks>& src, int64_t seq_len, int* keys, Group group = {}) {
    return chunks_left() ? next_chunk(seq_len) : next_column(src, keys, group);
  }
};

}  // namespace minfer
