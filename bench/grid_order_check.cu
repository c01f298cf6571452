// CPU check of the attention grid's order (grid_order.cuh) on random layers: every CTA index decodes to a work
// item of the KV head it belongs to, every (batch, query head, item) comes exactly once, and each query head's
// items come in one run of consecutive CTAs, heaviest (last) first.
// Run: nvcc -std=c++17 -Itrt_plugins/include -Itrt_plugins/kernels bench/grid_order_check.cu -o /tmp/check && /tmp/check
#include <cstdio>
#include <random>
#include <vector>

#include "grid_order.cuh"

constexpr int kLayers = 3000;

int main() {
  std::mt19937 rng(7);
  auto pick = [&](int n) { return int(rng() % unsigned(n)); };
  long ctas = 0, bad = 0;
  for (int trial = 0; trial < kLayers; ++trial) {
    minfer::LaunchParams p{};
    p.num_kv_heads = 1 + pick(8);
    p.group = 1 + pick(trial % 10 == 0 ? 16 : 8);
    p.num_q_heads = p.num_kv_heads * p.group;
    p.batch = 1 + pick(3);
    p.num_blocks = 1 + pick(40);
    const int blocks = 2 + pick(2), items = minfer::work_items_per_head(p, blocks);
    const int64_t heads = int64_t(p.batch) * p.num_q_heads, n = heads * items;
    std::vector<int> seen(size_t(n), 0);
    int prev_b = -1, prev_h = -1, prev_first = 0, runs = 0;
    for (int64_t x = 0; x < n; ++x, ++ctas) {
      int b, h, first;
      minfer::decode_work_item(p, x, blocks, b, h, first);
      const bool in_range = b >= 0 && b < p.batch && h >= 0 && h < p.num_q_heads && first >= 0 &&
                            first % blocks == 0 && first / blocks < items;
      if (!in_range || h / p.group != x / (int64_t(p.batch) * p.group * items)) {
        ++bad;
        continue;
      }
      ++seen[(size_t(b) * p.num_q_heads + h) * items + first / blocks];
      if (b != prev_b || h != prev_h) {  // a new head's run starts at its heaviest item
        ++runs;
        bad += first != (items - 1) * blocks;
      } else {
        bad += first != prev_first - blocks;
      }
      prev_b = b, prev_h = h, prev_first = first;
    }
    for (int count : seen) bad += count != 1;
    bad += runs != heads;
  }
  printf("%d layers, %ld CTAs, %ld bad\n", kLayers, ctas, bad);
  return bad != 0;
}
