"""`minfer.patch(model, patterns)`: Hugging Face decoder models pre-fill with the sparse op.

The patch registers an attention function with transformers' AttentionInterface: a causal,
unpadded pre-fill (query length == key length, no mask) runs `torch.ops.minfer.sparse_prefill_attention`
with the layer's per-head patterns; decoding and chunked continuation (query shorter than the keys)
run transformers' dense SDPA, which is what they need. Per-token modules (MLPs, RMSNorms) are run
over sequence chunks so that a 1M-token pre-fill of an 8B-shaped model fits in one 80 GB GPU: their
intermediates (the MLP's 14336-wide activations, the norms' float32 copies) dominate memory at that
length. The RMSNorms of the supported families also run as torch's fused `rms_norm` (the same arithmetic:
float32 statistics, a cast, then the weight), one pass over the hidden states where the module's own
forward makes seven. Pass `logits_to_keep=1` to the model to project only the last position to the
vocabulary.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import MistralRMSNorm
from transformers.models.phi3.modeling_phi3 import Phi3RMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from ..patterns.config import PatternConfig, default_config, load_config
from ..patterns.spec import PatternError
from .torch_op import call_with_patterns

ATTENTION_NAME = "minfer"
DEFAULT_CHUNK = 65536
PER_TOKEN_MODULES = (
    "mlp",
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
# RMSNorms whose forward is `weight * rms_norm(x in float32).to(x.dtype)`; others keep their own forward.
FUSABLE_NORMS = (LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, Phi3RMSNorm)


def _minfer_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    patterns = module._minfer_patterns
    if query.shape[2] != key.shape[2]:  # decoding, or pre-fill continuing a cache: dense
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if attention_mask is not None:
        raise PatternError(
            "minfer sparse pre-fill takes unpadded causal prompts; this batch has a padding or custom attention mask "
            "(pre-fill padded prompts one by one, or unpatch the model)"
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = call_with_patterns(query.contiguous(), key.contiguous(), value.contiguous(), patterns, scale)
    return out.transpose(1, 2), None


ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, _minfer_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """Self-attention modules in layer order (transformers names them `self_attn`)."""
    return [m for name, m in model.named_modules() if name.endswith("self_attn")]


def _chunked(forward: Callable[[torch.Tensor], torch.Tensor], chunk: int) -> Callable[..., torch.Tensor]:
    """Run a per-token module over sequence chunks into one preallocated output."""

    def run(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        length = hidden_states.shape[-2]
        if length <= chunk:
            return forward(hidden_states)
        first = forward(hidden_states[..., :chunk, :])
        out = first.new_empty((*first.shape[:-2], length, first.shape[-1]))
        out[..., :chunk, :] = first
        for start in range(chunk, length, chunk):
            out[..., start : start + chunk, :] = forward(hidden_states[..., start : start + chunk, :])
        return out

    return run


def _fused_rms_norm(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's RMSNorm as torch's fused kernel: one pass where the module's forward makes seven (float32
    copy, pow, mean, product, cast, weight), element-wise kernels that are much of the 347 ms per layer
    outside GEMMs and attention at 1M tokens (docs/benchmarks.md)."""

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(hidden_states, module.weight.shape, eps=module.variance_epsilon)
        return module.weight * normed

    return forward


def chunk_per_token_modules(model: nn.Module, chunk: int) -> list[nn.Module]:
    """Run MLPs and norms over sequence chunks (the known RMSNorms fused); returns the modules changed, for
    `restore_forwards`."""
    changed = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in PER_TOKEN_MODULES or name.endswith("model.norm"):
            forward = _fused_rms_norm(module) if isinstance(module, FUSABLE_NORMS) else module.forward
            module.forward = types.MethodType(_chunked(forward, chunk), module)
            changed.append(module)
    return changed


def restore_forwards(modules: list[nn.Module]) -> None:
    for module in modules:
        del module.forward


def patch(
    model: nn.Module, patterns: PatternConfig | str | Path | None = None, *, chunk_size: int | None = DEFAULT_CHUNK
) -> nn.Module:
    """Make `model` pre-fill with sparse attention; `patterns` is a config, a path to one, or None (the default).

    The config must have one layer per decoder layer and one head per query head.
    """
    if getattr(model, "_minfer_patched", None) is not None:
        raise RuntimeError("model is already patched by minfer; call minfer.unpatch(model) first")
    config = model.config
    attention = _attention_modules(model)
    if not attention:
        raise PatternError(f"{type(model).__name__} has no `self_attn` modules: not a supported decoder model")
    num_heads = config.num_attention_heads
    if patterns is None:
        patterns = default_config(len(attention), num_heads)
    elif not isinstance(patterns, PatternConfig):
        patterns = load_config(patterns)
    if patterns.num_layers != len(attention):
        raise PatternError(
            f"pattern config has {patterns.num_layers} layers but the model has {len(attention)} attention layers"
        )
    for i, (module, heads) in enumerate(zip(attention, patterns.layers, strict=True)):
        if len(heads) != num_heads:
            raise PatternError(
                f"layer {i}: pattern config has {len(heads)} heads but the model has {num_heads} query heads"
            )
        module._minfer_patterns = heads
    chunked = chunk_per_token_modules(model, chunk_size) if chunk_size is not None else []
    model._minfer_patched = (config._attn_implementation, chunked)
    model.set_attn_implementation(ATTENTION_NAME)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch`: the previous attention implementation and the modules' own forwards."""
    state = getattr(model, "_minfer_patched", None)
    if state is None:
        raise RuntimeError("model is not patched by minfer")
    previous, chunked = state
    restore_forwards(chunked)
    for module in _attention_modules(model):
        del module._minfer_patterns
    model.set_attn_implementation(previous)
    del model._minfer_patched
    return model
