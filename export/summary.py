"""The report minfer-export prints: layers found, what was rewritten, the pattern mix, estimated savings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from ..patterns.cost import dense_attention_flops, head_tiles, nominal_head_tiles
from ..patterns.indices import dense_tiles
from ..patterns.spec import KIND_LABELS
from .rewrite import LayerResult


def attention_flops(results: Sequence[LayerResult], seq_len: int) -> tuple[float, float, float]:
    """(dense, nominal sparse, worst-case sparse) attention FLOPs per sequence at seq_len.

    Layers left dense count in full; rewritten heads count their data-free tile estimates from
    `minfer.patterns.cost`. Layers whose head shape is unknown are skipped.
    """
    dense = nominal = worst = 0.0
    all_tiles = dense_tiles(seq_len)
    for result in results:
        if result.shape is None:
            continue
        per_head = dense_attention_flops(seq_len, result.shape.head_dim)
        dense += per_head * result.shape.num_q_heads
        heads = result.heads or ()
        left_dense = result.shape.num_q_heads - len(heads)
        nominal += per_head * (left_dense + sum(nominal_head_tiles(h, seq_len) for h in heads) / all_tiles)
        worst += per_head * (left_dense + sum(head_tiles(h, seq_len) for h in heads) / all_tiles)
    return dense, nominal, worst


def print_summary(console: Console, results: Sequence[LayerResult], seq_len: int) -> None:
    table = Table(title="attention layers", show_lines=False)
    for column in ("layer", "form", "Hq/Hkv/D", "result"):
        table.add_column(column)
    for r in results:
        shape = f"{r.shape.num_q_heads}/{r.shape.num_kv_heads}/{r.shape.head_dim}" if r.shape else "?"
        if r.rewritten:
            mix = Counter(h.kind.label for h in r.heads)
            outcome = "sparse: " + ", ".join(f"{n} {k}" for k, n in sorted(mix.items()))
        else:
            outcome = f"[yellow]left dense[/]: {r.reason}"
        table.add_row(str(r.index), r.form, shape, outcome)
    console.print(table)
    rewritten = [r for r in results if r.rewritten]
    mix = Counter(h.kind.label for r in rewritten for h in r.heads)
    mix_text = ", ".join(f"{mix[k]} {k}" for k in KIND_LABELS if mix[k]) or "none"
    console.print(
        f"layers found: {len(results)}, rewritten: {len(rewritten)}, left dense: {len(results) - len(rewritten)}"
    )
    console.print(f"pattern mix (query heads): {mix_text}")
    dense, nominal, worst = attention_flops(results, seq_len)
    if dense > 0:
        console.print(
            f"attention FLOPs per sequence at S={seq_len} (data-free estimate): dense {dense / 1e9:.4g} GFLOP; "
            f"sparse {nominal / 1e9:.4g} GFLOP nominal ({100 * (1 - nominal / dense):.1f}% saved, "
            f"vertical-slash budgets as contiguous runs), at most {worst / 1e9:.4g} GFLOP in the worst case"
        )
