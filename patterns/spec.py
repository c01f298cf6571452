"""The SparsePrefillAttention contract: names, per-head patterns and the one validator.

Every face of the op (PyTorch, ONNX, TensorRT) takes its attributes through `validate_attributes`
so that a bad pattern is refused with the same message everywhere (docs/op-spec.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

DOMAIN = "minfer"
OP_TYPE = "SparsePrefillAttention"
OPSET_VERSION = 1
PLUGIN_NAME = OP_TYPE
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "minfer"
BLOCK = 64
SUPPORTED_HEAD_DIMS = (64, 128)
MAX_LAST_Q = 256
INT32_MAX = 2**31 - 1


class Kind(IntEnum):
    """Pattern kinds; the integer values are the ONNX/TensorRT attribute encoding."""

    DENSE = 0
    A_SHAPE = 1
    VERTICAL_SLASH = 2
    BLOCK_SPARSE = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int) -> Kind:
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise PatternError(f"unknown pattern kind {value!r}; expected one of {KIND_LABELS}") from None
        try:
            return cls(int(value))
        except ValueError:
            raise PatternError(f"unknown pattern kind {value!r}; expected 0..{len(cls) - 1}") from None


KIND_LABELS = tuple(k.label for k in Kind)


class PatternError(ValueError):
    """An invalid pattern, attribute or config; the message names where."""


PER_HEAD_FIELDS = ("sink", "local", "vertical_size", "slash_size", "last_q", "top_k")

# field -> (inclusive minimum, inclusive maximum) for the kinds that take it
_FIELD_RANGES: dict[Kind, dict[str, tuple[int, int]]] = {
    Kind.DENSE: {},
    Kind.A_SHAPE: {"sink": (0, INT32_MAX), "local": (1, INT32_MAX)},
    Kind.VERTICAL_SLASH: {
        "vertical_size": (0, INT32_MAX),
        "slash_size": (0, INT32_MAX),
        "last_q": (1, MAX_LAST_Q),
        "sink": (0, INT32_MAX),
        "local": (1, INT32_MAX),
    },
    Kind.BLOCK_SPARSE: {"top_k": (1, INT32_MAX)},
}


@dataclass(frozen=True)
class HeadPattern:
    """One query head's pattern; fields its kind does not take are 0."""

    kind: Kind = Kind.DENSE
    sink: int = 0
    local: int = 0
    vertical_size: int = 0
    slash_size: int = 0
    last_q: int = 0
    top_k: int = 0

    @classmethod
    def dense(cls) -> HeadPattern:
        return cls(Kind.DENSE)

    @classmethod
    def a_shape(cls, sink: int, local: int) -> HeadPattern:
        return cls(Kind.A_SHAPE, sink=sink, local=local)

    @classmethod
    def vertical_slash(
        cls, vertical_size: int, slash_size: int, *, last_q: int = 64, sink: int = 30, local: int = 100
    ) -> HeadPattern:
        return cls(
            Kind.VERTICAL_SLASH,
            vertical_size=vertical_size,
            slash_size=slash_size,
            last_q=last_q,
            sink=sink,
            local=local,
        )

    @classmethod
    def block_sparse(cls, top_k: int) -> HeadPattern:
        return cls(Kind.BLOCK_SPARSE, top_k=top_k)

    def params(self) -> dict[str, int]:
        """The fields this head's kind takes, for configs and reports."""
        return {name: getattr(self, name) for name in _FIELD_RANGES[self.kind]}

    def validate(self, head: int, layer: int | None = None) -> HeadPattern:
        where = f"layer {layer}, head {head}" if layer is not None else f"head {head}"
        kind = self.kind
        if not isinstance(kind, Kind):
            raise PatternError(f"{where}: kind must be a Kind, got {kind!r}")
        ranges = _FIELD_RANGES[kind]
        for name in PER_HEAD_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PatternError(f"{where} ({kind.label}): {name} must be an integer, got {value!r}")
            if name not in ranges:
                if value != 0:
                    raise PatternError(f"{where} ({kind.label}): {name} must be 0 for this kind, got {value}")
                continue
            low, high = ranges[name]
            if not low <= value <= high:
                raise PatternError(f"{where} ({kind.label}): {name} must be in [{low}, {high}], got {value}")
        return self


