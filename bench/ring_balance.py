"""How much of a CTA's consumer time the ring's order itself loses: a work item of three query blocks (sm_90a)
takes its tiles in ItemSchedule's order (chunks merged by first key, then the blocks' column tiles in turn)
through a ring of R stages that a stage leaves only when all three consumers are done with it. Each consumer
spends 1 per tile it uses and `skip` per tile it does not; the producer refills a stage `latency` after it
frees and issues one tile per `issue`. The efficiency printed is the consumers' work over three times the
items' summed makespans, so 1.0 is no consumer ever waiting; the busiest-block bound is what an item's most
loaded block alone allows.

CPU only, from the reference index rules on the benchmark's LLM-like inputs and layer-16 budgets.
Run: python bench/ring_balance.py --seq-len 32768 --blocks 128 [--miss 0.13 --miss-latency 2]
"""

from __future__ import annotations

import argparse
import random

from gqa_sharing import CONFIG, HKV, HQ, D  # bench/, the script's folder

from minfer.patterns.config import load_config
from minfer.patterns.indices import build_head_index, num_blocks
from minfer.patterns.planted import llm_like_qk

ITEM_BLOCKS = 3


def item_order(index, m0: int) -> list[int]:
    """The uses mask (bit i: block m0 + i) of each tile the item loads, in the producer's order."""
    blocks = [m for m in range(m0, m0 + ITEM_BLOCKS) if m < index.num_blocks]
    uses: dict[int, int] = {}
    for i, m in enumerate(blocks):
        for start in index.chunk_starts(m).tolist():
            uses[start] = uses.get(start, 0) | (1 << i)
    order = [uses[start] for start in sorted(uses)]
    left = [index.column_tiles(m) for m in blocks]
    while any(left):
        for i, count in enumerate(left):
            if count:
                order.append(1 << i)
                left[i] -= 1
    return order


def makespan(
    order: list[int], stages: int, latency: float, issue: float, skip: float, latencies: list[float] | None = None
) -> float:
    """When the item's last consumer finishes, all three starting at 0 with an empty ring; `latencies`, where
    given, is each tile's own refill latency (an L2 miss takes longer than a hit)."""
    done = [[0.0] * len(order) for _ in range(ITEM_BLOCKS)]
    consumer = [0.0] * ITEM_BLOCKS
    producer = 0.0
    for k, uses in enumerate(order):
        free = 0.0 if k < stages else max(done[i][k - stages] for i in range(ITEM_BLOCKS))
        producer = max(producer, free) + issue
        landed = producer - issue + (latencies[k] if latencies else latency)
        for i in range(ITEM_BLOCKS):
            consumer[i] = max(consumer[i], landed) + (1.0 if (uses >> i) & 1 else skip)
            done[i][k] = consumer[i]
    return max(consumer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--blocks", type=int, default=128, help="query blocks sampled (the last one always)")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--layer", type=int, default=16)
    parser.add_argument("--skip", type=float, default=0.02, help="a consumer's time for a tile it does not use")
    parser.add_argument("--miss", type=float, default=0.0, help="fraction of tiles whose refill misses L2")
    parser.add_argument("--miss-latency", type=float, default=2.0, help="a miss's refill latency, in tiles")
    args = parser.parse_args()
    patterns = load_config(CONFIG).layers[args.layer]
    q, k = llm_like_qk(HQ, HKV, args.seq_len, D, seed=args.seed)
    indices = [build_head_index(q[h], k[h // (HQ // HKV)], patterns[h], D**-0.5) for h in range(HQ)]
    nb = num_blocks(args.seq_len)
    blocks = sorted({nb - 1, *random.Random(0).sample(range(nb), min(args.blocks, nb))})
    orders = [item_order(index, m0) for index in indices for m0 in sorted({m - m % ITEM_BLOCKS for m in blocks})]
    work = sum(bin(uses).count("1") for order in orders for uses in order)
    busiest = sum(max(sum((u >> i) & 1 for u in order) for i in range(ITEM_BLOCKS)) for order in orders)
    print(f"S={args.seq_len}: {len(orders)} items, {work} block-tiles; busiest-block bound {work / (3 * busiest):.3f}")
    if args.miss:  # hits refill in half a tile, misses in --miss-latency; the same draws for every ring depth
        rng = random.Random(1)
        draws = [[args.miss_latency if rng.random() < args.miss else 0.5 for _ in order] for order in orders]
        for stages in (6, 12):
            span = sum(makespan(o, stages, 0.5, 0.1, args.skip, lat) for o, lat in zip(orders, draws, strict=True))
            print(
                f"stages {stages}, {args.miss:.0%} misses of latency {args.miss_latency}: efficiency {work / (3 * span):.3f}"
            )
        return
    for stages in (4, 6, 8):
        for latency in (0.3, 1.0):
            for issue in (0.1, 0.3):
                span = sum(makespan(order, stages, latency, issue, args.skip) for order in orders)
                print(f"stages {stages}, latency {latency}, issue {issue}: efficiency {work / (3 * span):.3f}")


if __name__ == "__main__":
    main()
