// The C ABI's workspace, launch and inspection entry points (validation lives in validate.cpp).
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "kernels.h"
#include "status.h"

namespace minfer {
namespace {

constexpr int64_t kAlign = 256;
constexpr int64_t kMaxBlockSparseBlocks = 32768;  // the block-sparse selection keeps a row of scores in shared memory

int64_t align_up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Clipped per-head parameters, slots and the workspace layout; pattern and problem already validated.
minfer_status plan(const minfer_pattern& pat, const minfer_problem& prob, LaunchParams& p) {
  p = LaunchParams{};
  const int64_t seq = prob.seq_len, nb = (seq + kBlock - 1) / kBlock;
  const int heads = int(prob.num_q_heads);
  p.seq_len = seq;
  p.batch = int(prob.batch);
  p.num_q_heads = heads;
  p.num_kv_heads = int(prob.num_kv_heads);
  p.group = heads / p.num_kv_heads;
  p.num_blocks = int(nb);
  p.scale = pat.scale;
  p.scale_log2 = pat.scale * 1.4426950408889634f;
  Layout& L = p.layout;
  int max_nv = 0, max_ns = 0, max_width = 0, max_lq = 0;
  for (int h = 0; h < heads; ++h) {
    HeadParams& hp = p.heads[h];
    hp.kind = int8_t(pat.kind[h]);
    if (hp.kind == MINFER_A_SHAPE) {
      hp.sink = pat.sink[h];
      hp.local = pat.local[h];
    } else if (hp.kind == MINFER_VERTICAL_SLASH) {
      hp.sink = int32_t(std::min<int64_t>(pat.sink[h], seq));
      hp.local = int32_t(std::min<int64_t>(pat.local[h], seq));
      hp.nv = int32_t(std::min<int64_t>(seq, std::max(pat.vertical_size[h], pat.sink[h])));
      hp.ns = int32_t(std::min<int64_t>(seq, std::max(pat.slash_size[h], pat.local[h])));
      hp.lq = int16_t(std::min<int64_t>(pat.last_q[h], seq));
      hp.slot = int16_t(L.vs_heads);
      p.vs_head_of_slot[L.vs_heads++] = int16_t(h);
      max_nv = std::max(max_nv, hp.nv);
      max_ns = std::max(max_ns, hp.ns);
      max_lq = std::max(max_lq, int(hp.lq));
    } else if (hp.kind == MINFER_BLOCK_SPARSE) {
      hp.nv = int32_t(std::min<int64_t>(pat.top_k[h], nb));
      hp.slot = int16_t(L.bs_heads);
      p.bs_head_of_slot[L.bs_heads++] = int16_t(h);
      max_width = std::max(max_width, hp.nv);
    }
  }
  if (L.bs_heads > 0 && nb > kMaxBlockSparseBlocks)
    return fail(MINFER_ERR_INVALID_PROBLEM, "block-sparse heads take at most " +
                                                std::to_string(kMaxBlockSparseBlocks * kBlock) + " tokens, got S=" +
                                                std::to_string(seq));
  if (nb * prob.batch * heads > 0x7fffffffLL || prob.batch > 65535)
    return fail(MINFER_ERR_INVALID_PROBLEM, "batch x query heads x query blocks must stay below 2^31 (and batch <= "
                                            "65535), got B=" + std::to_string(prob.batch));
  const int64_t B = prob.batch, vs = L.vs_heads, bs = L.bs_heads;
  L.columns_stride = max_nv;
  L.diagonals_stride = max_ns;
  L.held_words = int32_t((seq + kBlock - 1 + 31) / 32);
  L.blocks_stride = max_width;
  L.row_splits = int32_t((seq + kRowSplitKeys - 1) / kRowSplitKeys);
  L.max_lq = max_lq;
  int64_t offset = 0;
  auto take = [&](int64_t count, int64_t elem_bytes) -> int64_t {
    if (count == 0) return -1;
    const int64_t at = offset;
    offset = align_up(offset + count * elem_bytes);
    return at;
  };
  L.column_scores = take(B * vs * seq, 4);
  L.diagonal_scores = take(B * vs * seq, 4);
  L.columns = take(B * vs * max_nv, 4);
  L.diagonals = take(B * vs * max_ns, 4);
  L.lags = take(B * vs * max_ns, 4);
  L.lag_counts = take(B * vs, 4);
  L.held = take(B * vs * L.held_words, 4);
  L.row_partials = take(B * vs * L.row_splits * max_lq, 8);
  L.row_stats = take(B * vs * max_lq, 8);
  L.pooled_q = take(B * bs * nb * prob.head_dim, 4);
  L.pooled_k = bs > 0 ? take(B * prob.num_kv_heads * nb * prob.head_dim, 4) : -1;
  L.blocks = take(B * bs * nb * max_width, 4);
  L.total_bytes = offset;
  return ok();
}

minfer_status plan_checked(const minfer_pattern* pattern, const minfer_problem* problem, LaunchParams& p) {
  const minfer_status status = minfer_validate_problem(pattern, problem);
  if (status != MINFER_OK) return status;
  return plan(*pattern, *problem, p);
}

minfer_status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ok();
  return fail(MINFER_ERR_CUDA, std::string(what) + ": " + cudaGetErrorString(err));
}

minfer_status check_workspace(const LaunchParams& p, const void* workspace, size_t workspace_bytes) {
  const int64_t need = p.layout.total_bytes;
  if (int64_t(workspace_bytes) < need)
    return fail(MINFER_ERR_WORKSPACE, "workspace of " + std::to_string(workspace_bytes) + " bytes is smaller than the " +
                                          std::to_string(need) + " bytes minfer_workspace_size asks for");
  if (need > 0 && workspace == nullptr) return fail(MINFER_ERR_WORKSPACE, "workspace is NULL");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return fail(MINFER_ERR_WORKSPACE, "workspace must be 16-byte aligned");
  return ok();
}

// Validation, plan and workspace check shared by every call that runs kernels on a workspace.
minfer_status plan_with_workspace(const minfer_pattern* pattern, const minfer_problem* problem,
                                  const void* workspace, size_t workspace_bytes, LaunchParams& p) {
  const minfer_status status = plan_checked(pattern, problem, p);
  if (status != MINFER_OK) return status;
  return check_workspace(p, workspace, workspace_bytes);
}

}  // namespace
}  // namespace minfer

