"""Offline, kernel-aware per-head pattern search (MInference's method, measured with our index rules).

For one head the search builds every candidate of an explicit grid with the contract's index stages
(`minfer.patterns.indices`; the vertical-slash estimate and the pooled block scores are computed once
per head and shared by its candidates), then measures each candidate twice in the kernels' units:

- cost: `HeadIndex.tiles()`, the 64x64 tiles the kernels compute, as a fraction of dense causal
  attention (`density`);
- recall: the exact causal softmax mass, on a sample of query blocks (always the last one), that
  falls inside the keys the candidate's index gives those blocks (chunks + columns + token rule).

Choice per head ("kernel-aware": among configurations of equal cost keep the most attention):

- without a budget: the cheapest candidate whose recall reaches `min_recall`;
- with a budget (a target density): the best recall among candidates within the budget, where
  recalls within `recall_tie` of the best count as equal and the cheapest of them wins; if that best
  stays under `min_recall` the head takes the cheapest candidate that reaches it, over budget;
- among the finalists whose cost is within `cost_tie` of the cheapest (equal cost, as far as tiles
  tell), the most attention wins; on a recall tie the simpler kind (A-shape, then block-sparse, then
  vertical-slash): the tile count leaves out the index stage, and a static pattern needs no online
  estimate at all;
- dense is always a candidate (recall 1), so a head whose attention has no cheap structure stays dense;
  a candidate with as many tiles as dense (scattered columns can cost more) is never chosen.

Memory stays bounded: one 64-query block of probabilities over the causal keys at a time, never an
S x S matrix. Index stages run on the CPU (as the contract's functions do); the probabilities of the
sampled blocks are computed on the device of Q/K, so a GPU carries the heavy part at long lengths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import torch

from .config import DEFAULT_HEAD, PatternConfig
from .indices import (
    HeadIndex,
    build_head_index,
    chunk_lags,
    dense_tiles,
    held_lags,
    num_blocks,
    pooled_block_scores,
    top_with_forced,
    vertical_slash_counts,
    vertical_slash_scores,
)
from .spec import BLOCK, HeadPattern, Kind, PatternError, validate_shapes

SIMPLICITY = {Kind.A_SHAPE: 0, Kind.BLOCK_SPARSE: 1, Kind.VERTICAL_SLASH: 2, Kind.DENSE: 3}
"""Tie order between kinds of near-equal cost: static first, online estimate last, dense the fallback."""

A_SHAPE_LOCALS = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 16384, 32768)
VERTICALS = (30, 64, 128, 500, 1000, 3500)
SLASHES = (100, 128, 200, 400, 800, 1600, 3200, 6096)
MINFERENCE_PAIRS = ((1000, 6096), (3500, 100), (100, 800), (30, 800), (500, 700))
"""(vertical, slash) budgets common in MInference's published configs; all in the default grid."""
TOP_KS = (1, 2, 4, 8, 16, 32, 64, 100, 128, 256, 512, 1024)


@dataclass(frozen=True)
class CandidateGrid:
    """The configurations tried for every head; values past the sequence are clipped and deduplicated."""

    a_shape: tuple[tuple[int, int], ...] = tuple((sink, local) for sink in (64, 128) for local in A_SHAPE_LOCALS)
    vertical_slash: tuple[tuple[int, int], ...] = tuple(
        dict.fromkeys([*MINFERENCE_PAIRS, *((v, s) for v in VERTICALS for s in SLASHES)])
    )
    block_sparse: tuple[int, ...] = TOP_KS
    last_q: int = DEFAULT_HEAD.last_q
    vs_sink: int = DEFAULT_HEAD.sink
    vs_local: int = DEFAULT_HEAD.local

    def patterns(self, seq_len: int) -> list[HeadPattern]:
        """Dense, the embedded default, then the grid; one pattern per distinct index at seq_len."""
        nb = num_blocks(seq_len)
        vs = [
            HeadPattern.vertical_slash(v, s, last_q=self.last_q, sink=self.vs_sink, local=self.vs_local)
            for v, s in self.vertical_slash
        ]
        candidates = [
            HeadPattern.dense(),
            DEFAULT_HEAD,
            *(HeadPattern.a_shape(sink, local) for sink, local in self.a_shape),
            *vs,
            *(HeadPattern.block_sparse(top_k) for top_k in self.block_sparse),
        ]
        seen: dict[tuple, HeadPattern] = {}
        for p in candidates:
            seen.setdefault(_effective(p, seq_len, nb), p)
        return list(seen.values())


