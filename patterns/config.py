"""Pattern configs: our JSON format, MInference's published per-head configs, the embedded default."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from .spec import BLOCK, HeadPattern, Kind, LayerPattern, PatternError, head_to_dict, validate_layer

FORMAT = "minfer-patterns"
VERSION = 1

# Optional fields and their defaults per kind (MInference's run-time constants for vertical-slash).
_DEFAULTS: dict[Kind, dict[str, int]] = {
    Kind.DENSE: {},
    Kind.A_SHAPE: {},
    Kind.VERTICAL_SLASH: {"last_q": 64, "sink": 30, "local": 100},
    Kind.BLOCK_SPARSE: {},
}
_REQUIRED: dict[Kind, tuple[str, ...]] = {
    Kind.DENSE: (),
    Kind.A_SHAPE: ("sink", "local"),
    Kind.VERTICAL_SLASH: ("vertical_size", "slash_size"),
    Kind.BLOCK_SPARSE: ("top_k",),
}
_STATS = ("recall", "density", "score")

DEFAULT_HEAD = HeadPattern.vertical_slash(1000, 6096)
"""MInference's pattern for heads without a searched config; clipped to short inputs at run time."""

# MInference's block_sparse kernel keeps 100 key blocks whatever sizes the config lists.
MINFERENCE_BLOCK_SPARSE_TOP_K = 100


@dataclass(frozen=True)
class PatternConfig:
    """Per-layer, per-head patterns plus model metadata and optional per-head search statistics."""

    layers: tuple[LayerPattern, ...]
    model: Mapping[str, Any] = field(default_factory=dict)
    stats: tuple[tuple[Mapping[str, float], ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.layers:
            raise PatternError("a pattern config needs at least one layer")
        for i, heads in enumerate(self.layers):
            validate_layer(heads, i)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def kind_counts(self) -> dict[str, int]:
        counts = {k.label: 0 for k in Kind}
        for heads in self.layers:
            for h in heads:
                counts[h.kind.label] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        layers = []
        for i, heads in enumerate(self.layers):
            stats = self.stats[i] if self.stats else ({},) * len(heads)
            layers.append({"heads": [{**head_to_dict(h), **s} for h, s in zip(heads, stats, strict=True)]})
        return {"format": FORMAT, "version": VERSION, "block_size": BLOCK, "model": dict(self.model), "layers": layers}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (--force) to replace it")
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


@cache
def _schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("config_schema.json").read_text())


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PatternError(f"pattern config {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PatternError(f"pattern config {path} is not valid JSON: {e}") from None


def config_from_json(data: Any, source: str = "config") -> PatternConfig:
    """Validate our format against its schema, then against the op contract."""
    try:
        jsonschema.validate(data, _schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise PatternError(f"{source}: at {where}: {e.message}") from None
    layers, stats = [], []
    for li, layer in enumerate(data["layers"]):
        heads, head_stats = [], []
        for hi, entry in enumerate(layer["heads"]):
            kind = Kind.parse(entry["kind"])
            missing = [name for name in _REQUIRED[kind] if name not in entry]
            if missing:
                raise PatternError(f"{source}: layer {li}, head {hi} ({kind.label}): missing {missing}")
            params = {**_DEFAULTS[kind], **{k: v for k, v in entry.items() if k not in ("kind", *_STATS)}}
            try:
                heads.append(HeadPattern(kind, **params).validate(hi, li))
            except PatternError as e:
                raise PatternError(f"{source}: {e}") from None
            head_stats.append({k: entry[k] for k in _STATS if k in entry})
        layers.append(tuple(heads))
        stats.append(tuple(head_stats))
    return PatternConfig(tuple(layers), data.get("model", {}), tuple(stats))


def load_config(path: str | Path) -> PatternConfig:
    """Our format, or MInference's (recognised by its top-level list)."""
    data = _read_json(path)
    if isinstance(data, list):
        return minference_config_from_json(data, str(path))
    return config_from_json(data, str(path))


def minference_config_from_json(
    data: Any, source: str = "MInference config", *, last_q: int = 64, sink: int = 30, local: int = 100
) -> PatternConfig:
    """MInference's format: a list of layers, each {"head": [kind, vertical_size, slash_size, score]}."""
    if not isinstance(data, list) or not data:
        raise PatternError(f"{source}: an MInference config is a non-empty JSON list of layers")
    layers, stats = [], []
    for li, layer in enumerate(data):
        if not isinstance(layer, dict) or not layer:
            raise PatternError(f"{source}: layer {li} must be a non-empty object of head -> entry")
        expected = [str(h) for h in range(len(layer))]
        if sorted(layer, key=lambda s: int(s) if s.isdigit() else -1) != expected:
            raise PatternError(f"{source}: layer {li} heads must be '0'..'{len(layer) - 1}', got {sorted(layer)}")
        heads, head_stats = [], []
        for hi in range(len(layer)):
            heads.append(_minference_head(layer[str(hi)], f"{source}: layer {li}, head {hi}", last_q, sink, local))
            head_stats.append({"score": float(layer[str(hi)][3])})
        layers.append(validate_layer(heads, li))
        stats.append(tuple(head_stats))
    model = {"source": f"MInference config {Path(source).name}", "num_layers": len(layers), "num_heads": len(layers[0])}
    return PatternConfig(tuple(layers), model, tuple(stats))


def _minference_head(entry: Any, where: str, last_q: int, sink: int, local: int) -> HeadPattern:
    if (
        not isinstance(entry, list)
        or len(entry) != 4
        or not isinstance(entry[0], str)
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in entry[1:3])
        or not isinstance(entry[3], (int, float))
    ):
        raise PatternError(f"{where}: entry must be [kind, vertical_size, slash_size, score], got {entry!r}")
    kind, vertical, slash, _ = entry
    if kind == "vertical_and_slash":
        return HeadPattern.vertical_slash(vertical, slash, last_q=last_q, sink=sink, local=local)
    if kind == "stream_llm":
        return HeadPattern.a_shape(sink=vertical, local=slash)
    if kind == "block_sparse":
        return HeadPattern.block_sparse(MINFERENCE_BLOCK_SPARSE_TOP_K)
    raise PatternError(
        f"{where}: unknown MInference kind {kind!r}; expected vertical_and_slash, stream_llm or block_sparse"
    )


def default_config(num_layers: int, num_heads: int, head: HeadPattern = DEFAULT_HEAD) -> PatternConfig:
    """The embedded default: one pattern for every head (MInference's 1000 verticals, 6096 slashes)."""
    layer = (head,) * num_heads
    return PatternConfig(
        (layer,) * num_layers, {"source": "minfer embedded default", "num_layers": num_layers, "num_heads": num_heads}
    )
