"""minfer-build / minfer-run without TensorRT: arguments, early errors, and what is missing is named."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from minfer.runtime import loading
from minfer.runtime.cli import build_app, parse_profiles, run_app, synthetic_inputs
from minfer.runtime.errors import InputError, PluginLibraryNotFound, TensorRTNotFound

runner = CliRunner()
HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def model(tmp_path: Path) -> Path:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "s"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g", [ids], [out])
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    return tmp_path / "model.onnx"


def test_profiles_from_arguments() -> None:
    profiles = parse_profiles("1:2:4", ["1:4096:32768", "32769:262144:1048576"])
    assert [str(p.seq) for p in profiles] == ["1:4096:32768", "32769:262144:1048576"]
    assert all(str(p.batch) == "1:2:4" for p in profiles)


def test_build_refuses_bad_ranges_before_tensorrt(model: Path, tmp_path: Path) -> None:
    result = runner.invoke(build_app, [str(model), "-o", str(tmp_path / "e.engine"), "--seq-len", "8:4"])
    assert result.exit_code == 2
    assert "sequence length range needs 1 <= min <= opt <= max, got 8:4:4" in result.output
    result = runner.invoke(build_app, [str(model), "-o", str(tmp_path / "e.engine"), "--seq-len", "1:2000000"])
    assert "sequence length max 2000000 exceeds the supported 1048576" in result.output


def test_build_never_overwrites_unless_asked(model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"user data")
    result = runner.invoke(build_app, [str(model), "-o", str(engine)])
    assert result.exit_code == 2 and "exists; pass --force" in result.output
    assert engine.read_bytes() == b"user data"


def test_build_takes_one_weak_precision(model: Path, tmp_path: Path) -> None:
    result = runner.invoke(build_app, [str(model), "-o", str(tmp_path / "e.engine"), "--fp16", "--bf16"])
    assert result.exit_code == 2 and "give at most one of --fp16 and --bf16" in result.output


def test_build_missing_model_is_named(tmp_path: Path) -> None:
    result = runner.invoke(build_app, [str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "e.engine")])
    assert result.exit_code != 0 and "nope.onnx" in result.output


def test_build_names_an_unusable_dynamic_axis(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "width", 3])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x],
        [x._replace_name("y")] if False else [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    result = runner.invoke(build_app, [str(tmp_path / "m.onnx"), "-o", str(tmp_path / "e.engine")])
    assert result.exit_code == 2 and "input 'x' dimension 1 (width) is dynamic" in result.output


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed: this checks the message of its absence")
def test_build_without_tensorrt_says_so(model: Path, tmp_path: Path) -> None:
    result = runner.invoke(build_app, [str(model), "-o", str(tmp_path / "e.engine")])
    assert result.exit_code == 2 and "TensorRT's Python package is not installed" in result.output
    assert not (tmp_path / "e.engine").exists()


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed: this checks the message of its absence")
def test_run_without_tensorrt_says_so(tmp_path: Path) -> None:
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"x")
    result = runner.invoke(run_app, [str(engine), "--seq-len", "16"])
    assert result.exit_code == 2 and "TensorRT's Python package is not installed" in result.output


def test_run_needs_exactly_one_input_source(tmp_path: Path) -> None:
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"x")
    for extra in ([], ["--seq-len", "8", "--inputs", str(engine)]):
        result = runner.invoke(run_app, [str(engine), *extra])
        assert result.exit_code == 2 and "give exactly one of --inputs FILE.npz and --seq-len N" in result.output


def test_synthetic_token_inputs() -> None:
    profile = {name: ((1, 1), (1, 64), (2, 128)) for name in ("input_ids", "attention_mask", "position_ids")}
    dtypes = {"input_ids": "int64", "attention_mask": "int64", "position_ids": "int32"}
    inputs = synthetic_inputs(profile, dtypes, batch=2, seq_len=70, seed=1)
    assert {k: (v.shape, str(v.dtype)) for k, v in inputs.items()} == {
        "input_ids": ((2, 70), "int64"),
        "attention_mask": ((2, 70), "int64"),
        "position_ids": ((2, 70), "int32"),
    }
    assert (inputs["attention_mask"] == 1).all() and (inputs["position_ids"][1] == np.arange(70)).all()
    assert 0 <= inputs["input_ids"].min() and inputs["input_ids"].max() < 1000
    with pytest.raises(InputError, match="--seq-len makes token inputs only; 'pixels' is float16 of rank 4"):
        synthetic_inputs({"pixels": ((1, 3, 8, 8),) * 3}, {"pixels": "float16"}, 1, 8, 0)


# ---------------------------------------------------------------- TensorRT and the plugin library


def test_missing_tensorrt_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTNotFound, match="TensorRT's Python package is not installed"):
        loading.import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(TensorRTNotFound, match=r"TensorRT 8\.6\.1 is installed; .* needs TensorRT 10 or newer"):
        loading.import_tensorrt()


def test_missing_plugin_library_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginLibraryNotFound, match=r"not found at .*nowhere/libminfer_trt_plugins.so. Build it"):
        loading.find_plugin_library(tmp_path / "nowhere" / "libminfer_trt_plugins.so")
    monkeypatch.setenv(loading.PLUGIN_LIBRARY_ENV, str(tmp_path / "env.so"))
    with pytest.raises(PluginLibraryNotFound, match=r"env\.so"):
        loading.find_plugin_library()
    monkeypatch.delenv(loading.PLUGIN_LIBRARY_ENV)
    monkeypatch.setattr(loading, "BUILD_DIR", tmp_path)
    with pytest.raises(PluginLibraryNotFound, match=str(tmp_path / "libminfer_trt_plugins.so")):
        loading.find_plugin_library()
    found = tmp_path / "libminfer_trt_plugins.so"
    found.write_bytes(b"")
    assert loading.find_plugin_library() == found


class _Registry:
    def __init__(self) -> None:
        self.creators: dict[tuple[str, str, str], object] = {}

    def get_creator(self, name: str, version: str, namespace: str) -> object | None:
        return self.creators.get((name, version, namespace))


def test_plugin_library_that_fails_or_registers_nothing(tmp_path: Path) -> None:
    registry = _Registry()
    trt = types.SimpleNamespace(__version__="10.9.0", get_plugin_registry=lambda: registry)
    not_a_library = tmp_path / "libminfer_trt_plugins.so"
    not_a_library.write_bytes(b"not ELF")
    with pytest.raises(PluginLibraryNotFound, match="failed to load"):
        loading.load_plugin_library(trt, not_a_library)
    libm = "libm.so.6"  # loads, registers nothing
    with pytest.raises(PluginLibraryNotFound, match=r"registered no minfer::SparsePrefillAttention version 1"):
        loading.load_plugin_library(trt, Path(libm) if Path(libm).exists() else _system_library(libm))
    registry.creators[("SparsePrefillAttention", "1", "minfer")] = object()
    loading.load_plugin_library(trt, tmp_path / "absent.so")  # already registered: nothing to load


def _system_library(name: str) -> Path:
    import ctypes.util

    for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    pytest.skip(f"{name} not found ({ctypes.util.find_library('m')})")
