"""Optimisation profiles over batch and sequence length, and which profile a set of inputs fits.

Inputs of an exported LLM have at most two dynamic axes: the batch and the sequence. Which dynamic
dimension is which comes from the ONNX dimension names (`b`/`s` from torch.export, `batch_size`/
`sequence_length` from Optimum, ...); a rank-2 input with two unnamed dynamic axes is [batch, seq].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import onnx

from .errors import ProfileError

MAX_SEQ_LEN = 1 << 20  # 1M tokens: the longest sequence a profile may cover

BATCH_NAMES = frozenset({"b", "batch", "batch_size", "n"})
SEQ_NAMES = frozenset(
    {"s", "seq", "seq_len", "seqlen", "sequence", "sequence_length", "total_sequence_length", "tokens", "num_tokens"}
)

ShapeTriple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class Axis(Enum):
    BATCH = "batch"
    SEQ = "seq"


@dataclass(frozen=True)
class DimRange:
    """min <= opt <= max of one dynamic axis."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str, what: str, limit: int | None = None) -> DimRange:
        """`MIN:OPT:MAX`, `MIN:MAX` (opt = max) or `N` (fixed)."""
        try:
            values = [int(part) for part in text.split(":")]
        except ValueError:
            raise ProfileError(f"{what} range {text!r} must be N, MIN:MAX or MIN:OPT:MAX (integers)") from None
        if len(values) == 1:
            values *= 3
        elif len(values) == 2:
            values = [values[0], values[1], values[1]]
        elif len(values) != 3:
            raise ProfileError(f"{what} range {text!r} must be N, MIN:MAX or MIN:OPT:MAX")
        return cls(*values).validate(what, limit)

    def validate(self, what: str, limit: int | None = None) -> DimRange:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ProfileError(f"{what} range needs 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")
        if limit is not None and self.max > limit:
            raise ProfileError(f"{what} max {self.max} exceeds the supported {limit}")
        return self

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class Profile:
    batch: DimRange
    seq: DimRange

    def __post_init__(self) -> None:
        self.batch.validate("batch")
        self.seq.validate("sequence length", MAX_SEQ_LEN)

    def range_of(self, axis: Axis) -> DimRange:
        return self.batch if axis is Axis.BATCH else self.seq


InputAxes = dict[str, tuple[int | Axis, ...]]


def _axis_of(param: str) -> Axis | None:
    name = param.strip().lower()
    return Axis.BATCH if name in BATCH_NAMES else Axis.SEQ if name in SEQ_NAMES else None


def input_axes(graph: onnx.GraphProto) -> InputAxes:
    """Per graph input, each dimension: its static size or the dynamic axis it follows."""
    initializers = {init.name for init in graph.initializer}
    axes: InputAxes = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
        roles: list[int | Axis] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        for i in dynamic:
            roles[i] = _axis_of(dims[i].dim_param)
        unnamed = [i for i in dynamic if roles[i] is None]
        if unnamed and len(dims) == 2 and dynamic == [0, 1]:
            roles = [Axis.BATCH, Axis.SEQ]
        elif unnamed:
            i = unnamed[0]
            raise ProfileError(
                f"input {value.name!r} dimension {i} ({dims[i].dim_param or 'unnamed'}) is dynamic but is neither a "
                f"batch ({sorted(BATCH_NAMES)}) nor a sequence ({sorted(SEQ_NAMES)}) axis; export it with one of "
                "those names or a fixed size"
            )
        axes[value.name] = tuple(roles)
    return axes


def profile_shapes(axes: InputAxes, profile: Profile) -> dict[str, ShapeTriple]:
    """(min, opt, max) shapes of every input under one profile."""
    shapes = {}
    for name, roles in axes.items():
        triple = []
        for pick in ("min", "opt", "max"):
            triple.append(tuple(getattr(profile.range_of(r), pick) if isinstance(r, Axis) else r for r in roles))
        shapes[name] = (triple[0], triple[1], triple[2])
    return shapes


def select_profile(shapes: Mapping[str, Sequence[int]], profiles: Sequence[Mapping[str, ShapeTriple]]) -> int:
    """The first profile every input shape fits; otherwise an error naming what does not fit."""
    problems = []
    for index, profile in enumerate(profiles):
        misfit = _misfit(shapes, profile)
        if misfit is None:
            return index
        problems.append(f"profile {index}: {misfit}")
    raise ProfileError(
        "the inputs fit none of the engine's optimisation profiles (" + "; ".join(problems) + "); rebuild the "
        "engine with minfer-build --batch/--seq-len ranges that cover them"
    )


def _misfit(shapes: Mapping[str, Sequence[int]], profile: Mapping[str, ShapeTriple]) -> str | None:
    for name, shape in shapes.items():
        low, _, high = profile[name]
        if len(shape) != len(low):
            return f"input {name!r} has rank {len(shape)}, the engine expects {len(low)}"
        for axis, (size, lo, hi) in enumerate(zip(shape, low, high, strict=True)):
            if not lo <= size <= hi:
                return f"input {name!r} dimension {axis} is {size}, the profile allows [{lo}, {hi}]"
    return None
