"""Data-free cost estimate of a pattern: 64x64 tiles it may select at length S versus dense causal.

The kernels' unit is a tile: a 64-key chunk against a 64-query block, or a group of up to 64
gathered columns (docs/op-spec.md, "Cost model"). For dense, A-shape and block-sparse the count is
exact, since their selection does not depend on the data. For vertical-slash it is an upper bound:
per query block at most K = min(selected diagonals, m + 1) chunks (chunk lags are >= 64 apart,
each made by a distinct diagonal; at most one chunk reaches below key 0 and one beyond S - 1, each
holding at least one real key, so K chunks hold at least 64(K-2)+2 keys) plus the tiles of the
columns that no chunk holds. The vertical-slash estimate of the last `last_q` queries (an extra last_q x S scores per
head) is not counted.

The upper bound is close to dense for large slash budgets (6096 scattered diagonals can touch every
64-key chunk up to ~390K tokens), so `nominal_head_tiles` gives the figure MInference reports: the
selected diagonals and columns read as contiguous runs (min(i+1, budget) keys per query).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import numpy as np

from .indices import dense_tiles, num_blocks, vertical_slash_counts
from .spec import BLOCK, HeadPattern, Kind


@cache
def head_tiles(pattern: HeadPattern, seq_len: int) -> int:
    """Tiles one head computes at seq_len (exact, or an upper bound for vertical-slash)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    m = np.arange(num_blocks(seq_len), dtype=np.int64)
    if pattern.kind == Kind.DENSE:
        return dense_tiles(seq_len)
    if pattern.kind == Kind.BLOCK_SPARSE:
        return int(np.minimum(pattern.top_k, m + 1).sum())
    if pattern.kind == Kind.A_SHAPE:
        sink_blocks = np.minimum(num_blocks(pattern.sink) if pattern.sink > 0 else 0, m + 1)
        first_local = np.maximum(m * BLOCK - pattern.local + 1, 0) // BLOCK
        return int((m - first_local + 1 + np.minimum(sink_blocks, first_local)).sum())
    verticals, slashes = vertical_slash_counts(pattern, seq_len)
    keys = np.minimum((m + 1) * BLOCK, seq_len)
    chunks = np.minimum(slashes, m + 1)
    held = np.where(chunks >= 2, BLOCK * (chunks - 2) + 2, chunks)
    unheld = np.maximum(keys - held, 0)
    column_tiles = -(-np.minimum(verticals, unheld) // BLOCK)
    return int((chunks + column_tiles).sum())


def nominal_head_tiles(pattern: HeadPattern, seq_len: int) -> int:
    """Like `head_tiles`, but vertical-slash budgets count as contiguous runs of keys (not a bound)."""
    if pattern.kind != Kind.VERTICAL_SLASH:
        return head_tiles(pattern, seq_len)
    m = np.arange(num_blocks(seq_len), dtype=np.int64)
    keys = np.minimum((m + 1) * BLOCK, seq_len)
    budget = sum(vertical_slash_counts(pattern, seq_len))
    return int(np.minimum(-(-np.minimum(budget, keys) // BLOCK), m + 1).sum())


def selected_fraction(layers: Iterable[Iterable[HeadPattern]], seq_len: int) -> float:
    """Selected tiles of every head of every layer as a fraction of dense causal attention."""
    heads = [h for layer in layers for h in layer]
    if not heads:
        raise ValueError("no heads to estimate")
    return sum(head_tiles(h, seq_len) for h in heads) / (len(heads) * dense_tiles(seq_len))


def dense_attention_flops(seq_len: int, head_dim: int) -> float:
    """FLOPs of one head's dense causal attention (QK^T and PV, causal half): 2 * S^2 * D."""
    return 2.0 * seq_len * seq_len * head_dim
