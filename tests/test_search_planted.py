"""The search recovers heads whose pattern we planted, with a budget that keeps >= 95% of the mass.

The kept mass is re-measured on every query of the head (not the search's sample), from a dense
softmax matrix and the keys the contract's index gives each query.
"""

from __future__ import annotations

import pytest
import torch
from search_helpers import kept_mass, one_thread  # noqa: F401 (autouse fixture)

from minfer.patterns.planted import (
    PLANTERS,
    llm_like_qk,
    planted_a_shape,
    planted_block_sparse,
    planted_vertical_slash,
)
from minfer.patterns.search import SearchSettings, search_layer
from minfer.patterns.spec import Kind, PatternError


@pytest.mark.parametrize("planter", [planted_a_shape, planted_vertical_slash, planted_block_sparse])
def test_planted_structure_holds_the_mass(planter):
    head = planter(4000, seed=3)
    assert head.planted_mass(torch.arange(0, 4000, 7)) > 0.99


@pytest.mark.parametrize("seq_len", [4000, 6000])
@pytest.mark.parametrize("kind", [Kind.A_SHAPE, Kind.VERTICAL_SLASH, Kind.BLOCK_SPARSE])
def test_search_recovers_planted_kind_and_budget(kind, seq_len):
    heads = [PLANTERS[kind](seq_len, seed=seed) for seed in (1, 2)]
    q = torch.stack([h.q for h in heads])
    k = torch.stack([h.k for h in heads])
    results = search_layer(q, k, heads[0].scale)
    for head, result in zip(heads, results, strict=True):
        chosen = result.chosen
        assert chosen.pattern.kind == kind, chosen
        assert chosen.recall >= 0.95
        assert chosen.density < 0.5, chosen  # a real saving, not dense in disguise
        assert kept_mass(head.q, head.k, head.scale, chosen.pattern) >= 0.95


@pytest.mark.parametrize("kind", [Kind.A_SHAPE, Kind.VERTICAL_SLASH, Kind.BLOCK_SPARSE])
def test_budget_mode_recovers_planted_kind_within_budget(kind):
    head = PLANTERS[kind](4000, seed=5)
    budget = 0.35
    (result,) = search_layer(head.q[None], head.k[None], head.scale, SearchSettings(budget=budget))
    assert result.chosen.pattern.kind == kind
    assert result.chosen.density <= budget
    assert kept_mass(head.q, head.k, head.scale, result.chosen.pattern) >= 0.95
    # "kernel-aware": no candidate within the budget keeps clearly more attention
    best = max(c.recall for c in result.candidates if c.density <= budget)
    assert result.chosen.recall >= best - SearchSettings().recall_tie


def test_diffuse_head_stays_dense():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2000, 64, generator=gen) * 0.1  # near-uniform attention: no cheap structure
    k = torch.randn(1, 2000, 64, generator=gen)
    (result,) = search_layer(q, k, 0.125)
    assert result.chosen.density > 0.9  # whatever reaches 95% of a uniform row covers ~95% of its keys
    (strict,) = search_layer(q, k, 0.125, SearchSettings(min_recall=0.99))
    assert strict.chosen.pattern.kind == Kind.DENSE
    assert strict.chosen.recall == pytest.approx(1.0, abs=1e-6)


def test_too_tight_budget_gives_way_to_the_recall_floor():
    head = planted_vertical_slash(4000, seed=1)
    (result,) = search_layer(head.q[None], head.k[None], head.scale, SearchSettings(budget=0.01))
    assert result.chosen.recall >= 0.95 and result.chosen.density > 0.01
    (strict,) = search_layer(head.q[None], head.k[None], head.scale, SearchSettings(budget=0.05, min_recall=0.0))
    assert strict.chosen.density <= 0.05 and strict.chosen.recall < 0.95


def test_planted_generators_refuse_bad_shapes():
    with pytest.raises(PatternError, match="head_dim 128"):
        planted_a_shape(100, 64)
    with pytest.raises(PatternError, match="seq_len"):
        planted_block_sparse(0)


def test_llm_like_family_is_pinned_and_grouped():
    q, k = llm_like_qk(4, 2, 300, 64, seed=7)
    q2, k2 = llm_like_qk(4, 2, 300, 64, seed=7)
    assert q.shape == (4, 300, 64) and k.shape == (2, 300, 64)
    assert torch.equal(q, q2) and torch.equal(k, k2)
    # queries of one group share their KV head's mean direction: they attend its sinks strongly
    probs = torch.softmax((q[1] @ k[0].T) * 64**-0.5 + torch.full((300, 300), float("-inf")).triu(1), dim=-1)
    assert float(probs[-64:, :4].sum(1).mean()) > 0.1
    with pytest.raises(PatternError, match="multiple of KV heads"):
        llm_like_qk(3, 2, 10)