LayerPattern = tuple[HeadPattern, ...]


def validate_layer(heads: Sequence[HeadPattern], layer: int | None = None) -> LayerPattern:
    if len(heads) == 0:
        where = f"layer {layer}" if layer is not None else "layer"
        raise PatternError(f"{where}: has no heads")
    return tuple(h.validate(i, layer) for i, h in enumerate(heads))


def validate_shapes(num_q_heads: int, num_kv_heads: int, head_dim: int, num_pattern_heads: int) -> None:
    """Shape rules shared by every face of the op."""
    if num_kv_heads < 1 or num_q_heads % num_kv_heads != 0:
        raise PatternError(f"query heads ({num_q_heads}) must be a positive multiple of KV heads ({num_kv_heads})")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise PatternError(f"head_dim {head_dim} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if num_pattern_heads != num_q_heads:
        raise PatternError(f"pattern has {num_pattern_heads} heads but Q has {num_q_heads} query heads")


def validate_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise PatternError(f"scale must be a finite number > 0, got {scale!r}")
    return float(scale)


def to_attributes(heads: Sequence[HeadPattern], scale: float) -> dict[str, Any]:
    """The ONNX/TensorRT attribute set of one layer (plugin routing strings included)."""
    heads = validate_layer(heads)
    attrs: dict[str, Any] = {
        "scale": validate_scale(scale),
        "block_size": BLOCK,
        "kind": [int(h.kind) for h in heads],
    }
    for name in PER_HEAD_FIELDS:
        attrs[name] = [getattr(h, name) for h in heads]
    attrs["plugin_version"] = PLUGIN_VERSION
    attrs["plugin_namespace"] = PLUGIN_NAMESPACE
    return attrs


def validate_attributes(
    attrs: Mapping[str, Any], num_heads: int | None = None, layer: int | None = None
) -> tuple[float, LayerPattern]:
    """Parse and check an attribute set; return (scale, per-head patterns)."""
    where = f"layer {layer}: " if layer is not None else ""
    known = {"scale", "block_size", "kind", "plugin_version", "plugin_namespace", *PER_HEAD_FIELDS}
    unknown = sorted(set(attrs) - known)
    if unknown:
        raise PatternError(f"{where}unknown attribute(s) {unknown}")
    missing = sorted({"scale", "block_size", "kind", *PER_HEAD_FIELDS} - set(attrs))
    if missing:
        raise PatternError(f"{where}missing attribute(s) {missing}")
    if attrs["block_size"] != BLOCK:
        raise PatternError(f"{where}block_size must be {BLOCK}, got {attrs['block_size']!r}")
    for name, expected in (("plugin_version", PLUGIN_VERSION), ("plugin_namespace", PLUGIN_NAMESPACE)):
        if name in attrs and attrs[name] != expected:
            raise PatternError(f"{where}{name} must be {expected!r}, got {attrs[name]!r}")
    try:
        scale = validate_scale(attrs["scale"])
    except PatternError as e:
        raise PatternError(f"{where}{e}") from None
    arrays = {name: list(attrs[name]) for name in ("kind", *PER_HEAD_FIELDS)}
    count = len(arrays["kind"]) if num_heads is None else num_heads
    for name, values in arrays.items():
        if len(values) != count:
            raise PatternError(
                f"{where}attribute {name} has {len(values)} entries, expected one per query head ({count})"
            )
    heads = []
    for i in range(count):
        try:
            kind = Kind.parse(arrays["kind"][i])
        except PatternError as e:
            raise PatternError(f"{where}head {i}: {e}") from None
        heads.append(HeadPattern(kind, **{name: _as_int(arrays[name][i]) for name in PER_HEAD_FIELDS}))
    return scale, validate_layer(heads, layer)


def _as_int(value: Any) -> Any:
    """numpy integers count as integers; anything else is left for the validator to name."""
    return int(value) if isinstance(value, np.integer) else value


def head_to_dict(head: HeadPattern) -> dict[str, Any]:
    return {"kind": head.kind.label, **head.params()}


__all__ = [
    "BLOCK",
    "DOMAIN",
    "OP_TYPE",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "HeadPattern",
    "Kind",
    "LayerPattern",
    "PatternError",
    "to_attributes",
    "validate_attributes",
    "validate_layer",
    "validate_shapes",
]
