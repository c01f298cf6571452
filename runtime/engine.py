"""Building TensorRT engines from minfer's ONNX and running prefill with them.

The network is strongly typed (the ONNX types decide every precision, as TensorRT 11 always does),
with one optimisation profile per sequence-length range; the plugin library is loaded before the
parser meets `minfer::SparsePrefillAttention` nodes and before an engine is deserialised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..patterns.spec import DOMAIN, OP_TYPE
from .buffers import DeviceArray, as_device_array, cuda_check, ensure_device_memory, stream_handle
from .errors import BuildError, DeviceMemoryError, InputError, MinferRuntimeError
from .loading import import_tensorrt, load_plugin_library
from .profiles import Profile, ShapeTriple, input_axes, profile_shapes, select_profile
from .progress import progress_monitor

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class BuildOptions:
    """What minfer-build asks of TensorRT's builder."""

    profiles: Sequence[Profile]
    timing_cache: Path | None = None
    workspace_gib: float | None = None
    optimization_level: int = 3
    progress: bool = True
    # TensorRT 10 only: a weakly typed network that may run in this precision ("float16" or
    # "bfloat16"), for float32 ONNX; TensorRT 11 builds strongly typed networks only.
    weak_precision: str | None = None


def _logger(trt: ModuleType) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def _type_name(trt: ModuleType, dtype: Any) -> str:
    kinds = trt.DataType
    names = {
        kinds.FLOAT: "float32",
        kinds.HALF: "float16",
        kinds.BF16: "bfloat16",
        kinds.INT32: "int32",
        kinds.INT64: "int64",
        kinds.INT8: "int8",
        kinds.UINT8: "uint8",
        kinds.BOOL: "bool",
    }
    if dtype not in names:
        raise MinferRuntimeError(f"engine tensor type {dtype} is not supported by minfer's runtime")
    return names[dtype]


def build_engine(onnx_path: PathLike, options: BuildOptions, plugin_library: PathLike | None = None) -> bytes:
    """Parse the rewritten ONNX and build a serialised engine with the given profiles."""
    if not options.profiles:
        raise BuildError("at least one optimisation profile is needed")
    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    axes = input_axes(graph)  # before TensorRT: a bad graph input fails fast, with its name
    trt = import_tensorrt()
    load_plugin_library(trt, plugin_library)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    weak = options.weak_precision is not None
    if weak and int(trt.__version__.split(".")[0]) >= 11:
        raise BuildError(
            f"TensorRT {trt.__version__} builds strongly typed networks only: export the model in float16 or "
            "bfloat16 instead of asking for --fp16/--bf16"
        )
    network = builder.create_network(0 if weak else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser refused {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    if weak:
        config.set_flag(trt.BuilderFlag.FP16 if options.weak_precision == "float16" else trt.BuilderFlag.BF16)
    else:
        _check_attention_types(trt, network, graph)
    for profile in options.profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile_shapes(axes, profile).items():
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
    if options.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.builder_optimization_level = options.optimization_level
    cache_path = options.timing_cache
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not options.progress, transient=True) as progress:
        config.progress_monitor = progress_monitor(trt, progress)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT could not build the engine; its log above says why")
    if cache_path is not None:
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized))


def _check_attention_types(trt: ModuleType, network: Any, graph: onnx.GraphProto) -> None:
    """The plugin runs in float16/bfloat16: say so by node name rather than as "no implementation found"."""
    queries = {n.input[0]: n.name or n.output[0] for n in graph.node if (n.domain, n.op_type) == (DOMAIN, OP_TYPE)}
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
    for tensor in tensors:
        if tensor.name in queries and tensor.dtype not in (trt.DataType.HALF, trt.DataType.BF16):
            raise BuildError(
                f"{OP_TYPE} node {queries[tensor.name]!r} gets {tensor.dtype} Q/K/V; the plugin runs in float16 or "
                "bfloat16: export the model in one of those (e.g. load it with torch_dtype=torch.float16)"
            )


def save_engine(data: bytes, path: PathLike, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise MinferRuntimeError(f"{path} exists; pass overwrite=True (--force) to replace it")
    path.write_bytes(data)
    return path


class PrefillEngine:
    """A deserialised engine with one execution context: prefill on inputs from any array library.

    `run` returns every output of the graph as a device array: the logits and, where the exported
    graph has them, the present keys/values for decoding elsewhere.
    """

    def __init__(self, data: bytes, plugin_library: PathLike | None = None) -> None:
        trt = import_tensorrt()
        load_plugin_library(trt, plugin_library)
        self.trt = trt
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise MinferRuntimeError("TensorRT could not deserialise the engine; its log above says why")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: _type_name(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.profiles = [
            {n: self._profile_shape(n, i) for n in self.input_names}
            for i in range(self.engine.num_optimization_profiles)
        ]
        engine = self.engine  # device_memory_size_v2 from TensorRT 10.1, the only one in 11
        context_bytes = (
            engine.device_memory_size_v2 if hasattr(engine, "device_memory_size_v2") else engine.device_memory_size
        )
        ensure_device_memory(context_bytes, "the engine's execution context")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise DeviceMemoryError(f"TensorRT could not create an execution context ({context_bytes} bytes)")
        self.active_profile = 0

    @classmethod
    def load(cls, path: PathLike, plugin_library: PathLike | None = None) -> PrefillEngine:
        return cls(Path(path).read_bytes(), plugin_library)

    def _profile_shape(self, name: str, index: int) -> ShapeTriple:
        low, opt, high = self.engine.get_tensor_profile_shape(name, index)
        return tuple(low), tuple(opt), tuple(high)

    def run(self, inputs: Mapping[str, Any], stream: Any = None) -> dict[str, DeviceArray]:
        """Run prefill on `stream` (cudaStream_t, torch/cupy stream; default: the legacy stream) and wait."""
        missing = sorted(set(self.input_names) - set(inputs))
        unknown = sorted(set(inputs) - set(self.input_names))
        if missing or unknown:
            raise InputError(f"the engine takes inputs {self.input_names}; missing {missing}, unknown {unknown}")
        handle = stream_handle(stream)
        arrays = {n: as_device_array(inputs[n], self.dtypes[n], n, handle) for n in self.input_names}
        index = select_profile({n: a.shape for n, a in arrays.items()}, self.profiles)
        if index != self.active_profile:
            self.context.set_optimization_profile_async(index, handle)
            self.active_profile = index
        for name, array in arrays.items():
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, array.ptr)
        shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in self.output_names}
        outputs = {n: DeviceArray.empty(shapes[n], self.dtypes[n], f"output {n!r}") for n in self.output_names}
        for name, array in outputs.items():
            self.context.set_tensor_address(name, array.ptr)
        if not self.context.execute_async_v3(handle):
            raise MinferRuntimeError("TensorRT failed to enqueue the engine; its log above says why")
        from cuda.bindings import runtime as cudart

        cuda_check(cudart.cudaStreamSynchronize(handle), "running the engine")
        return outputs
