"""Real TensorRT engines with the plugin: run wherever TensorRT, a GPU and libminfer_trt_plugins.so exist.

Each test builds a one-node graph (`minfer::SparsePrefillAttention` on graph inputs Q, K, V) so the
engine's output is the plugin's output, compared with the PyTorch reference on fresh random inputs.
The library is loaded every way a TensorRT user loads it: dlopen (static registration, as trtexec
--staticPlugins and polygraphy --plugins do) and IPluginRegistry.load_library (getCreators, as
trtexec --dynamicPlugins does), the latter in a fresh process.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from minfer.patterns.reference import sparse_prefill_attention
from minfer.patterns.spec import DOMAIN, OP_TYPE, HeadPattern, to_attributes
from minfer.runtime.engine import BuildOptions, PrefillEngine, build_engine, save_engine
from minfer.runtime.errors import BuildError, ProfileError
from minfer.runtime.loading import find_plugin_library
from minfer.runtime.profiles import DimRange, Profile

trt = pytest.importorskip("tensorrt", reason="TensorRT's Python package is not installed (pip install tensorrt)")
pytestmark = pytest.mark.gpu

HEADS = (
    HeadPattern.vertical_slash(100, 120, last_q=64, sink=4, local=40),
    HeadPattern.a_shape(sink=3, local=70),
    HeadPattern.block_sparse(top_k=2),
    HeadPattern.dense(),
)
HKV, DIM = 2, 64
SCALE = 1 / math.sqrt(DIM)
ONNX_TYPES = {
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.float32: TensorProto.FLOAT,
}


@pytest.fixture(scope="module")
def plugin_library() -> Path:
    try:
        return find_plugin_library()
    except Exception as error:
        pytest.skip(f"libminfer_trt_plugins.so is not built: {error}")


def attention_model(path: Path, dtype: torch.dtype = torch.float16) -> Path:
    kind = ONNX_TYPES[dtype]
    inputs = [
        helper.make_tensor_value_info(name, kind, ["batch", heads, "sequence", DIM])
        for name, heads in (("q", len(HEADS)), ("k", HKV), ("v", HKV))
    ]
    output = helper.make_tensor_value_info("o", kind, ["batch", len(HEADS), "sequence", DIM])
    node = helper.make_node(OP_TYPE, ["q", "k", "v"], ["o"], name="layer0_attention", domain=DOMAIN,
                            **to_attributes(HEADS, SCALE))  # fmt: skip
    graph = helper.make_graph([node], "attention", inputs, [output])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


PROFILES = (Profile(DimRange(1, 1, 2), DimRange(1, 256, 512)), Profile(DimRange(1, 1, 1), DimRange(513, 1024, 2048)))


@pytest.fixture(scope="module")
def engine_file(tmp_path_factory: pytest.TempPathFactory, plugin_library: Path) -> Path:
    folder = tmp_path_factory.mktemp("engine")
    options = BuildOptions(profiles=PROFILES, timing_cache=folder / "timing.cache", progress=False)
    data = build_engine(attention_model(folder / "attention.onnx"), options, plugin_library)
    assert (folder / "timing.cache").stat().st_size > 0
    return save_engine(data, folder / "attention.engine")


def _inputs(batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"q": (batch, len(HEADS), seq, DIM), "k": (batch, HKV, seq, DIM), "v": (batch, HKV, seq, DIM)}
    return {name: torch.randn(shape, generator=generator).half() for name, shape in shapes.items()}


@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 77), (2, 512), (1, 513), (1, 2000)])
def test_engine_matches_the_reference(engine_file: Path, plugin_library: Path, batch: int, seq: int) -> None:
    engine = PrefillEngine.load(engine_file, plugin_library)
    host = _inputs(batch, seq, seed=seq)
    expected = sparse_prefill_attention(host["q"], host["k"], host["v"], HEADS, SCALE).float()
    device = {name: t.cuda() for name, t in host.items()}
    for feed in (device, {n: t.numpy() for n, t in host.items()}):  # torch CUDA in place, numpy uploaded
        out = engine.run(feed, stream=torch.cuda.Stream())["o"]
        got = torch.from_numpy(out.to_numpy()).float()
        assert out.shape == (batch, len(HEADS), seq, DIM) and not got.isnan().any()
        assert (got - expected).abs().max().item() <= 5e-3


def test_inputs_outside_every_profile_are_named(engine_file: Path, plugin_library: Path) -> None:
    engine = PrefillEngine.load(engine_file, plugin_library)
    with pytest.raises(ProfileError, match="input 'q' dimension 2 is 4096, the profile allows"):
        engine.run(_inputs(1, 4096, seed=0))


def test_float32_attention_is_refused_by_name(tmp_path: Path, plugin_library: Path) -> None:
    model = attention_model(tmp_path / "fp32.onnx", torch.float32)
    with pytest.raises(BuildError, match=r"node 'layer0_attention' gets .* the plugin runs in float16 or bfloat16"):
        build_engine(model, BuildOptions(profiles=PROFILES[:1], progress=False), plugin_library)


def test_load_library_registers_through_get_creators(tmp_path: Path, plugin_library: Path) -> None:
    """IPluginRegistry.load_library (trtexec --dynamicPlugins) in a process that never dlopened the library."""
    script = f"""
import tensorrt as trt
registry = trt.get_plugin_registry()
assert registry.get_creator("{OP_TYPE}", "1", "{DOMAIN}") is None
handle = registry.load_library({str(plugin_library)!r})
assert handle is not None, "load_library failed"
creator = registry.get_creator("{OP_TYPE}", "1", "{DOMAIN}")
assert creator is not None and creator.name == "{OP_TYPE}", creator
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_polygraphy_runs_the_engine_with_plugins(tmp_path: Path, plugin_library: Path) -> None:
    """polygraphy run --trt --plugins (ctypes.CDLL: static registration) against saved reference outputs."""
    pytest.importorskip("polygraphy", reason="polygraphy is not installed")
    model = attention_model(tmp_path / "attention.onnx")
    host = _inputs(1, 300, seed=5)
    expected = sparse_prefill_attention(host["q"], host["k"], host["v"], HEADS, SCALE)
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    feed = {name: t.numpy() for name, t in host.items()}
    save_json([feed], tmp_path / "inputs.json")
    results = RunResults()
    results.add([{"o": expected.numpy()}], runner_name="reference")
    results.save(tmp_path / "reference.json")
    shapes = [f"{name}:[{','.join(map(str, t.shape))}]" for name, t in host.items()]
    command = ["polygraphy", "run", str(model), "--trt", "--strongly-typed", "--plugins", str(plugin_library),
               "--input-shapes", *shapes, "--load-inputs", str(tmp_path / "inputs.json"),
               "--load-outputs", str(tmp_path / "reference.json"), "--atol", "5e-3", "--rtol", "1e-2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "PASSED" in result.stdout + result.stderr
    assert np.isfinite(expected.float().numpy()).all()