def _effective(p: HeadPattern, seq_len: int, nb: int) -> tuple:
    """What a pattern computes at seq_len: candidates with equal keys build equal indices."""
    if p.kind == Kind.A_SHAPE:
        if p.local >= seq_len:
            return (Kind.DENSE,)
        return (p.kind, min(p.sink, seq_len), p.local)
    if p.kind == Kind.VERTICAL_SLASH:
        return (
            p.kind,
            *vertical_slash_counts(p, seq_len),
            min(p.last_q, seq_len),
            min(p.sink, seq_len),
            min(p.local, seq_len),
        )
    if p.kind == Kind.BLOCK_SPARSE:
        return (Kind.DENSE,) if p.top_k >= nb else (p.kind, p.top_k)
    return (Kind.DENSE,)


@dataclass(frozen=True)
class SearchSettings:
    """The search's knobs; `budget` is a target density (fraction of dense tiles), None for recall-only."""

    budget: float | None = None
    min_recall: float = 0.95
    sample_blocks: int = 16
    recall_tie: float = 0.005
    cost_tie: float = 0.10
    grid: CandidateGrid = field(default_factory=CandidateGrid)
    cpu_threads: int = 1
    """Intra-op threads while a layer is searched: its CPU work is thousands of small ops, which extra
    threads slow down (the planted tests take 17 s on one thread, 156 s on two shared cores)."""

    def __post_init__(self) -> None:
        if self.budget is not None and not 0 < self.budget <= 1:
            raise PatternError(f"budget must be a density in (0, 1], got {self.budget}")
        if not 0 <= self.min_recall <= 1:
            raise PatternError(f"min_recall must be in [0, 1], got {self.min_recall}")
        if self.sample_blocks < 1:
            raise PatternError(f"sample_blocks must be >= 1, got {self.sample_blocks}")
        if self.cpu_threads < 1:
            raise PatternError(f"cpu_threads must be >= 1, got {self.cpu_threads}")


