"""How much K/V the query heads of a GQA group could share: the rows their tiles load, summed over a set of
the group's heads (the whole group, or pairs), against the distinct rows among them, per query block. With
--item-blocks N: the tiles a work item of N query blocks (Nj .. Nj + N - 1) of one head loads apart, against
what it loads as the attention kernel's item (ItemSchedule: a chunk several blocks hold, the same first key,
once; columns per block; N = 3 on sm_90a since v16, 2 before and on sm_80), and how many of the item's tiles
are gathered columns, the part that still loads by cp.async.

The attention kernel loads 64 K and V rows per tile, per query head and block. Where the heads of a group
select the same rows (sinks, the local band, common diagonals), one CTA serving the whole group could load them
once; this bounds what that design could save in L2 traffic, the kernel's next ceiling (docs/kernels.md).
CPU only, from the reference index rules on the benchmark's LLM-like inputs and layer-16 budgets.
Run: python bench/gqa_sharing.py --seq-len 131072 --blocks 64 [--share 2 | --item-blocks 3]
"""

from __future__ import annotations

import argparse
import random

import torch

from minfer.patterns.config import load_config
from minfer.patterns.indices import BLOCK, build_head_index, num_blocks
from minfer.patterns.planted import llm_like_qk

CONFIG = "../shared/data/minference-configs/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json"
HQ, HKV, D = 32, 8, 128


def block_rows(index, m: int) -> torch.Tensor:
    """The K/V rows query block m's tiles load (chunk rows in range, then its gathered columns)."""
    chunks = index.chunk_starts(m)
    rows = (chunks[:, None] + torch.arange(BLOCK)[None, :]).reshape(-1)
    rows = torch.cat([rows, index.block_columns(m)])
    return rows[(rows >= 0) & (rows <= m * BLOCK + BLOCK - 1)]


def item_tiles(index, m0: int, count: int) -> tuple[int, int, int]:
    """Tiles query blocks m0 .. m0 + count - 1 load apart, as one work item (a chunk several hold, the same
    start, once), and how many of them are gathered columns (cp.async on sm_90a, where chunk tiles come by
    TMA)."""
    blocks = [m for m in range(m0, m0 + count) if m < index.num_blocks]
    starts = [index.chunk_starts(m) for m in blocks]
    columns = sum(index.column_tiles(m) for m in blocks)
    apart = sum(s.numel() for s in starts) + columns
    return apart, torch.unique(torch.cat(starts)).numel() + columns, columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--blocks", type=int, default=64, help="query blocks sampled (the last one always)")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--layer", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--share", type=int, default=HQ // HKV, help="query heads that share loads (divides 4)")
    parser.add_argument(
        "--item-blocks", type=int, default=0, help="count work items of this many query blocks of one head instead"
    )
    args = parser.parse_args()
    patterns = load_config(args.config).layers[args.layer]
    q, k = llm_like_qk(HQ, HKV, args.seq_len, D, seed=args.seed)
    indices = [build_head_index(q[h], k[h // (HQ // HKV)], patterns[h], D**-0.5) for h in range(HQ)]
    nb = num_blocks(args.seq_len)
    blocks = sorted({nb - 1, *random.Random(0).sample(range(nb), min(args.blocks, nb))})
    if args.item_blocks:
        n = args.item_blocks
        items = sorted({m - m % n for m in blocks})
        apart = merged = columns = 0
        for index in indices:
            for m0 in items:
                a, t, c = item_tiles(index, m0, n)
                apart, merged, columns = apart + a, merged + t, columns + c
        print(
            f"S={args.seq_len}, {len(items)} items of {n} query blocks per head: {apart} tiles loaded apart, "
            f"{merged} as items ({apart / merged:.2f}x fewer), of which {columns} gathered columns "
            f"({columns / merged:.1%})"
        )
        return
    loaded = distinct = 0
    for m in blocks:
        for g in range(HQ // args.share):
            rows = [block_rows(indices[h], m) for h in range(g * args.share, (g + 1) * args.share)]
            loaded += sum(r.numel() for r in rows)
            distinct += torch.unique(torch.cat(rows)).numel()
    print(
        f"S={args.seq_len}, {len(blocks)} query blocks, heads in sets of {args.share}: {loaded} rows loaded per head, "
        f"{distinct} distinct per set; sharing in the set would load {distinct / loaded:.1%} "
        f"({loaded / distinct:.2f}x fewer)"
    )


if __name__ == "__main__":
    main()
