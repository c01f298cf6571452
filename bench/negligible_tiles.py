"""How much P V work a consumer could skip where a tile's probabilities are negligible (CPU, reference index rules).

The attention kernel computes P V on every tile its indices select. Where every row of a tile has its largest
logit far below the row's running maximum, that P V adds almost nothing (FlashAttention-style "skip softmax").
This counts such tiles on the benchmark layer (bench_kernels.py's budgets, the LLM-like inputs), per sampled query
block, walking the block's chunk tiles oldest key first (the kernel's order) or newest first, then its columns:
- threshold T: a tile is skipped if every row's tile maximum is at least T (base 2) below its running maximum;
  no bound on the error: S * 2^-T of a row's weight in the worst case;
- budget 2^-B: a tile is skipped only while the rows' skipped weight, bounded by 64 * 2^(tile max - running max),
  stays under 2^-B of the row's running softmax sum: each output then moves by at most 2^(1-B) * max|v|.
Also the largest weight actually skipped, relative to the row's final sum, over the sampled rows.
About 85 s at 128K with 6 blocks per head on 2 CPU cores.
Run: python bench/negligible_tiles.py --seq-len 131072 --blocks 6
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import typer
from bench_kernels import HKV, HQ, SCALE, D, layer_patterns  # bench/, on the path as the script's folder

from minfer.patterns.indices import BLOCK, HeadIndex, build_head_index, num_blocks
from minfer.patterns.planted import llm_like_qk

THRESHOLDS = (16, 24, 32)
BUDGETS = (8, 12, 16)


def tile_logits(logits: torch.Tensor, index: HeadIndex, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The rows' base-2 logits on one tile's keys, -inf where the index's token rule masks them."""
    visible = index.token_rule(rows[:, None], keys[None, :])
    return logits[:, keys.clamp(0, int(rows[-1]))].masked_fill(~visible, -math.inf)


def skipped(
    tiles: list[torch.Tensor], final: torch.Tensor, final_sum: torch.Tensor, rule: str, level: int
) -> tuple[int, float]:
    """Tiles skipped in this order under the rule, and the largest skipped weight over a row's final sum (the
    rows' softmax sums against their final maxima `final`)."""
    rows = final.numel()
    run = torch.full((rows,), -math.inf, dtype=torch.float64)
    total = torch.zeros(rows, dtype=torch.float64)  # running sum of the computed tiles, against `run`
    used = torch.zeros(rows, dtype=torch.float64)  # skipped weight bound, against `run`
    lost = torch.zeros(rows, dtype=torch.float64)  # skipped weight, against the final maximum
    count = 0
    for x in tiles:
        top = x.max(dim=1).values
        empty = top == -math.inf
        if rule == "threshold":
            skip = bool((empty | (top <= run - level)).all())
        else:
            bound = torch.where(empty, 0.0, 64 * torch.exp2(top - run))
            skip = bool((empty | (run > -math.inf)).all()) and bool((used + bound <= 2.0**-level * total).all())
        if skip:
            count += 1
            lost += torch.exp2(x - final[:, None]).sum(dim=1)
            if rule == "budget":
                used += bound
            continue
        new = torch.maximum(run, top)
        rescale = torch.exp2(run - new).nan_to_num(0.0)
        total = total * rescale + torch.exp2(x - new[:, None]).nan_to_num(0.0).sum(dim=1)
        used, run = used * rescale, new
    return count, float((lost / final_sum).max())


def main(
    seq_len: Annotated[int, typer.Option(help="S")] = 131072,
    blocks: Annotated[int, typer.Option(help="query blocks sampled per head, spread over the sequence")] = 6,
    seed: Annotated[int, typer.Option(help="seed of llm_like_qk")] = 2,
) -> None:
    patterns = layer_patterns(None, 16)
    q, k = llm_like_qk(HQ, HKV, seq_len, D, seed=seed)
    q, k = q.bfloat16().double(), k.bfloat16().double()
    rules = [("threshold", t) for t in THRESHOLDS] + [("budget", b) for b in BUDGETS]
    counts = {(order, rule): 0 for order in ("oldest first", "newest first") for rule in rules}
    worst = dict.fromkeys(counts, 0.0)
    tiles_seen = 0
    group = HQ // HKV
    for h in range(HQ):
        index = build_head_index(q[h].float(), k[h // group].float(), patterns[h], SCALE)
        for m in torch.linspace(0, num_blocks(seq_len) - 1, blocks).long().tolist():
            rows = torch.arange(m * BLOCK, min(m * BLOCK + BLOCK, seq_len))
            logits = q[h, rows] @ k[h // group, : int(rows[-1]) + 1].T * (SCALE * math.log2(math.e))
            chunks = [tile_logits(logits, index, rows, s + torch.arange(BLOCK)) for s in index.chunk_starts(m).tolist()]
            columns = index.block_columns(m)
            gathered = [
                tile_logits(logits, index, rows, columns[i : i + BLOCK]) for i in range(0, columns.numel(), BLOCK)
            ]
            tiles = chunks + gathered  # the kernel's order: chunks oldest key first, then the columns
            final = torch.stack([x.max(dim=1).values for x in tiles]).max(dim=0).values
            final_sum = sum(torch.exp2(x - final[:, None]).nan_to_num(0.0).sum(dim=1) for x in tiles)
            tiles_seen += len(tiles)
            for order, walk in (("oldest first", tiles), ("newest first", chunks[::-1] + gathered)):
                for rule in rules:
                    n, lost = skipped(walk, final, final_sum, *rule)
                    counts[order, rule] += n
                    worst[order, rule] = max(worst[order, rule], lost)
    print(f"S {seq_len}, seed {seed}, {blocks} blocks per head, {tiles_seen} tiles")
    print("| walk | rule | tiles skipped | largest skipped weight / row sum |\n|---|---|---|---|")
    for (order, (rule, level)), n in counts.items():
        name = f"T = {level}" if rule == "threshold" else f"budget 2^-{level}"
        print(f"| {order} | {name} | {100 * n / tiles_seen:.1f}% | {worst[order, (rule, level)]:.1e} |")


if __name__ == "__main__":
    typer.run(main)
