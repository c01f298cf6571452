"""The PyTorch reference of SparsePrefillAttention: attention over exactly the built indices.

Works query block by query block, so memory stays O(64 x selected keys) and 32K tokens run on a
CPU. Softmax is float32 (float64 for float64 input); rows with no selected key give 0, not NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .indices import HeadIndex, build_head_index, num_blocks
from .spec import BLOCK, HeadPattern, PatternError, validate_layer, validate_scale, validate_shapes


def _masked_softmax_rows(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    logits = logits.masked_fill(~allowed, float("-inf"))
    peak = logits.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(logits - peak)
    total = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def attention_over_index(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: HeadIndex, scale: float
) -> torch.Tensor:
    """One head: q [S, D], k/v [S, D] of its KV head; returns [S, D] in the compute dtype."""
    seq_len = q.shape[0]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty(seq_len, v.shape[1], dtype=dtype)
    for m in range(num_blocks(seq_len)):
        rows = torch.arange(m * BLOCK, min(m * BLOCK + BLOCK, seq_len))
        keys = index.block_keys(m)
        allowed = index.token_rule(rows[:, None], keys[None, :])
        safe = keys.clamp(0, seq_len - 1)
        logits = (q[rows].to(dtype) @ k[safe].to(dtype).T) * scale
        out[rows] = _masked_softmax_rows(logits, allowed) @ v[safe].to(dtype)
    return out


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_pattern_heads: int) -> tuple[int, int]:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise PatternError(
            f"Q, K, V must be 4-D [B, H, S, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    batch, hq, seq_len, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2] != seq_len or k.shape[3] != head_dim:
        raise PatternError(
            f"K and V must be [B, Hkv, S, D] matching Q {tuple(q.shape)}; got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise PatternError(f"Q, K, V must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise PatternError(f"dtype {q.dtype} is not supported (float16, bfloat16; float32/float64 in the reference)")
    if seq_len < 1 or batch < 1:
        raise PatternError(f"B and S must be >= 1; got B={batch}, S={seq_len}")
    validate_shapes(hq, k.shape[1], head_dim, num_pattern_heads)
    return hq // k.shape[1], seq_len


def build_indices(
    q: torch.Tensor, k: torch.Tensor, patterns: Sequence[HeadPattern], scale: float
) -> list[list[HeadIndex]]:
    """Online indices for every (batch, query head): the reference of the kernels' index stage."""
    group, _ = _check_inputs(q, k, k, len(patterns))
    patterns = validate_layer(patterns)
    scale = validate_scale(scale)
    return [
        [build_head_index(q[b, h], k[b, h // group], patterns[h], scale) for h in range(q.shape[1])]
        for b in range(q.shape[0])
    ]


def sparse_prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patterns: Sequence[HeadPattern], scale: float
) -> torch.Tensor:
    """The op: O [B, Hq, S, D] in Q's dtype."""
    group, _ = _check_inputs(q, k, v, len(patterns))
    indices = build_indices(q, k, patterns, scale)
    out = torch.empty_like(q)
    for b, heads in enumerate(indices):
        for h, index in enumerate(heads):
            out[b, h] = attention_over_index(q[b, h], k[b, h // group], v[b, h // group], index, scale).to(q.dtype)
    return out


def dense_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, chunk: int = 1024
) -> torch.Tensor:
    """Dense causal GQA attention, chunked over queries; the accuracy baseline of every pattern."""
    group, seq_len = _check_inputs(q, k, v, q.shape[1])
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty_like(q)
    keys = torch.arange(seq_len)
    for h in range(q.shape[1]):
        kh, vh = k[:, h // group].to(dtype), v[:, h // group].to(dtype)
        for start in range(0, seq_len, chunk):
            rows = torch.arange(start, min(start + chunk, seq_len))
            logits = (q[:, h, rows].to(dtype) @ kh.transpose(-1, -2)) * scale
            weights = _masked_softmax_rows(logits, (keys[None, :] <= rows[:, None])[None])
            out[:, h, rows] = (weights @ vh).to(q.dtype)
    return out
