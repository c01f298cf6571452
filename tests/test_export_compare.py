"""`minfer-compare`: polygraphy runs both models; statistics, top-1 agreement and the exit status."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from export_helpers import dense_model
from typer.testing import CliRunner

from minfer.export.compare import app, output_stats
from minfer.export.model_io import load_model, save_model
from minfer.export.rewrite import rewrite_model
from minfer.patterns.spec import HeadPattern

runner = CliRunner()


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compare")
    paths = {}
    for name, head in (("dense", HeadPattern.dense()), ("a_shape", HeadPattern.a_shape(sink=4, local=16))):
        model, _ = rewrite_model(load_model(dense_model()), default_head=head)
        paths[name] = save_model(model, folder / f"{name}.onnx")
    return paths


def compare(*args) -> object:
    return runner.invoke(app, [str(dense_model()), *map(str, args)])


def test_dense_config_passes(rewritten: dict[str, Path]) -> None:
    result = compare(rewritten["dense"], "--seq-len", "130", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "100.00%" in result.output


def test_sparse_beyond_tolerance_fails(rewritten: dict[str, Path]) -> None:
    result = compare(rewritten["a_shape"], "--seq-len", "200")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "top-1 agreement" in result.output


def test_loose_tolerances_pass(rewritten: dict[str, Path]) -> None:
    result = compare(rewritten["a_shape"], "--seq-len", "200", "--atol", "10", "--min-top1", "0")
    assert result.exit_code == 0, result.output


def test_bad_input_exits_2(tmp_path: Path, rewritten: dict[str, Path]) -> None:
    (tmp_path / "x.onnx").write_text("nope")
    result = compare(tmp_path / "x.onnx")
    assert result.exit_code == 2 and "not a readable ONNX model" in " ".join(result.output.split())


def test_trt_without_tensorrt_is_a_clear_error(rewritten: dict[str, Path]) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed; the plugin path is covered by the GPU tests")
    result = compare(rewritten["dense"], "--trt")
    assert result.exit_code == 2 and "needs TensorRT" in result.output


def test_output_stats_top1() -> None:
    reference = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0]])
    other = np.array([[0.0, 3.0, 2.0], [3.0, 0.0, 1.0]])
    stats = output_stats(reference, other, "r", "logits", "logits")
    assert stats.top1 == 0.5 and stats.max_abs == 2.0
    assert output_stats(reference, other, "r", "hidden", "logits").top1 is None
