"""`minfer-export` as a user runs it: the demo, pattern options, bad input that writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import dense_model, run_logits, token_ids
from typer.testing import CliRunner

from minfer.export import model_io
from minfer.export.cli import app, parse_pattern
from minfer.patterns.config import DEFAULT_HEAD
from minfer.patterns.spec import DOMAIN, HeadPattern, PatternError

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_demo_builds_rewrites_and_summarises(tmp_path: Path) -> None:
    result = invoke("--demo", "-o", tmp_path / "demo", "--seq-len", "4096")
    assert result.exit_code == 0, result.output
    sparse = tmp_path / "demo" / "tiny-llama.sparse.onnx"
    assert sparse.is_file() and (tmp_path / "demo" / "tiny-llama.onnx").is_file()
    assert "layers found: 2, rewritten: 2, left dense: 0" in result.output
    assert "4 vertical_slash" in result.output and "S=4096" in result.output
    assert any(n.domain == DOMAIN for n in onnx.load(str(sparse)).graph.node)
    again = invoke("--demo", "-o", tmp_path / "demo")
    assert again.exit_code == 2 and "--force" in again.output


def copy_model(tmp_path: Path) -> Path:
    return Path(shutil.copy(dense_model(), tmp_path / "model.onnx"))


def test_patterns_file_and_default_output_name(tmp_path: Path) -> None:
    source = copy_model(tmp_path)
    config = {
        "format": "minfer-patterns",
        "version": 1,
        "layers": [{"heads": [{"kind": "dense"}, {"kind": "dense"}]}] * 2,
    }
    (tmp_path / "patterns.json").write_text(json.dumps(config))
    result = invoke(source, "--patterns", tmp_path / "patterns.json")
    assert result.exit_code == 0, result.output
    assert "4 dense" in result.output
    ids = token_ids(2, 80, seed=2)
    np.testing.assert_allclose(
        run_logits(tmp_path / "model.sparse.onnx", ids), run_logits(source, ids), rtol=1e-4, atol=1e-5
    )


def test_minference_config(tmp_path: Path) -> None:
    source = copy_model(tmp_path)
    layer = {"0": ["vertical_and_slash", 100, 200, 0.9], "1": ["stream_llm", 4, 64, 0.8]}
    (tmp_path / "mi.json").write_text(json.dumps([layer, layer]))
    result = invoke(source, "--minference-config", tmp_path / "mi.json", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert "2 a_shape, 2 vertical_slash" in result.output


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, m: [d / "notes.txt"], "not a readable ONNX model"),
        (lambda d, m: [d / "missing.onnx"], "does not exist"),
        (lambda d, m: [m, "-o", m], "never overwrites its input"),
        (lambda d, m: [m, "--default-pattern", "a_shape:sink=4"], "local must be in"),
        (lambda d, m: [m, "--default-pattern", "diagonal"], "unknown pattern kind"),
        (lambda d, m: [m, "--patterns", d / "notes.txt"], "is not valid JSON"),
        (lambda d, m: [m, "--patterns", d / "three_layers.json"], "3 layers but the model has 2"),
        (lambda d, m: [], "give an ONNX model to rewrite, or --demo"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path: Path, make_args, message: str) -> None:
    source = copy_model(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model\n")
    layer = {"heads": [{"kind": "dense"}, {"kind": "dense"}]}
    config = {"format": "minfer-patterns", "version": 1, "layers": [layer] * 3}
    (tmp_path / "three_layers.json").write_text(json.dumps(config))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    result = invoke(*make_args(tmp_path, source))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_existing_output_needs_force(tmp_path: Path) -> None:
    source = copy_model(tmp_path)
    (tmp_path / "model.sparse.onnx").write_text("keep me")
    result = invoke(source)
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "model.sparse.onnx").read_text() == "keep me"
    assert invoke(source, "--force").exit_code == 0


def test_external_data_is_used_above_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Models over 2 GB are written with external data; here the threshold is lowered to 1 byte."""
    source = copy_model(tmp_path)
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1)
    result = invoke(source, "--default-pattern", "dense", "-o", tmp_path / "big.onnx")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "big.onnx.data").stat().st_size > (tmp_path / "big.onnx").stat().st_size
    ids = token_ids(1, 20, seed=4)
    loaded = onnx.load(str(tmp_path / "big.onnx"))
    np.testing.assert_allclose(run_logits(loaded, ids), run_logits(source, ids), rtol=1e-4, atol=1e-5)


def test_parse_pattern() -> None:
    assert parse_pattern("dense") == HeadPattern.dense()
    assert parse_pattern("a_shape:sink=64,local=1024") == HeadPattern.a_shape(64, 1024)
    assert parse_pattern("block_sparse:top_k=16") == HeadPattern.block_sparse(16)
    assert parse_pattern("vertical_slash:vertical_size=1000,slash_size=6096") == DEFAULT_HEAD
    with pytest.raises(PatternError, match="unknown field"):
        parse_pattern("dense:top=1")
    with pytest.raises(PatternError, match="expected field=integer"):
        parse_pattern("block_sparse:top_k=many")
