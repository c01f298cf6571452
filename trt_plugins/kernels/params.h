// What every kernel of a launch receives by value: the layer's clipped per-head pattern and where
// each index lives in the workspace (docs/kernels.md, "Workspace layout").
#pragma once

#include <stdint.h>

#include "minfer/minfer_kernels.h"

namespace minfer {

constexpr int kBlock = MINFER_BLOCK;

// One query head, budgets already clipped to S as docs/op-spec.md says.
struct HeadParams {
  int32_t sink;   // a_shape: sink tokens; vertical_slash: forced columns min(sink, S)
  int32_t local;  // a_shape: window; vertical_slash: forced diagonals min(local, S)
  int32_t nv;     // vertical_slash: columns kept; block_sparse: blocks kept min(top_k, nb)
  int32_t ns;     // vertical_slash: diagonals kept
  int16_t lq;     // vertical_slash: estimate queries min(last_q, S)
  int16_t slot;   // rank among the layer's heads of the same kind (vertical_slash, block_sparse)
  int8_t kind;
  int8_t pad[3];
};

// Byte offsets into the workspace (-1: absent) and element strides; mirrors minfer_index_layout.
struct Layout {
  int64_t column_scores, diagonal_scores, columns, diagonals, lags, lag_counts, held;
  int64_t pooled_q, pooled_k, blocks, row_partials, row_stats;
  int32_t vs_heads, bs_heads, columns_stride, diagonals_stride, held_words, blocks_stride;
  int32_t row_splits;  // key splits of the estimate's softmax statistics
  int32_t max_lq;
  int64_t total_bytes;
};

struct LaunchParams {
  HeadParams heads[MINFER_MAX_HEADS];
  int16_t vs_head_of_slot[MINFER_MAX_HEADS];  // query head of each vertical-slash slot
  int16_t bs_head_of_slot[MINFER_MAX_HEADS];  // query head of each block-sparse slot
  Layout layout;
  int64_t seq_len;
  int32_t batch, num_q_heads, num_kv_heads, group, num_blocks;
  float scale;
  float scale_log2;  // scale * log2(e): the kernels' softmax works in base 2
};

static_assert(sizeof(LaunchParams) <= 4000, "kernel parameters must stay under 4 KB");

// Keys one split of the estimate's statistics pass covers.
constexpr int kRowSplitKeys = 4096;

}  // namespace minfer
