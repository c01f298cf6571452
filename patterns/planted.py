"""Q/K with known attention structure: planted heads that prove the search, and the LLM-like family.

Planted heads build the logits from features whose dot products are known, so every head carries
the structure of one pattern kind and nearly all of its attention mass lies in the planted key set
(`PlantedHead.keys`; tests check the fraction). Planted heads are head_dim 128 (room for their
features) and use the usual `1/sqrt(D)` scale.

- A-shape: a sink feature on the first keys plus a positional kernel that decays with the distance
  `i - j` (random Fourier features of a Gaussian), so each query attends sinks and a local window.
- vertical-slash: a heavy-column feature on a few keys spread over the sequence, per-position
  random codes where query `i` carries the codes of keys `i - d` for a few distances `d` (diagonals),
  and a local band.
- block-sparse: every 64-token block belongs to a cluster with an orthonormal centroid and queries
  attend the blocks of their own cluster, which no column or diagonal set describes.

`llm_like_qk` is the pinned benchmark family of /work/shared/bench/llm-like-inputs.md (rotary decay,
sinks on keys 0..3), shared by every bench so that numbers compare across runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .indices import num_blocks
from .spec import BLOCK, Kind, PatternError

SINK_TOKENS = 4
"""Planted sinks: the first keys, as real models put them."""


@dataclass(frozen=True)
class PlantedHead:
    """One head's Q/K [S, D] and, per query, the keys its planted structure names."""

    kind: Kind
    q: torch.Tensor
    k: torch.Tensor
    scale: float
    keys: Callable[[int], torch.Tensor]  # query position -> planted keys (ascending, all <= i)

    def planted_mass(self, rows: torch.Tensor | None = None) -> float:
        """Mean over queries of the causal softmax mass on the planted keys (the structure's share)."""
        seq_len = self.q.shape[0]
        rows = torch.arange(seq_len) if rows is None else rows
        total = 0.0
        for i in rows.tolist():
            probs = torch.softmax((self.q[i].double() @ self.k[: i + 1].double().T) * self.scale, dim=0)
            total += float(probs[self.keys(i)].sum())
        return total / rows.numel()


