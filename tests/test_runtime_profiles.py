"""Optimisation profiles: range parsing, which ONNX dimension is batch or sequence, profile choice."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from minfer.runtime.errors import ProfileError
from minfer.runtime.profiles import MAX_SEQ_LEN, Axis, DimRange, Profile, input_axes, profile_shapes, select_profile


@pytest.mark.parametrize(
    "text,expected", [("4096", (4096, 4096, 4096)), ("1:8", (1, 8, 8)), ("1:512:1048576", (1, 512, 1 << 20))]
)
def test_ranges_parse(text: str, expected: tuple[int, int, int]) -> None:
    parsed = DimRange.parse(text, "sequence length", MAX_SEQ_LEN)
    assert (parsed.min, parsed.opt, parsed.max) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("a:b", "must be N, MIN:MAX or MIN:OPT:MAX"),
        ("1:2:3:4", "must be N, MIN:MAX or MIN:OPT:MAX"),
        ("9:1", r"needs 1 <= min <= opt <= max, got 9:1:1"),
        ("0:4", r"needs 1 <= min <= opt <= max, got 0:4:4"),
        ("1:8:4", r"needs 1 <= min <= opt <= max, got 1:8:4"),
        (f"1:{MAX_SEQ_LEN + 1}", f"max {MAX_SEQ_LEN + 1} exceeds the supported {MAX_SEQ_LEN}"),
    ],
)
def test_bad_ranges_are_named(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        DimRange.parse(text, "sequence length", MAX_SEQ_LEN)


def test_profiles_cap_the_sequence_at_1m_tokens() -> None:
    Profile(DimRange(1, 1, 1), DimRange(1, 4096, MAX_SEQ_LEN))
    with pytest.raises(ProfileError, match="sequence length max 1048577 exceeds"):
        Profile(DimRange(1, 1, 1), DimRange(1, 4096, MAX_SEQ_LEN + 1))


def _model(path: Path, inputs: dict[str, list[int | str | None]]) -> onnx.GraphProto:
    values = [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name, dims in inputs.items()]
    out = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    node = helper.make_node("Identity", [next(iter(inputs))], ["y"])
    onnx.save(helper.make_model(helper.make_graph([node], "g", values, [out])), path)
    return onnx.load(path).graph


def test_axes_from_dimension_names(tmp_path: Path) -> None:
    model = _model(
        tmp_path / "m.onnx",
        {"input_ids": ["b", "s"], "attention_mask": ["batch_size", "sequence_length"], "extra": [2, "seq_len", 3]},
    )
    assert input_axes(model) == {
        "input_ids": (Axis.BATCH, Axis.SEQ),
        "attention_mask": (Axis.BATCH, Axis.SEQ),
        "extra": (2, Axis.SEQ, 3),
    }


def test_unnamed_rank2_inputs_are_batch_then_sequence(tmp_path: Path) -> None:
    assert input_axes(_model(tmp_path / "m.onnx", {"ids": [None, None]})) == {"ids": (Axis.BATCH, Axis.SEQ)}


def test_unknown_dynamic_axes_are_named(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"input 'pixels' dimension 1 \(height\) is dynamic but is neither"):
        input_axes(_model(tmp_path / "m.onnx", {"pixels": ["b", "height", 3]}))


def test_profile_shapes_and_selection(tmp_path: Path) -> None:
    axes = input_axes(_model(tmp_path / "m.onnx", {"ids": ["b", "s"], "extra": [2, "s"]}))
    short = Profile(DimRange(1, 1, 2), DimRange(1, 64, 4096))
    long = Profile(DimRange(1, 1, 1), DimRange(4097, 65536, 1 << 20))
    shapes = [profile_shapes(axes, p) for p in (short, long)]
    assert shapes[0] == {"ids": ((1, 1), (1, 64), (2, 4096)), "extra": ((2, 1), (2, 64), (2, 4096))}
    assert select_profile({"ids": (2, 100), "extra": (2, 100)}, shapes) == 0
    assert select_profile({"ids": (1, 100_000), "extra": (2, 100_000)}, shapes) == 1
    with pytest.raises(ProfileError) as error:
        select_profile({"ids": (2, 5000), "extra": (2, 5000)}, shapes)
    message = str(error.value)
    assert "profile 0: input 'ids' dimension 1 is 5000, the profile allows [1, 4096]" in message
    assert "profile 1: input 'ids' dimension 0 is 2, the profile allows [1, 1]" in message
    assert "minfer-build --batch/--seq-len" in message
    with pytest.raises(ProfileError, match="input 'ids' has rank 3, the engine expects 2"):
        select_profile({"ids": (1, 2, 3), "extra": (2, 3)}, shapes)
