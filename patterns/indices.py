"""Online index building for the three patterns, exactly as docs/op-spec.md defines it.

The GPU kernels implement the same stages (estimate, select, chunk lags, per-block chunks and
columns), so each stage is its own function: a test can feed the kernels' scores into the
reference selection and compare every intermediate exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import BLOCK, HeadPattern, Kind


def num_blocks(seq_len: int) -> int:
    return -(-seq_len // BLOCK)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def vertical_slash_scores(
    q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and diagonal sums of the last queries' causal softmax.

    q: [S, D] one query head, k: [S, D] its KV head. Returns (column [S], diagonal [S]) where
    diagonal[d] sums the probabilities on offset d = i - j.
    """
    seq_len = k.shape[0]
    lq = min(last_q, seq_len)
    dtype = _compute_dtype(q)
    rows = torch.arange(seq_len - lq, seq_len)
    keys = torch.arange(seq_len)
    logits = (q[seq_len - lq :].to(dtype) @ k.to(dtype).T) * scale
    offset = rows[:, None] - keys[None, :]
    logits = logits.masked_fill(offset < 0, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    column = probs.sum(dim=0)
    visible = offset >= 0
    diagonal = torch.zeros(seq_len, dtype=dtype).index_add_(0, offset[visible], probs[visible])
    return column, diagonal


def top_with_forced(scores: torch.Tensor, forced: int, total: int) -> torch.Tensor:
    """Indices 0..forced-1, then the highest scores among the rest until `total`; ascending.

    Ties go to the lower index (stable sort), so the GPU selection can match exactly.
    """
    n = scores.shape[0]
    forced = min(forced, n)
    total = min(max(total, forced), n)
    rest = scores[forced:]
    order = torch.sort(-rest, stable=True).indices[: total - forced] + forced
    chosen = torch.cat([torch.arange(forced), order])
    return torch.sort(chosen).values


def chunk_lags(diagonals: torch.Tensor) -> torch.Tensor:
    """Greedy 64-key cover of the selected diagonals, oldest key first; lags descending."""
    lags: list[int] = []
    for d in sorted(diagonals.tolist(), reverse=True):
        if lags and d >= lags[-1]:
            continue
        lags.append(lags[-1] - BLOCK if lags and d > lags[-1] - BLOCK else d)
    return torch.tensor(lags, dtype=torch.int64)


def held_lags(lags: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Bitmap over u = start_m - key in [-63, S): True where a chunk of any query block holds the key."""
    marks = torch.zeros(seq_len + 2 * BLOCK, dtype=torch.int64)
    marks.index_add_(0, lags.clamp(min=0), torch.ones_like(lags))  # u = c - 63 sits at index c
    marks.index_add_(0, lags + BLOCK, -torch.ones_like(lags))
    return marks.cumsum(0)[: seq_len + BLOCK - 1] > 0


def pooled_block_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean-pooled q̄_m · k̄_n over 64-token blocks (ragged last block: mean of its real rows)."""
    seq_len = q.shape[0]
    nb = num_blocks(seq_len)
    dtype = _compute_dtype(q)
    block_of = torch.arange(seq_len) // BLOCK
    counts = torch.bincount(block_of, minlength=nb).to(dtype)[:, None]

    def pool(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(nb, x.shape[1], dtype=dtype).index_add_(0, block_of, x.to(dtype)) / counts

    return pool(q) @ pool(k).T


def block_sparse_select(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """[nb, min(top_k, nb)] key blocks per query block, ascending, padded with -1 at the end."""
    nb = scores.shape[0]
    width = min(top_k, nb)
    out = torch.full((nb, width), -1, dtype=torch.int64)
    for m in range(nb):
        keep = min(top_k, m + 1) - 1
        order = torch.sort(-scores[m, :m], stable=True).indices[:keep]
        chosen = torch.sort(torch.cat([order, torch.tensor([m])])).values
        out[m, : chosen.numel()] = chosen
    return out


@dataclass(frozen=True)
class HeadIndex:
    """What one head computes, query block by query block (chunks + columns + token rule)."""

    kind: Kind
    seq_len: int
    sink: int = 0
    local: int = 0
    columns: torch.Tensor | None = None  # vertical_slash: selected key columns, ascending
    diagonals: torch.Tensor | None = None  # vertical_slash: selected offsets, ascending
    lags: torch.Tensor | None = None  # vertical_slash: chunk lags, descending
    held: torch.Tensor | None = None  # vertical_slash: held[u + 63] iff some chunk lag c has c-63 <= u <= c
    blocks: torch.Tensor | None = None  # block_sparse: [nb, k] key blocks, -1 padded

    @property
    def num_blocks(self) -> int:
        return num_blocks(self.seq_len)

    def chunk_starts(self, m: int) -> torch.Tensor:
        """First key of each 64-key chunk query block m computes, ascending."""
        start = m * BLOCK
        if self.kind == Kind.DENSE:
            return torch.arange(0, start + 1, BLOCK)
        if self.kind == Kind.A_SHAPE:
            sink_blocks = num_blocks(self.sink) if self.sink > 0 else 0
            first_local = max(start - self.local + 1, 0) // BLOCK
            blocks = sorted(set(range(min(sink_blocks, m + 1))) | set(range(first_local, m + 1)))
            return torch.tensor(blocks, dtype=torch.int64) * BLOCK
        if self.kind == Kind.BLOCK_SPARSE:
            row = self.blocks[m]
            return row[row >= 0] * BLOCK
        lags = self.lags[self.lags < start + BLOCK]
        return start - lags  # lags descend, so starts ascend

    def block_columns(self, m: int) -> torch.Tensor:
        """Gathered single-key columns of query block m that no chunk holds, ascending."""
        if self.kind != Kind.VERTICAL_SLASH:
            return torch.empty(0, dtype=torch.int64)
        start = m * BLOCK
        cols = self.columns[self.columns < start + BLOCK]
        return cols[~self.held[start - cols + BLOCK - 1]]

    def token_rule(self, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The per-token mask inside selected chunks/columns: causal, in range, A-shape window."""
        ok = (keys >= 0) & (keys <= rows) & (keys < self.seq_len)
        if self.kind == Kind.A_SHAPE:
            ok &= (keys < self.sink) | (rows - keys < self.local)
        return ok

    def block_keys(self, m: int) -> torch.Tensor:
        """All key positions (possibly out of range, masked later) that query block m reads."""
        chunks = self.chunk_starts(m)
        chunk_keys = (chunks[:, None] + torch.arange(BLOCK)[None, :]).reshape(-1)
        return torch.cat([chunk_keys, self.block_columns(m)])

    def column_tiles(self, m: int) -> int:
        """Tiles query block m's gathered columns take: up to 64 columns per tile, as the kernels gather them."""
        return num_blocks(self.block_columns(m).numel())

    def tiles(self) -> int:
        """Work in 64x64 tiles (a group of up to 64 columns is one tile), as the kernels count it."""
        return sum(self.chunk_starts(m).numel() + self.column_tiles(m) for m in range(self.num_blocks))


def vertical_slash_counts(pattern: HeadPattern, seq_len: int) -> tuple[int, int]:
    """Columns and diagonals a vertical-slash head keeps at seq_len, as `top_with_forced` selects them:
    the budgets, raised to the forced sink columns and local diagonals, capped at S."""
    return (
        min(seq_len, max(pattern.vertical_size, pattern.sink)),
        min(seq_len, max(pattern.slash_size, pattern.local)),
    )


def dense_tiles(seq_len: int) -> int:
    """Tiles of dense causal attention (block diagonal included)."""
    nb = num_blocks(seq_len)
    return nb * (nb + 1) // 2


def build_head_index(q: torch.Tensor, k: torch.Tensor, pattern: HeadPattern, scale: float) -> HeadIndex:
    """The online index of one head: q [S, D] of the query head, k [S, D] of its KV head."""
    seq_len = q.shape[0]
    if pattern.kind == Kind.DENSE:
        return HeadIndex(Kind.DENSE, seq_len)
    if pattern.kind == Kind.A_SHAPE:
        return HeadIndex(Kind.A_SHAPE, seq_len, sink=pattern.sink, local=pattern.local)
    if pattern.kind == Kind.BLOCK_SPARSE:
        blocks = block_sparse_select(pooled_block_scores(q, k), pattern.top_k)
        return HeadIndex(Kind.BLOCK_SPARSE, seq_len, blocks=blocks)
    column_scores, diagonal_scores = vertical_slash_scores(q, k, pattern.last_q, scale)
    columns = top_with_forced(column_scores, pattern.sink, pattern.vertical_size)
    diagonals = top_with_forced(diagonal_scores, pattern.local, pattern.slash_size)
    lags = chunk_lags(diagonals)
    return HeadIndex(
        Kind.VERTICAL_SLASH,
        seq_len,
        columns=columns,
        diagonals=diagonals,
        lags=lags,
        held=held_lags(lags, seq_len),
    )
