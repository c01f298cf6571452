// The attention grid's order: which work item (batch, query head, query blocks) each CTA takes. Host and device
// code, so that bench/grid_order_check.cu can check on the CPU that the grid covers every item exactly once.
#pragma once

#include <stdint.h>

#include "params.h"

namespace minfer {

// Work items per (batch, query head): its query blocks in groups of `blocks`. The launch sizes the grid by it.
__host__ __device__ __forceinline__ int work_items_per_head(const LaunchParams& p, int blocks) {
  return (p.num_blocks + blocks - 1) / blocks;
}

// Work item x of the attention grid: query blocks first .. first + blocks - 1 of one query head. KV head
// outermost, then the batch and the query heads of the KV group, then items from the last (the heaviest) to the
// first. The CTAs in flight share one KV head and neighbouring query blocks (query block outermost left L2 hits at
// 9%, ncu, 128K i.i.d.), and since v19 they are one query head's, of like cost: they start together and walk their
// keys in step, so at each moment they read the same few key tiles, from L2. With the group's heads in turns (v4 to
// v18) heavy and light heads' CTAs mixed, started at scattered times and read the whole KV head at once (v19: 1.32x
// at 1M i.i.d., 1.10x at 1M LLM-like; docs/kernels.md).
__host__ __device__ __forceinline__ void decode_work_item(const LaunchParams& p, int64_t x, int blocks, int& b,
                                                          int& h, int& first) {
  const int items = work_items_per_head(p, blocks);
  const int64_t per_kv_head = int64_t(p.batch) * p.group * items;
  const int kvh = int(x / per_kv_head);
  const int64_t r = x % per_kv_head;
  const int64_t head_in_kv = r / items;  // batch, then query head of the group
  first = (items - 1 - int(r % items)) * blocks;
  b = int(head_in_kv / p.group);
  h = kvh * p.group + int(head_in_kv % p.group);
}

// How many query blocks the work item whose first block is m0 holds: `blocks`, fewer at the end of the head.
__device__ __forceinline__ int item_block_count(const LaunchParams& p, int m0, int blocks) {
  return min(blocks, int(p.num_blocks) - m0);
}

}  // namespace minfer
