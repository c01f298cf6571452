"""The search's measurements against the contract: tiles, selections, sampled recall, choice rule."""

from __future__ import annotations

import pytest
import torch
from search_helpers import kept_mass, one_thread  # noqa: F401 (autouse fixture)

from minfer.patterns.config import DEFAULT_HEAD
from minfer.patterns.indices import block_sparse_select, build_head_index, num_blocks
from minfer.patterns.search import (
    Candidate,
    CandidateGrid,
    SearchSettings,
    block_sparse_selections,
    candidate_indices,
    choose,
    index_tiles,
    parse_budget,
    sample_query_blocks,
    sampled_recall,
    search_layer,
    summarize,
    to_config,
)
from minfer.patterns.spec import HeadPattern, Kind, PatternError

RAGGED = [1, 37, 64, 65, 700, 1300]


def _grid_and_extremes(seq_len: int) -> list[HeadPattern]:
    return [
        *CandidateGrid().patterns(seq_len),
        HeadPattern.vertical_slash(0, 0, last_q=1, sink=0, local=1),
        HeadPattern.vertical_slash(5, 3, last_q=7, sink=2, local=1),
        HeadPattern.vertical_slash(3000, 3000, last_q=256, sink=64, local=200),
        HeadPattern.a_shape(0, 1),
        HeadPattern.a_shape(5, 70),
        HeadPattern.block_sparse(3),
    ]


@pytest.mark.parametrize("seq_len", RAGGED)
def test_tiles_and_indices_equal_the_contract(seq_len):
    gen = torch.Generator().manual_seed(seq_len)
    q, k = torch.randn(seq_len, 64, generator=gen), torch.randn(seq_len, 64, generator=gen)
    patterns = _grid_and_extremes(seq_len)
    for pattern, index in zip(patterns, candidate_indices(q, k, patterns, 0.125), strict=True):
        expected = build_head_index(q, k, pattern, 0.125)
        for name in ("kind", "seq_len", "sink", "local"):
            assert getattr(index, name) == getattr(expected, name)
        for name in ("columns", "diagonals", "lags", "held", "blocks"):
            got, want = getattr(index, name), getattr(expected, name)
            assert (got is None and want is None) or torch.equal(got, want), (pattern, name)
        assert index_tiles(index) == expected.tiles(), pattern


@pytest.mark.parametrize("nb", [1, 2, 5, 33])
@pytest.mark.parametrize("ties", [False, True])
def test_block_sparse_selections_equal_the_contract(nb, ties):
    gen = torch.Generator().manual_seed(nb)
    scores = torch.randint(0, 3, (nb, nb), generator=gen).float() if ties else torch.randn(nb, nb, generator=gen)
    top_ks = [1, 2, 3, nb, nb + 4]
    got = block_sparse_selections(scores, top_ks)
    for top_k in top_ks:
        assert torch.equal(got[top_k], block_sparse_select(scores, top_k)), top_k


