"""The data-free cost estimate against the tiles the reference's indices actually select."""

from __future__ import annotations

import pytest
import torch

from minfer.patterns.cost import head_tiles, nominal_head_tiles, selected_fraction
from minfer.patterns.indices import build_head_index, dense_tiles
from minfer.patterns.spec import HeadPattern, Kind

LENGTHS = (1, 63, 64, 65, 200, 777)
EXACT = (
    HeadPattern.dense(),
    HeadPattern.a_shape(sink=0, local=1),
    HeadPattern.a_shape(sink=30, local=100),
    HeadPattern.a_shape(sink=200, local=70),
    HeadPattern.block_sparse(top_k=1),
    HeadPattern.block_sparse(top_k=3),
)
VERTICAL_SLASH = (
    HeadPattern.vertical_slash(100, 200),
    HeadPattern.vertical_slash(1000, 6096),
    HeadPattern.vertical_slash(5, 3, sink=1, local=1),
    HeadPattern.vertical_slash(300, 30, sink=0, local=1, last_q=16),
    HeadPattern.vertical_slash(0, 0, sink=0, local=1),
)


def _actual_tiles(pattern: HeadPattern, seq_len: int, seed: int) -> int:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(seq_len, 64, generator=generator) * (1 + seed)
    k = torch.randn(seq_len, 64, generator=generator)
    return build_head_index(q, k, pattern, 0.125).tiles()


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_exact_for_data_independent_kinds(seq_len: int) -> None:
    for pattern in EXACT:
        assert head_tiles(pattern, seq_len) == _actual_tiles(pattern, seq_len, seed=0), pattern


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_upper_bound_for_vertical_slash(seq_len: int) -> None:
    for pattern in VERTICAL_SLASH:
        for seed in range(3):
            assert _actual_tiles(pattern, seq_len, seed) <= head_tiles(pattern, seq_len), (pattern, seed)


def test_fractions() -> None:
    assert selected_fraction([[HeadPattern.dense()] * 4], 1000) == 1.0
    default = HeadPattern.vertical_slash(1000, 6096)
    assert nominal_head_tiles(default, 131072) / dense_tiles(131072) == pytest.approx(0.1054, abs=1e-3)
    assert nominal_head_tiles(default, 4096) == dense_tiles(4096)  # budgets cover every key
    assert selected_fraction([[HeadPattern.a_shape(sink=64, local=1024)]], 32768) < 0.07
    for pattern in EXACT:
        assert pattern.kind == Kind.VERTICAL_SLASH or nominal_head_tiles(pattern, 500) == head_tiles(pattern, 500)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        head_tiles(HeadPattern.dense(), 0)
