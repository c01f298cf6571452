"""Q/K after rotary embedding from a Hugging Face model, one layer at a time.

The capture registers an attention function with transformers' `AttentionInterface`: every attention
module of a model calls it with Q [B, Hq, S, D] and K [B, Hkv, S, D] already rotated (and K not yet
repeated for GQA), which is exactly what the op takes. It hands them to a callback and then computes
attention with transformers' own SDPA path, so the model's output is unchanged. The callback runs
while the forward pass is at that layer, so a search holds one layer's Q/K at a time, never all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from .spec import PatternError

CAPTURE = "minfer_capture"

LayerCallback = Callable[[int, torch.Tensor, torch.Tensor, float], None]
"""(layer index, Q [Hq, S, D], K [Hkv, S, D], softmax scale)."""

_callback: ContextVar[LayerCallback | None] = ContextVar("minfer_capture_callback", default=None)


def _capturing_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    callback = _callback.get()
    if callback is not None:
        if query.shape[0] != 1:
            raise PatternError(f"the capture takes one sequence (batch 1), got batch {query.shape[0]}")
        scale = kwargs.get("scaling") or query.shape[-1] ** -0.5
        callback(int(module.layer_idx), query[0], key[0], float(scale))
    return sdpa_attention_forward(module, query, key, *args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE, _capturing_attention)
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.nn.Module, Any]:
    """The base model (no LM head) and its tokenizer, or None where the directory has none.

    `path` is a local model directory (weights loaded) or a config.json / a directory holding only
    one (randomly initialised from `seed`: what tests use). Nothing is downloaded.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise PatternError(f"model {path}: no config.json found (give a model directory or a config.json)")
    try:
        config = AutoConfig.from_pretrained(str(config_file), local_files_only=True)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise PatternError(f"model {path}: cannot read {config_file}: {e}") from None
    _register()
    try:
        if path.is_dir() and any(f.suffix in (".safetensors", ".bin") for f in path.iterdir()):
            model = AutoModel.from_pretrained(
                str(path), local_files_only=True, dtype=dtype, attn_implementation=CAPTURE
            )
        else:
            torch.manual_seed(seed)
            model = AutoModel.from_config(config, dtype=dtype, attn_implementation=CAPTURE)
    except (ValueError, AssertionError, OSError, KeyError, TypeError, RuntimeError) as e:
        raise PatternError(f"model {path}: transformers cannot build it: {type(e).__name__}: {e}") from None
    tokenizer = None
    if path.is_dir() and any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.to(device).eval(), tokenizer


def read_calibration(path: str | Path, tokenizer: Any, vocab_size: int, length: int | None = None) -> torch.Tensor:
    """Token ids [S]: a .json list of ints, or text tokenized with the model's tokenizer; first `length`."""
    path = Path(path)
    if not path.is_file():
        raise PatternError(f"calibration {path} does not exist")
    if path.suffix == ".json":
        try:
            ids = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PatternError(f"calibration {path} is not valid JSON: {e}") from None
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise PatternError(f"calibration {path}: a .json calibration must be a list of token ids (integers)")
    else:
        if tokenizer is None:
            raise PatternError(
                f"calibration {path} is text but the model has no tokenizer; give token ids as a .json list"
            )
        ids = tokenizer(path.read_text(), add_special_tokens=True)["input_ids"]
    if not ids:
        raise PatternError(f"calibration {path} holds no tokens")
    if length is not None:
        if length < 1:
            raise PatternError(f"--length must be >= 1, got {length}")
        if len(ids) < length:
            raise PatternError(f"calibration {path} has {len(ids)} tokens; --length asks for {length}")
        ids = ids[:length]
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise PatternError(f"calibration {path}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return torch.tensor(ids, dtype=torch.int64)


@contextmanager
def capturing(on_layer: LayerCallback) -> Iterator[None]:
    token = _callback.set(on_layer)
    try:
        yield
    finally:
        _callback.reset(token)


def capture_layers(model: torch.nn.Module, token_ids: torch.Tensor, on_layer: LayerCallback) -> None:
    """Run the model on one sequence, calling `on_layer` with each layer's rotated Q/K as it is reached."""
    if model.config._attn_implementation != CAPTURE:
        raise PatternError(f"the model must be loaded with load_model (attention implementation {CAPTURE!r})")
    device = next(model.parameters()).device
    with torch.no_grad(), capturing(on_layer):
        model(input_ids=token_ids[None].to(device), use_cache=False)
