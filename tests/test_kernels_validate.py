"""The kernel library's C validators say exactly what minfer.patterns.spec says (CPU: no GPU needed)."""

from __future__ import annotations

import ctypes
import itertools
import random

import numpy as np
import pytest

from minfer.patterns.spec import PER_HEAD_FIELDS, HeadPattern, PatternError, validate_attributes, validate_shapes
from minfer.runtime import kernels

INT32_MAX = 2**31 - 1
SCALES = (0.125, 0.08838834764831845, 1.0, 3.0, 1e-05, 1e20, 0.0, -0.5, -0.0, float("nan"), float("inf"), -float("inf"))
TAKES = {
    0: (),
    1: ("sink", "local"),
    2: ("vertical_size", "slash_size", "last_q", "sink", "local"),
    3: ("top_k",),
}


@pytest.fixture(scope="module")
def library() -> kernels.KernelLibrary:
    try:
        return kernels.load_library()
    except FileNotFoundError as e:
        pytest.skip(f"kernel library not built: {e}")


def _field_value(rng: random.Random, kind: int, name: str) -> int:
    """Mostly valid values for the kind, with the edges and a few breakages."""
    if rng.random() < 0.06:
        return rng.choice((-1, 0, 257, -(2**31), INT32_MAX, 1))
    if name not in TAKES.get(kind, ()):
        return 0
    if name == "last_q":
        return rng.choice((1, 64, 256, rng.randint(1, 256)))
    if name == "local":
        return rng.choice((1, 100, INT32_MAX, rng.randint(1, 5000)))
    return rng.choice((0, 1, 30, 1000, INT32_MAX, rng.randint(0, 10**6)))


def _random_attributes(rng: random.Random) -> dict:
    heads = rng.choice((0, 1, 2, 4, 7))
    kinds = [rng.choice((0, 1, 2, 3, 2, 3)) if rng.random() > 0.04 else rng.choice((-1, 4, 9)) for _ in range(heads)]
    attrs = {"kind": kinds, "scale": float(np.float32(rng.choice(SCALES))), "block_size": 64}
    if rng.random() < 0.05:
        attrs["block_size"] = rng.choice((32, 128, 0))
    for name in PER_HEAD_FIELDS:
        attrs[name] = [_field_value(rng, kind, name) for kind in kinds]
    return attrs


def _python_message(attrs: dict) -> str | None:
    try:
        validate_attributes(attrs)
    except PatternError as e:
        return str(e)
    return None


def _pattern_args(attrs: dict) -> kernels.PatternArgs:
    return kernels.PatternArgs({k: attrs[k] for k in ("kind", *PER_HEAD_FIELDS)}, attrs["scale"], attrs["block_size"])


def test_pattern_messages_match_the_spec(library: kernels.KernelLibrary) -> None:
    rng = random.Random(20261124)
    outcomes = {"valid": 0, "invalid": 0}
    for _ in range(3000):
        attrs = _random_attributes(rng)
        expected = _python_message(attrs)
        assert library.validate_pattern(_pattern_args(attrs)) == expected, attrs
        outcomes["valid" if expected is None else "invalid"] += 1
    assert min(outcomes.values()) > 300, outcomes  # both sides of the validator were exercised


def _python_problem_message(attrs: dict, batch: int, hq: int, hkv: int, seq: int, head_dim: int) -> str | None:
    message = _python_message(attrs)
    if message is not None:
        return message
    if batch < 1 or seq < 1:  # the reference's input check, before the shape rules
        return f"B and S must be >= 1; got B={batch}, S={seq}"
    try:
        validate_shapes(hq, hkv, head_dim, len(attrs["kind"]))
    except PatternError as e:
        return str(e)
    return None


def test_problem_messages_match_the_spec(library: kernels.KernelLibrary) -> None:
    rng = random.Random(7)
    outcomes = {"valid": 0, "invalid": 0}
    for _ in range(2000):
        attrs = _random_attributes(rng)
        while rng.random() < 0.8 and _python_message(attrs) is not None:  # mostly valid patterns here
            attrs = _random_attributes(rng)
        heads = len(attrs["kind"])
        hq = heads if rng.random() < 0.9 else rng.choice((1, 3, 8))
        hkv = rng.choice((1, 1, 2, hq or 1, hq or 1, 3, 0))
        problem = kernels.Problem(
            batch=rng.choice((1, 2, 2, 0)),
            num_q_heads=hq,
            num_kv_heads=hkv,
            seq_len=rng.choice((1, 63, 64, 65, 4097, 131072, 0)),
            head_dim=rng.choice((64, 128, 128, 96)),
            dtype=rng.choice((0, 1)),
        )
        expected = _python_problem_message(
            attrs, problem.batch, problem.num_q_heads, problem.num_kv_heads, problem.seq_len, problem.head_dim
        )
        assert library.validate_problem(_pattern_args(attrs), problem) == expected, (attrs, problem)
        outcomes["valid" if expected is None else "invalid"] += 1
    assert min(outcomes.values()) > 200, outcomes


