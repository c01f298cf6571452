"""`torch.ops.minfer.sparse_prefill_attention`: the PyTorch face of the op.

The CPU implementation is the reference in `minfer.patterns.reference`; the CUDA implementation is
registered by `minfer.runtime.kernels` (the kernel library's C ABI, the same path the TensorRT
plugin takes). Per-head fields travel as int lists, one per ONNX attribute, so export can map the
call onto one `minfer::SparsePrefillAttention` node unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..patterns.reference import sparse_prefill_attention as reference_attention
from ..patterns.spec import PER_HEAD_FIELDS, HeadPattern, validate_attributes

OP_NAME = "minfer::sparse_prefill_attention"


def attributes_to_patterns(
    kind: Sequence[int],
    sink: Sequence[int],
    local: Sequence[int],
    vertical_size: Sequence[int],
    slash_size: Sequence[int],
    last_q: Sequence[int],
    top_k: Sequence[int],
    scale: float,
) -> tuple[float, tuple[HeadPattern, ...]]:
    fields = dict(zip(PER_HEAD_FIELDS, (sink, local, vertical_size, slash_size, last_q, top_k), strict=True))
    return validate_attributes({"scale": scale, "block_size": 64, "kind": kind, **fields})


@torch.library.custom_op(OP_NAME, mutates_args=())
def sparse_prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kind: list[int],
    sink: list[int],
    local: list[int],
    vertical_size: list[int],
    slash_size: list[int],
    last_q: list[int],
    top_k: list[int],
    scale: float,
) -> torch.Tensor:
    """Causal sparse attention of Q [B, Hq, S, D] over K, V [B, Hkv, S, D] with per-head patterns."""
    scale, patterns = attributes_to_patterns(kind, sink, local, vertical_size, slash_size, last_q, top_k, scale)
    return reference_attention(q, k, v, patterns, scale)


@sparse_prefill_attention.register_fake
def _(q, k, v, kind, sink, local, vertical_size, slash_size, last_q, top_k, scale):
    return torch.empty_like(q)


def call_with_patterns(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patterns: Sequence[HeadPattern], scale: float
) -> torch.Tensor:
    """Call the op with HeadPattern objects (what configs hold)."""
    lists = {name: [getattr(p, name) for p in patterns] for name in PER_HEAD_FIELDS}
    return torch.ops.minfer.sparse_prefill_attention(q, k, v, [int(p.kind) for p in patterns], **lists, scale=scale)


# CUDA tensors go to the kernel library through its C ABI (minfer.runtime.kernels).
from .kernels import register_cuda_kernel  # noqa: E402

register_cuda_kernel()