@pytest.mark.parametrize("seq_len", RAGGED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampled_recall_equals_brute_force(seq_len, dtype):
    gen = torch.Generator().manual_seed(seq_len + 1)
    # keys with a few strong directions so recalls spread over (0, 1)
    q = (torch.randn(seq_len, 64, generator=gen) * 2).to(dtype)
    k = torch.randn(seq_len, 64, generator=gen).to(dtype)
    patterns = _grid_and_extremes(seq_len)
    blocks = sample_query_blocks(seq_len, 5)
    recalls = sampled_recall(q, k, 0.125, candidate_indices(q, k, patterns, 0.125), blocks)
    for pattern, recall in zip(patterns, recalls, strict=True):
        assert recall == pytest.approx(kept_mass(q.float(), k.float(), 0.125, pattern, blocks), abs=1e-5), pattern
    assert recalls[0] == pytest.approx(1.0, abs=1e-6)  # dense


def test_sample_query_blocks():
    assert sample_query_blocks(1, 16) == [0]
    assert sample_query_blocks(64 * 10, 16) == list(range(10))
    blocks = sample_query_blocks(131072, 16)
    assert len(blocks) == 16 and blocks[-1] == 2047 and blocks == sorted(set(blocks))


def test_grid_holds_minference_budgets_and_dedupes_short_inputs():
    patterns = CandidateGrid().patterns(131072)
    pairs = {(p.vertical_size, p.slash_size) for p in patterns if p.kind == Kind.VERTICAL_SLASH}
    assert {(1000, 6096), (3500, 100), (100, 800), (30, 800), (500, 700)} <= pairs
    assert patterns[:2] == [HeadPattern.dense(), DEFAULT_HEAD]
    short = CandidateGrid().patterns(100)
    assert len(short) < 20  # budgets past the sequence collapse to what they compute
    assert all(p.kind != Kind.BLOCK_SPARSE or p.top_k < num_blocks(100) for p in short)


def _cand(kind: Kind, tiles: int, recall: float, dense_tiles: int = 100) -> Candidate:
    pattern = {
        Kind.DENSE: HeadPattern.dense(),
        Kind.A_SHAPE: HeadPattern.a_shape(64, tiles),
        Kind.VERTICAL_SLASH: HeadPattern.vertical_slash(tiles, 100),
        Kind.BLOCK_SPARSE: HeadPattern.block_sparse(tiles),
    }[kind]
    return Candidate(pattern, tiles, tiles / dense_tiles, recall)


def test_choose_without_budget_takes_the_cheapest_reaching_the_floor():
    dense = _cand(Kind.DENSE, 100, 1.0)
    cands = [dense, _cand(Kind.VERTICAL_SLASH, 20, 0.97), _cand(Kind.A_SHAPE, 30, 0.99), _cand(Kind.A_SHAPE, 10, 0.9)]
    assert choose(cands, SearchSettings()) == cands[1]
    # within 10% of the cheapest cost: the most attention wins; on a recall tie, the simpler kind
    cands.append(_cand(Kind.A_SHAPE, 21, 0.96))
    assert choose(cands, SearchSettings()) == cands[1]
    cands.append(_cand(Kind.A_SHAPE, 22, 0.968))
    assert choose(cands, SearchSettings()) == cands[-1]
    # costing as much as dense is never better than dense
    assert choose([dense, _cand(Kind.A_SHAPE, 100, 1.0)], SearchSettings()) == dense
    assert choose([dense, _cand(Kind.A_SHAPE, 50, 0.5)], SearchSettings()) == dense


def test_choose_with_budget_keeps_the_most_attention_within_it():
    dense = _cand(Kind.DENSE, 100, 1.0)
    cands = [
        dense,
        _cand(Kind.A_SHAPE, 10, 0.96),
        _cand(Kind.VERTICAL_SLASH, 30, 0.99),
        _cand(Kind.BLOCK_SPARSE, 29, 0.988),
        _cand(Kind.VERTICAL_SLASH, 45, 0.999),
    ]
    # within 0.3: best recall 0.99; 0.988 is within recall_tie and 29 tiles is cheaper -> block-sparse
    assert choose(cands, SearchSettings(budget=0.3)) == cands[3]
    assert choose(cands, SearchSettings(budget=0.5)) == cands[4]
    # the floor wins over the budget: nothing within 0.05, the cheapest reaching 0.95 is taken
    assert choose(cands, SearchSettings(budget=0.05)) == cands[1]
    assert choose(cands, SearchSettings(budget=0.05, min_recall=0.999)) == cands[4]
    assert choose(cands, SearchSettings(budget=0.05, min_recall=1.0)) == dense


@pytest.mark.parametrize(
    ("text", "density"), [("8x", 0.125), ("1x", 1.0), ("90%", 0.1), ("0.75", 0.25), (" 2.5X ", 0.4)]
)
def test_parse_budget(text, density):
    assert parse_budget(text) == pytest.approx(density)


@pytest.mark.parametrize("text", ["", "fast", "0.5x", "100%", "1.5", "-3x", "8xx"])
def test_parse_budget_refuses(text):
    with pytest.raises(PatternError, match="budget"):
        parse_budget(text)


def test_settings_refuse_bad_values():
    with pytest.raises(PatternError, match="budget"):
        SearchSettings(budget=0)
    with pytest.raises(PatternError, match="min_recall"):
        SearchSettings(min_recall=1.5)
    with pytest.raises(PatternError, match="sample_blocks"):
        SearchSettings(sample_blocks=0)


@pytest.mark.parametrize(
    ("seq_len", "head_dim", "dtype"), [(1, 64, torch.float32), (37, 128, torch.float16), (200, 64, torch.bfloat16)]
)
def test_search_layer_gqa_short_and_low_precision(seq_len, head_dim, dtype):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, seq_len, head_dim, generator=gen).to(dtype)
    k = torch.randn(2, seq_len, head_dim, generator=gen).to(dtype)
    layer = search_layer(q, k, head_dim**-0.5)
    assert len(layer) == 4
    for result in layer:
        assert result.chosen.recall >= 0.95 and 0 < result.chosen.density <= 1
        result.chosen.pattern.validate(0)
    config = to_config([layer], {"searched_length": seq_len})
    assert config.num_layers == 1 and config.stats[0][0]["recall"] == round(layer[0].chosen.recall, 6)
    summary = summarize([layer])
    assert sum(summary.kinds.values()) == 4 and summary.speedup >= 1 - 1e-9


def test_search_layer_refuses_bad_shapes():
    with pytest.raises(PatternError, match="multiple of KV heads"):
        search_layer(torch.zeros(3, 10, 64), torch.zeros(2, 10, 64), 0.125)
    with pytest.raises(PatternError, match="head_dim 96"):
        search_layer(torch.zeros(2, 10, 96), torch.zeros(1, 10, 96), 0.125)
    with pytest.raises(PatternError, match=r"\[Hq, S, D\]"):
        search_layer(torch.zeros(2, 10, 64), torch.zeros(1, 11, 64), 0.125)
    with pytest.raises(PatternError, match="empty"):
        search_layer(torch.zeros(2, 0, 64), torch.zeros(1, 0, 64), 0.125)


@pytest.mark.gpu
def test_search_on_the_gpu_matches_the_cpu():
    from minfer.patterns.planted import planted_block_sparse, planted_vertical_slash

    heads = [planted_vertical_slash(3000, seed=1), planted_block_sparse(3000, seed=1)]
    q = torch.stack([h.q for h in heads])
    k = torch.stack([h.k for h in heads])
    cpu = search_layer(q, k, heads[0].scale)
    gpu = search_layer(q.cuda(), k.cuda(), heads[0].scale)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.chosen.pattern == b.chosen.pattern and a.chosen.tiles == b.chosen.tiles
        for x, y in zip(a.candidates, b.candidates, strict=True):
            assert x.tiles == y.tiles and x.recall == pytest.approx(y.recall, abs=1e-4)