def _window_features(
    seq_len: int, window: int, freqs_count: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """([S, 2F] query side, [S, 2F] key side) whose dot product is a flat-top kernel of i - j on [0, window).

    Random Fourier features of a Gaussian make phi(i) . phi(j) = sum_f cos(w_f (i - j)); four Gaussian
    bumps spread over the window (keys shifted by each bump's centre) sum to a plateau, about 0.9 to
    1.3 of the peak inside the window and under 0.2 beyond it.
    """
    bumps = 4
    freqs = torch.randn(freqs_count, generator=gen, dtype=torch.float64) * (2 * bumps / window)
    pos = torch.arange(seq_len, dtype=torch.float64)

    def phi(p: torch.Tensor) -> torch.Tensor:
        angles = p[:, None] * freqs[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)

    keys = sum(phi(pos + (b + 0.5) * window / bumps) for b in range(bumps))
    return phi(pos) / freqs_count, keys


def _check(seq_len: int, head_dim: int) -> None:
    if seq_len < 1:
        raise PatternError(f"planted heads need seq_len >= 1, got {seq_len}")
    if head_dim != 128:
        raise PatternError(f"planted heads are built for head_dim 128 (room for their features), got {head_dim}")


def _head(
    kind: Kind, q: torch.Tensor, k: torch.Tensor, keys: Callable[[int], torch.Tensor], dtype: torch.dtype
) -> PlantedHead:
    """Logits were designed at scale 1: fold sqrt(D) into Q so the head uses the usual 1/sqrt(D)."""
    root = math.sqrt(q.shape[1])
    return PlantedHead(kind, (q * root).to(dtype), k.to(dtype), 1 / root, keys)


def _causal_range(start: int, stop: int) -> set[int]:
    return set(range(max(start, 0), stop))


def planted_a_shape(
    seq_len: int, head_dim: int = 128, *, window: int = 256, seed: int = 0, dtype: torch.dtype = torch.float32
) -> PlantedHead:
    """Sinks (keys 0..3) plus a local window of `window` keys."""
    _check(seq_len, head_dim)
    gen = torch.Generator().manual_seed(seed)
    freqs_count = (head_dim - 2) // 2
    q = torch.zeros(seq_len, head_dim, dtype=torch.float64)
    k = torch.zeros_like(q)
    q[:, : 2 * freqs_count], k[:, : 2 * freqs_count] = _window_features(seq_len, window, freqs_count, gen)
    q[:, : 2 * freqs_count] *= 13.0  # window logits about 12 to 17
    q[:, -1] = 1.0
    k[:SINK_TOKENS, -1] = 19.0  # the sinks hold about half of the mass, as in real heads

    def keys(i: int) -> torch.Tensor:
        return torch.tensor(sorted(_causal_range(0, min(SINK_TOKENS, i + 1)) | _causal_range(i - window + 1, i + 1)))

    return _head(Kind.A_SHAPE, q, k, keys, dtype)


def planted_vertical_slash(
    seq_len: int,
    head_dim: int = 128,
    *,
    columns: int = 8,
    distances: tuple[int, ...] = (613, 1307, 2711),
    window: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> PlantedHead:
    """Heavy key columns spread over the sequence, strong diagonals at `distances`, and a local band.

    Each part holds a large share of the mass, so only a pattern with all three reaches high recall.
    """
    _check(seq_len, head_dim)
    gen = torch.Generator().manual_seed(seed)
    freqs_count = 16
    local_dims = 2 * freqs_count
    code_dim = head_dim - local_dims - 1
    q = torch.zeros(seq_len, head_dim, dtype=torch.float64)
    k = torch.zeros_like(q)
    q[:, :local_dims], k[:, :local_dims] = _window_features(seq_len, window, freqs_count, gen)
    q[:, :local_dims] *= 16.0
    # Diagonals: query i carries the random codes of keys i - d. Peak logit 25; the codes interfere with
    # std 25 * sqrt(len(distances) / code_dim), whose total mass stays well under 1% (planted_mass checks).
    codes = torch.randn(seq_len, code_dim, generator=gen, dtype=torch.float64)
    codes /= codes.norm(dim=1, keepdim=True)
    k[:, local_dims:-1] = codes
    for d in distances:
        q[d:, local_dims:-1] += 25.0 * codes[: max(seq_len - d, 0)]
    heavy = torch.unique(torch.randperm(seq_len, generator=gen)[:columns])
    q[:, -1] = 1.0
    k[heavy, -1] = 24.0

    def keys(i: int) -> torch.Tensor:
        diagonals = {i - d for d in distances if d <= i}
        return torch.tensor(sorted(diagonals | _causal_range(i - window + 1, i + 1) | set(heavy[heavy <= i].tolist())))

    return _head(Kind.VERTICAL_SLASH, q, k, keys, dtype)


def planted_block_sparse(
    seq_len: int,
    head_dim: int = 128,
    *,
    blocks_per_cluster: int = 6,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> PlantedHead:
    """Key blocks in clusters of `blocks_per_cluster` random blocks; queries attend their own cluster."""
    _check(seq_len, head_dim)
    gen = torch.Generator().manual_seed(seed)
    nb = num_blocks(seq_len)
    clusters = -(-nb // blocks_per_cluster)
    if clusters > head_dim:
        raise PatternError(f"{clusters} clusters need head_dim >= {clusters}; raise blocks_per_cluster")
    cluster_of_block = torch.randperm(nb, generator=gen) // blocks_per_cluster
    centroids = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=gen, dtype=torch.float64))[0][:clusters]
    cluster = cluster_of_block[torch.arange(seq_len) // BLOCK]
    k = centroids[cluster] + 0.05 * torch.randn(seq_len, head_dim, generator=gen, dtype=torch.float64)
    q = 16.0 * centroids[cluster]  # logit 16 inside the cluster, about 0 outside

    def keys(i: int) -> torch.Tensor:
        same = (cluster_of_block == cluster_of_block[i // BLOCK]).nonzero().flatten()
        chunks = (same[:, None] * BLOCK + torch.arange(BLOCK)[None, :]).flatten()
        return chunks[chunks <= i]

    return _head(Kind.BLOCK_SPARSE, q, k, keys, dtype)


PLANTERS: dict[Kind, Callable[..., PlantedHead]] = {
    Kind.A_SHAPE: planted_a_shape,
    Kind.VERTICAL_SLASH: planted_vertical_slash,
    Kind.BLOCK_SPARSE: planted_block_sparse,
}


def rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of x [..., S, D] at positions 0..S-1 (rotate-half convention, as Llama)."""
    seq_len, head_dim = x.shape[-2:]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=x.device, dtype=torch.float64) / head_dim)
    angles = torch.arange(seq_len, device=x.device, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    half = head_dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def llm_like_qk(
    num_q_heads: int,
    num_kv_heads: int,
    seq_len: int,
    head_dim: int = 128,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    theta: float = 500000.0,
    mean_scale: float = 2.0,
    sigma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q [Hq, S, D], K [Hkv, S, D] of the pinned LLM-like family (rotary decay, sinks on keys 0..3).

    Per KV head a mean direction mu (norm sqrt(D) * mean_scale); keys and the queries of its group
    are RoPE(mu + sigma * mean_scale * noise), each with its own noise; keys 0..3 get + 4 mu.
    """
    if num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise PatternError(f"query heads ({num_q_heads}) must be a positive multiple of KV heads ({num_kv_heads})")
    group = num_q_heads // num_kv_heads
    q = torch.empty(num_q_heads, seq_len, head_dim, device=device, dtype=dtype)
    k = torch.empty(num_kv_heads, seq_len, head_dim, device=device, dtype=dtype)
    for h in range(num_kv_heads):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + h)
        mu = torch.randn(head_dim, generator=gen, device=device)
        mu *= math.sqrt(head_dim) * mean_scale / mu.norm()
        noise = sigma * mean_scale
        keys = mu + noise * torch.randn(seq_len, head_dim, generator=gen, device=device)
        rotated = rotary(keys, theta)
        rotated[:SINK_TOKENS] += 4 * mu
        k[h] = rotated.to(dtype)
        for g in range(group):
            queries = mu + noise * torch.randn(seq_len, head_dim, generator=gen, device=device)
            q[h * group + g] = rotary(queries, theta).to(dtype)
    return q, k
