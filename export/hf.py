"""Hugging Face decoder models to ONNX with torch's dynamo exporter: dense, or sparse through the op.

The sparse route patches the model with `minfer.runtime.patch` (attention runs
`torch.ops.minfer.sparse_prefill_attention`) and maps that op onto one
`minfer::SparsePrefillAttention` node per layer with a custom translation table, so the exported
graph carries the layer's patterns exactly as the ONNX rewrite would write them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from onnxscript.values import Opset
from torch import nn
from torch.export import Dim
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from ..patterns.config import PatternConfig
from ..patterns.spec import DOMAIN, OP_TYPE, OPSET_VERSION, to_attributes
from ..runtime.patch import ATTENTION_NAME, patch, unpatch
from ..runtime.torch_op import attributes_to_patterns
from .errors import ExportError
from .schema import register_schema

EXAMPLE_BATCH = 2  # batch 1 would be specialised to a constant by torch.export
EXAMPLE_SEQ_LEN = 70
DEFAULT_OPSET = 18

TINY = {"vocab_size": 256, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}
TINY_FAMILIES = ("llama", "mistral", "qwen2", "phi3")


class LogitsOnly(nn.Module):
    """Pre-fill without a KV cache: input ids in, logits out (what the exporter can trace)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def tiny_model(
    family: str = "llama",
    *,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 64,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    **config_overrides: object,
) -> nn.Module:
    """A small randomly initialised decoder of a real architecture (no download); `config_overrides` win."""
    configs = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "phi3": Phi3Config}
    if family not in configs:
        raise ExportError(f"unknown model family {family!r}; expected one of {TINY_FAMILIES}")
    shape = {"num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads, "head_dim": head_dim}
    if family == "phi3":  # Phi-3 derives head_dim from the hidden size
        shape = {**shape, "hidden_size": num_heads * head_dim}
        shape.pop("head_dim")
    ids = {"max_position_embeddings": 4096, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    config = configs[family](**{**TINY, **shape, **ids, "sliding_window": None, **config_overrides})
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def export_dense(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """The model's plain ONNX export (dynamic batch and sequence length), as real users produce it."""
    return _export(model, path, opset, custom_translation_table=None)


def export_sparse(
    model: nn.Module, path: str | Path, patterns: PatternConfig | str | Path | None = None, opset: int = DEFAULT_OPSET
) -> Path:
    """Export with every layer's attention as one `minfer::SparsePrefillAttention` node.

    `patterns` is a config, a path to one, or None (the embedded default). The model is patched
    for the export and restored afterwards. Models with sliding-window layers are refused: the op
    is plain causal attention.
    """
    _refuse_sliding_window(model.config)
    patch(model, patterns, chunk_size=None)
    try:
        with _no_mask_for(ATTENTION_NAME):
            return _export(model, path, opset, {torch.ops.minfer.sparse_prefill_attention.default: _sparse_node})
    finally:
        unpatch(model)


def _sparse_node(q, k, v, kind, sink, local, vertical_size, slash_size, last_q, top_k, scale):
    """onnxscript translation of the torch op: the same attributes the ONNX rewrite writes."""
    scale, heads = attributes_to_patterns(kind, sink, local, vertical_size, slash_size, last_q, top_k, scale)
    register_schema()
    return getattr(Opset(DOMAIN, OPSET_VERSION), OP_TYPE)(q, k, v, **to_attributes(heads, scale))


@contextmanager
def _no_mask_for(attention_name: str) -> Iterator[None]:
    """While tracing, transformers builds an explicit causal mask (it cannot prove it redundant).

    The exported graph takes token ids only, so that mask is exactly causal, which the op applies
    itself: the patched attention gets no mask during the export.
    """
    previous = ALL_MASK_ATTENTION_FUNCTIONS[attention_name]
    ALL_MASK_ATTENTION_FUNCTIONS.register(attention_name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        ALL_MASK_ATTENTION_FUNCTIONS.register(attention_name, previous)


def _refuse_sliding_window(config: object) -> None:
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types) or (not layer_types and getattr(config, "sliding_window", None)):
        raise ExportError(
            f"{type(config).__name__} uses sliding-window attention; SparsePrefillAttention is plain causal "
            "attention, so this model cannot be exported sparse"
        )


def _export(model: nn.Module, path: str | Path, opset: int, custom_translation_table: dict | None) -> Path:
    path = Path(path)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (EXAMPLE_BATCH, EXAMPLE_SEQ_LEN))
    with torch.no_grad():
        program = torch.onnx.export(
            LogitsOnly(model).eval(),
            (ids,),
            dynamo=True,
            opset_version=opset,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: Dim("batch"), 1: Dim("sequence")}},
            custom_translation_table=custom_translation_table,
            verbose=False,
        )
    program.save(str(path))
    onnx.checker.check_model(str(path))
    return path