def parse_budget(text: str) -> float:
    """'8x' (speed-up over dense attention), '90%' or '0.9' (sparsity) -> target density."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(x|%)?\s*", text.lower())
    if not match:
        raise PatternError(f"budget {text!r}: expected a speed-up like '8x' or a sparsity like '90%' or '0.9'")
    value, unit = float(match.group(1)), match.group(2)
    if unit == "x":
        if value < 1:
            raise PatternError(f"budget {text!r}: a speed-up must be >= 1x")
        return 1 / value
    sparsity = value / 100 if unit == "%" else value
    if not 0 <= sparsity < 1:
        raise PatternError(f"budget {text!r}: sparsity must be in [0, 1) ('90%' or '0.9')")
    return 1 - sparsity


@dataclass(frozen=True)
class Candidate:
    """One pattern measured on one head."""

    pattern: HeadPattern
    tiles: int
    density: float
    recall: float


@dataclass(frozen=True)
class HeadResult:
    """One head's choice, with every candidate's measurement kept for reports and tests."""

    chosen: Candidate
    default: Candidate  # the embedded default measured on the same head, for the report
    candidates: tuple[Candidate, ...]


def sample_query_blocks(seq_len: int, count: int) -> list[int]:
    """`count` query blocks evenly spread over the sequence, the last block always among them."""
    nb = num_blocks(seq_len)
    if count >= nb:
        return list(range(nb))
    return sorted({round((i + 1) * nb / count) - 1 for i in range(count)})


def block_sparse_selections(scores: torch.Tensor, top_ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """`block_sparse_select(scores, k)` for every k from one stable sort of all rows (tests check equality).

    The contract's row-by-row loop costs about 0.1 s per call at 128K; the search makes a dozen per head.
    """
    nb = scores.shape[0]
    blocks = torch.arange(nb)
    earlier = blocks[None, :] < blocks[:, None]
    # Earlier blocks by descending score, ties to the lower index (stable), later blocks after them.
    order = torch.sort(torch.where(earlier, -scores, float("inf")), dim=1, stable=True).indices
    out = {}
    for top_k in top_ks:
        keep = min(top_k, nb) - 1
        chosen = torch.cat([order[:, :keep], blocks[:, None]], dim=1)
        past = torch.cat([earlier.gather(1, order[:, :keep]), torch.ones(nb, 1, dtype=torch.bool)], dim=1)
        ascending = torch.sort(torch.where(past, chosen, nb)).values
        out[top_k] = torch.where(ascending < nb, ascending, -1)
    return out


def candidate_indices(
    q: torch.Tensor, k: torch.Tensor, patterns: Sequence[HeadPattern], scale: float
) -> list[HeadIndex]:
    """`build_head_index` for every candidate, sharing each head's estimate, selections and pooled scores.

    q [S, D], k [S, D] on the CPU. The vertical-slash stages are the ones `build_head_index` chains.
    """
    seq_len = q.shape[0]
    estimates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    columns: dict[tuple[int, int, int], torch.Tensor] = {}
    slashes: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    top_ks = [p.top_k for p in patterns if p.kind == Kind.BLOCK_SPARSE]
    blocks = block_sparse_selections(pooled_block_scores(q, k), top_ks) if top_ks else {}
    out = []
    for p in patterns:
        if p.kind == Kind.BLOCK_SPARSE:
            out.append(HeadIndex(Kind.BLOCK_SPARSE, seq_len, blocks=blocks[p.top_k]))
            continue
        if p.kind != Kind.VERTICAL_SLASH:
            out.append(build_head_index(q, k, p, scale))
            continue
        if p.last_q not in estimates:
            estimates[p.last_q] = vertical_slash_scores(q, k, p.last_q, scale)
        column_scores, diagonal_scores = estimates[p.last_q]
        column_key, slash_key = (p.last_q, p.sink, p.vertical_size), (p.last_q, p.local, p.slash_size)
        if column_key not in columns:
            columns[column_key] = top_with_forced(column_scores, p.sink, p.vertical_size)
        if slash_key not in slashes:
            diagonals = top_with_forced(diagonal_scores, p.local, p.slash_size)
            lags = chunk_lags(diagonals)
            slashes[slash_key] = (diagonals, lags, held_lags(lags, seq_len))
        diagonals, lags, held = slashes[slash_key]
        out.append(
            HeadIndex(
                Kind.VERTICAL_SLASH, seq_len, columns=columns[column_key], diagonals=diagonals, lags=lags, held=held
            )
        )
    return out


@cache
def _static_tiles(kind: Kind, seq_len: int, sink: int, local: int) -> int:
    """Tiles of an index that does not depend on Q/K (dense, A-shape): counted once per length."""
    return HeadIndex(kind, seq_len, sink=sink, local=local).tiles()


def _vertical_slash_tiles(index: HeadIndex) -> int:
    """`HeadIndex.tiles()` of a vertical-slash index, all query blocks at once (tests check equality).

    The per-block loop costs tens of milliseconds per candidate at 128K; the search counts dozens per head.
    """
    starts = torch.arange(index.num_blocks, dtype=torch.int32) * BLOCK
    chunks = torch.searchsorted(torch.flip(index.lags, dims=[0]), starts.long() + BLOCK).sum()  # lags c < end_m
    held_at = starts[:, None] - index.columns.to(torch.int32)[None, :] + BLOCK - 1  # held[] index of (block, column)
    visible = held_at >= 0  # column v < end_m
    columns = (visible & ~index.held[held_at.clamp_(min=0)]).sum(dim=1)
    return int(chunks + ((columns + BLOCK - 1) // BLOCK).sum())


def index_tiles(index: HeadIndex) -> int:
    """`HeadIndex.tiles()`: counted once per length for static indices, vectorized for the others."""
    if index.kind in (Kind.DENSE, Kind.A_SHAPE):
        return _static_tiles(index.kind, index.seq_len, index.sink, index.local)
    if index.kind == Kind.VERTICAL_SLASH:
        return _vertical_slash_tiles(index)
    return int((index.blocks >= 0).sum())  # block-sparse: one chunk per kept block, no columns


def sampled_recall(
    q: torch.Tensor, k: torch.Tensor, scale: float, indices: Sequence[HeadIndex], blocks: Sequence[int]
) -> list[float]:
    """Per index: mean over the rows of `blocks` of the exact causal softmax mass on its selected keys.

    q [S, D], k [S, D] on any device; one block's probabilities [64, keys <= row] at a time. Only
    A-shape's token rule depends on the row beyond causality; for the other kinds the rule is
    "0 <= key <= row", and causal probabilities are 0 past the row, so their mass is a 1-D gather
    of the block's column sums (64x less work; tests check both against a brute-force mask).
    """
    seq_len = k.shape[0]
    device = q.device
    owners = torch.arange(len(indices), device=device)
    per_row = [c for c, ix in enumerate(indices) if ix.kind == Kind.A_SHAPE]
    per_key = [c for c, ix in enumerate(indices) if ix.kind != Kind.A_SHAPE]
    mass = torch.zeros(len(indices), dtype=torch.float64, device=device)
    rows_seen = 0
    for m in blocks:
        rows = torch.arange(m * BLOCK, min(m * BLOCK + BLOCK, seq_len), device=device)
        end = int(rows[-1]) + 1
        logits = (q[rows].float() @ k[:end].float().T) * scale
        future = torch.arange(end, device=device)[None, :] > rows[:, None]
        probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
        column_mass = probs.sum(0)
        # All candidates' keys side by side: one gather and one segmented sum per block, not per candidate.
        keys = {c: indices[c].block_keys(m).to(device) for c in per_row + per_key}
        if per_key:
            flat = torch.cat([keys[c] for c in per_key])
            valid = (flat >= 0) & (flat < end)
            owner = owners[per_key].repeat_interleave(torch.tensor([keys[c].numel() for c in per_key], device=device))
            mass.index_add_(0, owner, (column_mass[flat.clamp(0, end - 1)] * valid).double())
        if per_row:
            flat = torch.cat([keys[c] for c in per_row])
            allowed = torch.cat([indices[c].token_rule(rows[:, None], keys[c][None, :]) for c in per_row], 1)
            owner = owners[per_row].repeat_interleave(torch.tensor([keys[c].numel() for c in per_row], device=device))
            mass.index_add_(0, owner, (probs.index_select(1, flat.clamp(0, end - 1)) * allowed).sum(0).double())
        rows_seen += rows.numel()
    return (mass / rows_seen).clamp(max=1.0).tolist()


def evaluate_head(
    q: torch.Tensor, k: torch.Tensor, scale: float, patterns: Sequence[HeadPattern], blocks: Sequence[int]
) -> list[Candidate]:
    """Cost and recall of every pattern on one head (q [S, D] of the query head, k [S, D] of its KV head)."""
    seq_len = q.shape[0]
    indices = candidate_indices(q.cpu(), k.cpu(), patterns, scale)
    recalls = sampled_recall(q, k, scale, indices, blocks)
    dense = dense_tiles(seq_len)
    return [
        Candidate(p, tiles, tiles / dense, recall)
        for p, index, recall in zip(patterns, indices, recalls, strict=True)
        for tiles in (index_tiles(index),)
    ]


def choose(candidates: Sequence[Candidate], settings: SearchSettings) -> Candidate:
    """The head's pattern by the rule in this module's docstring."""
    dense = next(c for c in candidates if c.pattern.kind == Kind.DENSE)
    candidates = [c for c in candidates if c is dense or c.tiles < dense.tiles]  # no better than dense otherwise
    reaching = [c for c in candidates if c.recall >= settings.min_recall]
    finalists = reaching
    if settings.budget is not None:
        within = [c for c in candidates if c.density <= settings.budget]
        best = max((c.recall for c in within), default=-1.0)
        if within and best >= settings.min_recall:
            finalists = [c for c in within if c.recall >= best - settings.recall_tie]
    if not finalists:  # min_recall above even dense's float sum: dense keeps all attention by definition
        finalists = [dense]
    cheapest = min(c.tiles for c in finalists)
    near = [c for c in finalists if c.tiles <= cheapest * (1 + settings.cost_tie)]
    best = max(c.recall for c in near)  # equal cost: the most attention, simpler kinds on a tie
    tied = [c for c in near if c.recall >= best - settings.recall_tie]
    return min(tied, key=lambda c: (SIMPLICITY[c.pattern.kind], c.tiles, -c.recall))


def search_layer(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    settings: SearchSettings | None = None,
    on_head: Callable[[int], None] | None = None,
) -> list[HeadResult]:
    """Every query head of one layer: q [Hq, S, D], k [Hkv, S, D] after rotary embedding."""
    settings = settings or SearchSettings()
    if q.dim() != 3 or k.dim() != 3 or q.shape[1:] != k.shape[1:]:
        raise PatternError(
            f"Q must be [Hq, S, D] and K [Hkv, S, D] of the same S, D; got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    num_heads, seq_len, head_dim = q.shape
    validate_shapes(num_heads, k.shape[0], head_dim, num_heads)
    if seq_len < 1:
        raise PatternError("cannot search an empty sequence (S = 0)")
    group = num_heads // k.shape[0]
    patterns = settings.grid.patterns(seq_len)
    blocks = sample_query_blocks(seq_len, settings.sample_blocks)
    default_at = patterns.index(DEFAULT_HEAD)
    results = []
    with _intra_op_threads(settings.cpu_threads):
        for h in range(num_heads):
            candidates = evaluate_head(q[h], k[h // group], scale, patterns, blocks)
            results.append(HeadResult(choose(candidates, settings), candidates[default_at], tuple(candidates)))
            if on_head is not None:
                on_head(h)
    return results


@contextmanager
def _intra_op_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Summary:
    """Pattern mix, mean recall and estimated speed-up of the searched config and of the default."""

    kinds: dict[str, int]
    recall: float
    density: float
    default_recall: float
    default_density: float
    over_budget: int

    @property
    def speedup(self) -> float:
        return 1 / self.density

    @property
    def default_speedup(self) -> float:
        return 1 / self.default_density

    def to_json(self) -> dict[str, object]:
        return {
            "kinds": self.kinds,
            "mean_recall": round(self.recall, 6),
            "density": round(self.density, 6),
            "speedup": round(self.speedup, 4),
            "default_mean_recall": round(self.default_recall, 6),
            "default_density": round(self.default_density, 6),
            "default_speedup": round(self.default_speedup, 4),
            "heads_over_budget": self.over_budget,
        }


def summarize(layers: Sequence[Sequence[HeadResult]], budget: float | None = None) -> Summary:
    """Means over all heads; density is total tiles over total dense tiles (every head has the same S)."""
    heads = [r for layer in layers for r in layer]
    kinds = {kind.label: 0 for kind in Kind}
    for r in heads:
        kinds[r.chosen.pattern.kind.label] += 1
    n = len(heads)
    return Summary(
        kinds=kinds,
        recall=sum(r.chosen.recall for r in heads) / n,
        density=sum(r.chosen.density for r in heads) / n,
        default_recall=sum(r.default.recall for r in heads) / n,
        default_density=sum(r.default.density for r in heads) / n,
        over_budget=sum(budget is not None and r.chosen.density > budget for r in heads),
    )


def to_config(layers: Sequence[Sequence[HeadResult]], model: dict[str, object]) -> PatternConfig:
    """Our config format with each head's recall and density."""
    return PatternConfig(
        tuple(tuple(r.chosen.pattern for r in layer) for layer in layers),
        model,
        tuple(
            tuple({"recall": round(r.chosen.recall, 6), "density": round(r.chosen.density, 6)} for r in layer)
            for layer in layers
        ),
    )
