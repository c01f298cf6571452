"""Shared by the search tests: one intra-op thread, and the attention mass a pattern keeps, by brute force."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch

from minfer.patterns.indices import build_head_index, num_blocks
from minfer.patterns.spec import BLOCK, HeadPattern


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of small ops: intra-op threads only stall on shared CI cores (17 s vs 156 s here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kept_mass(
    q: torch.Tensor, k: torch.Tensor, scale: float, pattern: HeadPattern, blocks: Iterable[int] | None = None
) -> float:
    """Mean over the queries of `blocks` (all by default) of the float64 causal softmax mass on sel(i).

    sel(i) comes from a full boolean mask over all keys, filled from the contract's per-block keys and
    token rule: no shortcut shared with the search's own recall.
    """
    seq_len = q.shape[0]
    index = build_head_index(q, k, pattern, scale)
    kept, rows_seen = 0.0, 0
    for m in range(num_blocks(seq_len)) if blocks is None else blocks:
        rows = torch.arange(m * BLOCK, min(m * BLOCK + BLOCK, seq_len))
        logits = (q[rows].double() @ k.double().T) * scale
        probs = torch.softmax(logits.masked_fill(torch.arange(seq_len)[None, :] > rows[:, None], float("-inf")), -1)
        keys = index.block_keys(m)
        r, c = index.token_rule(rows[:, None], keys[None, :]).nonzero(as_tuple=True)
        mask = torch.zeros(rows.numel(), seq_len, dtype=torch.bool)
        mask[r, keys[c]] = True
        kept += float((probs * mask).sum())
        rows_seen += rows.numel()
    return kept / rows_seen