LAYER = [HeadPattern.vertical_slash(1000, 6096), HeadPattern.block_sparse(8), HeadPattern.a_shape(4, 64)] * 2 + [
    HeadPattern.dense()
] * 2


def test_kernel_limits_are_named(library: kernels.KernelLibrary) -> None:
    many = kernels.PatternArgs.of_heads([HeadPattern.dense()] * 129, 0.1)
    message = library.validate_problem(many, kernels.Problem(1, 129, 1, 64, 128, 1))
    assert message == "the kernels take at most 128 query heads per layer, got 129"
    pattern = kernels.PatternArgs.of_heads(LAYER, 0.1)
    message = library.validate_problem(pattern, kernels.Problem(1, 8, 2, 64, 128, 7))
    assert message == "dtype 7 is not supported (float16, bfloat16)"
    with pytest.raises(kernels.KernelError, match=r"block-sparse heads take at most 2097152 tokens, got S=4194304"):
        library.workspace_size(pattern, kernels.Problem(1, 8, 2, 4 * 2**20, 128, 1))


@pytest.mark.parametrize("seq_len", [1, 63, 1000, 32768])
def test_workspace_layout_is_consistent(library: kernels.KernelLibrary, seq_len: int) -> None:
    """Sections are aligned, disjoint, inside the workspace, and sized as docs/kernels.md says."""
    pattern = kernels.PatternArgs.of_heads(LAYER, 0.1)
    problem = kernels.Problem(2, 8, 2, seq_len, 128, 1)
    layout = library.index_layout(pattern, problem)
    assert layout["total_bytes"] == library.workspace_size(pattern, problem)
    nb = -(-seq_len // 64)
    batch, vs, bs = 2, 2, 2
    sizes = {
        "column_scores": batch * vs * seq_len * 4,
        "diagonal_scores": batch * vs * seq_len * 4,
        "columns": batch * vs * min(seq_len, 1000) * 4,
        "diagonals": batch * vs * min(seq_len, 6096) * 4,
        "lags": batch * vs * min(seq_len, 6096) * 4,
        "lag_counts": batch * vs * 4,
        "held": batch * vs * -(-(seq_len + 63) // 32) * 4,
        "pooled_q": batch * bs * nb * 128 * 4,
        "pooled_k": batch * 2 * nb * 128 * 4,
        "blocks": batch * bs * nb * min(8, nb) * 4,
    }
    assert layout["vs_heads"] == vs and layout["bs_heads"] == bs and layout["num_blocks"] == nb
    spans = sorted((layout[name], layout[name] + size) for name, size in sizes.items())
    for (start, end), (next_start, _) in itertools.pairwise(spans):
        assert start % 256 == 0 and end <= next_start
    assert spans[-1][1] <= layout["total_bytes"]


def test_dense_only_layer_needs_no_workspace(library: kernels.KernelLibrary) -> None:
    pattern = kernels.PatternArgs.of_heads([HeadPattern.dense(), HeadPattern.a_shape(0, 1)], 0.1)
    assert library.workspace_size(pattern, kernels.Problem(1, 2, 1, 4097, 64, 0)) == 0


def test_launch_refuses_bad_arguments_before_touching_the_gpu(library: kernels.KernelLibrary) -> None:
    pattern = kernels.PatternArgs.of_heads(LAYER, 0.1)
    problem = kernels.Problem(1, 8, 2, 1000, 128, 1)
    raw = kernels.ProblemStruct(**vars(problem))
    status = library.lib.minfer_launch(ctypes.byref(pattern.struct), ctypes.byref(raw), 16, 16, 16, 16, 16, 0, None)
    assert status == 3
    assert library.lib.minfer_last_error().decode().startswith("workspace of 0 bytes is smaller than the ")
    status = library.lib.minfer_launch(ctypes.byref(pattern.struct), ctypes.byref(raw), None, 16, 16, 16, 16, 0, None)
    assert (status, library.lib.minfer_last_error().decode()) == (2, "q is NULL")
    assert library.abi_version() == 1