using minfer::fail;

extern "C" minfer_status minfer_workspace_size(const minfer_pattern* pattern, const minfer_problem* problem,
                                               size_t* bytes) {
  minfer::LaunchParams p;
  const minfer_status status = minfer::plan_checked(pattern, problem, p);
  if (status != MINFER_OK) return status;
  if (bytes == nullptr) return fail(MINFER_ERR_INVALID_PROBLEM, "bytes is NULL");
  *bytes = size_t(p.layout.total_bytes);
  return minfer::ok();
}

extern "C" minfer_status minfer_index_layout_of(const minfer_pattern* pattern, const minfer_problem* problem,
                                                minfer_index_layout* layout) {
  minfer::LaunchParams p;
  const minfer_status status = minfer::plan_checked(pattern, problem, p);
  if (status != MINFER_OK) return status;
  if (layout == nullptr) return fail(MINFER_ERR_INVALID_PROBLEM, "layout is NULL");
  const minfer::Layout& L = p.layout;
  *layout = minfer_index_layout{L.vs_heads,      L.bs_heads,       p.num_blocks,      L.columns_stride,
                                L.diagonals_stride, L.held_words,  L.blocks_stride,   L.column_scores,
                                L.diagonal_scores, L.columns,      L.diagonals,       L.lags,
                                L.lag_counts,    L.held,           L.pooled_q,        L.pooled_k,
                                L.blocks,        L.total_bytes};
  return minfer::ok();
}

extern "C" minfer_status minfer_launch(const minfer_pattern* pattern, const minfer_problem* problem, const void* q,
                                       const void* k, const void* v, void* out, void* workspace,
                                       size_t workspace_bytes, void* stream) {
  minfer::LaunchParams p;
  minfer_status status = minfer::plan_checked(pattern, problem, p);
  if (status != MINFER_OK) return status;
  const void* tensors[] = {q, k, v, out};
  const char* names[] = {"q", "k", "v", "out"};
  for (int i = 0; i < 4; ++i) {
    if (tensors[i] == nullptr) return fail(MINFER_ERR_INVALID_PROBLEM, std::string(names[i]) + " is NULL");
    if (reinterpret_cast<uintptr_t>(tensors[i]) % 16 != 0)
      return fail(MINFER_ERR_INVALID_PROBLEM, std::string(names[i]) + " must be 16-byte aligned");
  }
  status = minfer::check_workspace(p, workspace, workspace_bytes);
  if (status != MINFER_OK) return status;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  char* ws = static_cast<char*>(workspace);
  const int head_dim = int(problem->head_dim);
  status = minfer::cuda_status(minfer::launch_vertical_slash_index(p, problem->dtype, head_dim, q, k, ws, s),
                               "vertical-slash index kernels");
  if (status != MINFER_OK) return status;
  status = minfer::cuda_status(minfer::launch_block_sparse_index(p, problem->dtype, head_dim, q, k, ws, s),
                               "block-sparse index kernels");
  if (status != MINFER_OK) return status;
  return minfer::cuda_status(minfer::launch_attention(p, problem->dtype, head_dim, q, k, v, out, ws, s),
                             "attention kernel");
}

extern "C" minfer_status minfer_debug_tiles(const minfer_pattern* pattern, const minfer_problem* problem,
                                            const void* workspace, size_t workspace_bytes, const int32_t* items,
                                            int64_t num_items, int32_t max_tiles, int32_t* tile_keys,
                                            int32_t* tile_counts, void* stream) {
  minfer::LaunchParams p;
  const minfer_status status = minfer::plan_with_workspace(pattern, problem, workspace, workspace_bytes, p);
  if (status != MINFER_OK) return status;
  return minfer::cuda_status(
      minfer::launch_debug_tiles(p, static_cast<const char*>(workspace), items, num_items, max_tiles, tile_keys,
                                 tile_counts, static_cast<cudaStream_t>(stream)),
      "debug tiles kernel");
}

extern "C" minfer_status minfer_debug_block_scores(const minfer_pattern* pattern, const minfer_problem* problem,
                                                   const void* workspace, size_t workspace_bytes, float* scores,
                                                   void* stream) {
  minfer::LaunchParams p;
  const minfer_status status = minfer::plan_with_workspace(pattern, problem, workspace, workspace_bytes, p);
  if (status != MINFER_OK) return status;
  return minfer::cuda_status(minfer::launch_block_scores(p, int(problem->head_dim),
                                                         static_cast<const char*>(workspace), scores,
                                                         static_cast<cudaStream_t>(stream)),
                             "block scores kernel");
}

extern "C" minfer_status minfer_kernel_versions(int32_t* ptx_version, int32_t* binary_version) {
  int ptx = 0, binary = 0;
  const minfer_status status = minfer::cuda_status(minfer::attention_kernel_versions(&ptx, &binary),
                                                   "cudaFuncGetAttributes");
  if (status != MINFER_OK) return status;
  *ptx_version = ptx;
  *binary_version = binary;
  return minfer::ok();
}
