"""The TensorRT plugin's decisions, without TensorRT, through libminfer_plugin_logic.so (ctypes).

SparsePrefillAttentionPlugin.cpp only translates TensorRT structs and calls plugin_logic.h; this file
drives the same functions: field parsing/validation against the contract's Python validator, the
serialisation round trip, formats and shapes on the CPU, and on the GPU the plugin's exact enqueue
sequence (build-phase workspace for the profile's largest shape, runtime plugin recreated from its
serialised fields, poisoned output and workspace, a side stream) against the PyTorch reference.
"""

from __future__ import annotations

import ctypes
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from minfer.patterns.reference import sparse_prefill_attention
from minfer.patterns.spec import PER_HEAD_FIELDS, HeadPattern, Kind, PatternError, to_attributes, validate_attributes
from minfer.runtime.kernels import ProblemStruct

REPO = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("MINFER_BUILD_DIR", REPO / "build"))
LIBRARY_NAME = "libminfer_plugin_logic.so"

FIELD_TYPES = {np.dtype(np.int32): 0, np.dtype(np.int64): 1, np.dtype(np.float32): 2, np.dtype(np.float64): 3}
CHAR_FIELD = 4
FLOAT16, BFLOAT16, FLOAT32, OTHER = 0, 1, 2, 3
TORCH_TYPES = {torch.float16: FLOAT16, torch.bfloat16: BFLOAT16}
ORDER = ("scale", "block_size", "kind", *PER_HEAD_FIELDS)


class Field(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("data", ctypes.c_void_p),
        ("type", ctypes.c_int32),
        ("length", ctypes.c_int32),
    ]


class Dims(ctypes.Structure):
    _fields_ = [("rank", ctypes.c_int32), ("d", ctypes.c_int64 * 8)]


class LogicError(Exception):
    """A call of the logic layer failed; the message is the plugin's."""


def _dims(shape: Sequence[int]) -> Dims:
    return Dims(len(shape), (ctypes.c_int64 * 8)(*shape))


class PluginLogic:
    """The C face of plugin_logic.h, with Python values in and out."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        lib = self.lib
        lib.minfer_plugin_last_error.restype = ctypes.c_char_p
        lib.minfer_plugin_parse.argtypes = [ctypes.POINTER(Field), ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)]
        lib.minfer_plugin_free.argtypes = [ctypes.c_void_p]
        lib.minfer_plugin_field_names.argtypes = [ctypes.POINTER(Field), ctypes.c_int32]
        lib.minfer_plugin_serialize.argtypes = [ctypes.c_void_p, ctypes.POINTER(Field), ctypes.c_int32]
        lib.minfer_plugin_check_input_types.argtypes = [ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]
        lib.minfer_plugin_supports_format.argtypes = (
            [ctypes.c_int32] + [ctypes.POINTER(ctypes.c_int32)] * 2 + [ctypes.c_int32] * 2
        )
        dims = [ctypes.c_void_p] + [ctypes.POINTER(Dims)] * 3 + [ctypes.c_int32]
        lib.minfer_plugin_problem.argtypes = [*dims, ctypes.POINTER(ProblemStruct)]
        lib.minfer_plugin_workspace_bytes.argtypes = [*dims, ctypes.POINTER(ctypes.c_size_t)]
        lib.minfer_plugin_enqueue.argtypes = dims + [ctypes.c_void_p] * 6

    def _check(self, status: int) -> None:
        if status != 0:
            raise LogicError(self.lib.minfer_plugin_last_error().decode())

    def parse(self, fields: Mapping[str, Any]) -> ctypes.c_void_p:
        """createPlugin: numpy arrays/scalars become numeric fields, strings CHAR fields."""
        keep, array = [], (Field * max(len(fields), 1))()
        for i, (name, value) in enumerate(fields.items()):
            if isinstance(value, str):
                data = ctypes.create_string_buffer(value.encode(), len(value))
                array[i] = Field(name.encode(), ctypes.addressof(data), CHAR_FIELD, len(value))
            else:
                data = np.ascontiguousarray(np.atleast_1d(value))
                array[i] = Field(name.encode(), data.ctypes.data, FIELD_TYPES.get(data.dtype, 5), data.size)
            keep.append(data)
        handle = ctypes.c_void_p()
        self._check(self.lib.minfer_plugin_parse(array, len(fields), ctypes.byref(handle)))
        return handle

    def free(self, handle: ctypes.c_void_p) -> None:
        self.lib.minfer_plugin_free(handle)

    def _read_fields(self, fill: Any) -> list[Field]:
        count = fill(None, 0)
        array = (Field * count)()
        fill(array, count)
        return list(array)

    def field_names(self) -> list[tuple[str, int, int]]:
        return [(f.name.decode(), f.type, f.length) for f in self._read_fields(self.lib.minfer_plugin_field_names)]

    def serialize(self, handle: ctypes.c_void_p) -> dict[str, np.ndarray]:
        """getFieldsToSerialize, copied out of the plugin's memory."""
        out = {}
        for f in self._read_fields(lambda a, n: self.lib.minfer_plugin_serialize(handle, a, n)):
            ctype = {0: ctypes.c_int32, 2: ctypes.c_float}[f.type]
            values = np.ctypeslib.as_array(ctypes.cast(f.data, ctypes.POINTER(ctype)), (f.length,))
            out[f.name.decode()] = values.copy()
        return out

    def check_input_types(self, types: Sequence[int]) -> None:
        self._check(self.lib.minfer_plugin_check_input_types((ctypes.c_int32 * len(types))(*types), len(types)))

    def supports_format(self, pos: int, types: Sequence[int], linear: Sequence[bool], num_inputs: int = 3) -> bool:
        n = len(types)
        return bool(
            self.lib.minfer_plugin_supports_format(
                pos, (ctypes.c_int32 * n)(*types), (ctypes.c_int32 * n)(*linear), num_inputs, n - num_inputs
            )
        )

    def problem(self, handle: ctypes.c_void_p, q: Sequence[int], k: Sequence[int], v: Sequence[int], dtype: int):
        out = ProblemStruct()
        q_, k_, v_ = _dims(q), _dims(k), _dims(v)
        self._check(self.lib.minfer_plugin_problem(handle, q_, k_, v_, dtype, ctypes.byref(out)))
        return {name: getattr(out, name) for name, _ in ProblemStruct._fields_}

    def workspace_bytes(self, handle, q: Sequence[int], k: Sequence[int], v: Sequence[int], dtype: int) -> int:
        out = ctypes.c_size_t()
        q_, k_, v_ = _dims(q), _dims(k), _dims(v)
        self._check(self.lib.minfer_plugin_workspace_bytes(handle, q_, k_, v_, dtype, ctypes.byref(out)))
        return out.value

    def enqueue(self, handle, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, workspace, stream):
        """enqueue with the input descs' dims and type, device pointers and a cudaStream_t."""
        pointers = [t.data_ptr() for t in (q, k, v, out)]
        self._check(
            self.lib.minfer_plugin_enqueue(
                handle, _dims(q.shape), _dims(k.shape), _dims(v.shape), TORCH_TYPES.get(q.dtype, OTHER),
                *pointers, workspace, stream,
            )
        )  # fmt: skip


@pytest.fixture(scope="module")
def logic() -> PluginLogic:
    path = BUILD / LIBRARY_NAME
    if not path.is_file():
        pytest.skip(f"{path} is not built: run `cmake -S . -B build && cmake --build build`")
    return PluginLogic(path)


def random_head(rng: random.Random) -> HeadPattern:
    kind = rng.choice(list(Kind))
    if kind is Kind.A_SHAPE:
        return HeadPattern.a_shape(sink=rng.randint(0, 100), local=rng.randint(1, 300))
    if kind is Kind.VERTICAL_SLASH:
        return HeadPattern.vertical_slash(
            rng.randint(0, 400), rng.randint(0, 400), last_q=rng.randint(1, 256), sink=rng.randint(0, 40),
            local=rng.randint(1, 150),
        )  # fmt: skip
    if kind is Kind.BLOCK_SPARSE:
        return HeadPattern.block_sparse(top_k=rng.randint(1, 12))
    return HeadPattern.dense()


def plugin_fields(heads: Sequence[HeadPattern], scale: float, int_type=np.int32, float_type=np.float32) -> dict:
    """The fields TensorRT's ONNX parser makes of the node's attributes (INTS -> INT32, FLOAT -> FLOAT32)."""
    attrs = to_attributes(heads, scale)
    fields = {name: np.asarray(attrs[name], dtype=int_type) for name in ORDER if name != "scale"}
    return {"scale": float_type(attrs["scale"]), **fields}


def as_attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Plugin fields back to the node's attributes (scalars for scale and block_size)."""
    attrs = {name: np.atleast_1d(value).tolist() for name, value in fields.items()}
    return attrs | {"scale": float(attrs["scale"][0]), "block_size": int(attrs["block_size"][0])}


MIXED = (
    HeadPattern.dense(),
    HeadPattern.a_shape(sink=4, local=100),
    HeadPattern.vertical_slash(300, 200, last_q=64, sink=30, local=100),
    HeadPattern.block_sparse(top_k=3),
)

# ---------------------------------------------------------------- fields: names, parsing, serialisation


def test_field_names_are_the_nodes_attributes(logic: PluginLogic) -> None:
    names = logic.field_names()
    attrs = to_attributes(MIXED, 0.125)
    assert [n for n, _, _ in names] == list(ORDER)
    assert set(ORDER) == set(attrs) - {"plugin_version", "plugin_namespace"}
    assert names[0] == ("scale", 2, 1) and names[1] == ("block_size", 0, 1)
    assert all(kind == 0 and length == 0 for _, kind, length in names[2:])


@pytest.mark.parametrize("int_type,float_type", [(np.int32, np.float32), (np.int64, np.float64)])
def test_serialisation_round_trip(logic: PluginLogic, int_type, float_type) -> None:
    rng = random.Random(7)
    for trial in range(25):
        heads = [random_head(rng) for _ in range(rng.randint(1, 40))]
        scale = rng.uniform(0.01, 1.0)
        built = logic.parse(plugin_fields(heads, scale, int_type, float_type))
        serialized = logic.serialize(built)
        runtime = logic.parse(serialized)  # what createPlugin(kRUNTIME) gets from the engine
        again = logic.serialize(runtime)
        logic.free(built)
        logic.free(runtime)
        assert list(serialized) == list(ORDER), trial
        for name in ORDER:
            np.testing.assert_array_equal(serialized[name], again[name])
        parsed_scale, parsed_heads = validate_attributes(as_attributes(serialized))
        assert parsed_heads == tuple(heads)
        assert parsed_scale == float(np.float32(scale))


def test_routing_strings_are_accepted_when_they_agree(logic: PluginLogic) -> None:
    fields = plugin_fields(MIXED, 0.125) | {"plugin_version": "1", "plugin_namespace": "minfer"}
    logic.free(logic.parse(fields))
    with pytest.raises(LogicError, match="plugin_version must be '1', got '2'"):
        logic.parse(plugin_fields(MIXED, 0.125) | {"plugin_version": "2"})
    with pytest.raises(LogicError, match="plugin_namespace must be 'minfer', got 'trt'"):
        logic.parse(plugin_fields(MIXED, 0.125) | {"plugin_namespace": "trt"})


def _python_message(fields: Mapping[str, Any]) -> str:
    with pytest.raises(PatternError) as error:
        validate_attributes(as_attributes(fields))
    return str(error.value)


def _with(fields: dict, name: str, head: int, value: int) -> dict:
    changed = dict(fields)
    changed[name] = fields[name].copy()
    changed[name][head] = value
    return changed


INVALID_HEADS = [
    ("local", 1, 0),  # a_shape local >= 1
    ("sink", 1, -1),
    ("last_q", 2, 0),
    ("last_q", 2, 257),
    ("vertical_size", 2, -3),
    ("top_k", 3, 0),
    ("top_k", 0, 5),  # dense takes no top_k
    ("local", 3, 2),  # block_sparse takes no local
    ("kind", 1, 4),
    ("kind", 0, -1),
]


@pytest.mark.parametrize("name,head,value", INVALID_HEADS)
def test_invalid_heads_get_the_contracts_message(logic: PluginLogic, name: str, head: int, value: int) -> None:
    fields = _with(plugin_fields(MIXED, 0.125), name, head, value)
    with pytest.raises(LogicError) as error:
        logic.parse(fields)
    assert str(error.value) == _python_message(fields)


@pytest.mark.parametrize("scale", [0.0, -0.5, math.inf, math.nan])
def test_invalid_scale_gets_the_contracts_message(logic: PluginLogic, scale: float) -> None:
    fields = plugin_fields(MIXED, 0.125) | {"scale": np.float32(scale)}
    with pytest.raises(LogicError) as error:
        logic.parse(fields)
    assert str(error.value) == _python_message(fields)


def test_block_size_must_be_64(logic: PluginLogic) -> None:
    fields = plugin_fields(MIXED, 0.125) | {"block_size": np.int32(32)}
    with pytest.raises(LogicError, match="block_size must be 64, got 32"):
        logic.parse(fields)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda f: f.pop("local"), r"missing plugin field\(s\) \['local'\]"),
        (lambda f: f.update(top_k=np.array([1, 1, 1], np.int32)), r"attribute top_k has 3 entries, expected one per query head \(4\)"),
        (lambda f: f.update(window=np.int32(3)), "unknown plugin field 'window'"),
        (lambda f: f.update(kind=np.array([0.0, 1, 2, 3], np.float32)), "'kind' must hold integers"),
        (lambda f: f.update(sink=np.array([0, 2**31, 0, 0], np.int64)), r"'sink' entry 1 \(2147483648\) does not fit int32"),
        (lambda f: f.update(scale=np.array([0.1, 0.2], np.float32)), "'scale' must hold one number"),
        (lambda f: f.update(kind=np.array([], np.int32), **{n: np.array([], np.int32) for n in PER_HEAD_FIELDS}), "has no heads"),
    ],
)  # fmt: skip
def test_malformed_fields_are_named(logic: PluginLogic, change, message: str) -> None:
    fields = plugin_fields(MIXED, 0.125)
    change(fields)
    with pytest.raises(LogicError, match=message):
        logic.parse(fields)


def test_a_field_given_twice_is_refused(logic: PluginLogic) -> None:
    fields = list(plugin_fields(MIXED, 0.125).items())
    array = (Field * (len(fields) + 1))()
    keep = [np.atleast_1d(v) for _, v in fields]
    for i, ((name, _), data) in enumerate(zip(fields, keep, strict=True)):
        array[i] = Field(name.encode(), data.ctypes.data, FIELD_TYPES[data.dtype], data.size)
    array[len(fields)] = array[2]
    handle = ctypes.c_void_p()
    assert logic.lib.minfer_plugin_parse(array, len(fields) + 1, ctypes.byref(handle)) != 0
    assert logic.lib.minfer_plugin_last_error().decode() == "plugin field 'kind' is given twice"


# ---------------------------------------------------------------- types, formats, shapes


def test_input_types_must_agree(logic: PluginLogic) -> None:
    logic.check_input_types([BFLOAT16] * 3)
    with pytest.raises(LogicError, match="Q, K, V must share one dtype; got float16, bfloat16, float16"):
        logic.check_input_types([FLOAT16, BFLOAT16, FLOAT16])
    with pytest.raises(LogicError, match="takes 3 inputs"):
        logic.check_input_types([FLOAT16] * 2)


def test_format_combinations(logic: PluginLogic) -> None:
    for dtype in (FLOAT16, BFLOAT16):
        assert all(logic.supports_format(pos, [dtype] * 4, [True] * 4) for pos in range(4))
    assert not logic.supports_format(0, [FLOAT32] * 4, [True] * 4)
    assert not logic.supports_format(0, [OTHER] * 4, [True] * 4)
    assert not logic.supports_format(2, [FLOAT16] * 4, [True, True, False, True])
    assert not logic.supports_format(3, [FLOAT16, FLOAT16, FLOAT16, BFLOAT16], [True] * 4)
    assert not logic.supports_format(1, [BFLOAT16, FLOAT16, FLOAT16, FLOAT16], [True] * 4)
    assert not logic.supports_format(4, [FLOAT16] * 4, [True] * 4)
    assert not logic.supports_format(0, [FLOAT16] * 3, [True] * 3, num_inputs=2)


@pytest.fixture
def mixed(logic: PluginLogic):
    handle = logic.parse(plugin_fields(MIXED, 0.125))
    yield handle
    logic.free(handle)


def test_problem_from_dims(logic: PluginLogic, mixed) -> None:
    problem = logic.problem(mixed, [2, 4, 77, 128], [2, 2, 77, 128], [2, 2, 77, 128], BFLOAT16)
    assert problem == {"batch": 2, "num_q_heads": 4, "num_kv_heads": 2, "seq_len": 77, "head_dim": 128, "dtype": 1}
    assert logic.problem(mixed, [1, 4, 1, 64], [1, 1, 1, 64], [1, 1, 1, 64], FLOAT16)["seq_len"] == 1


@pytest.mark.parametrize(
    "q,k,v,dtype,message",
    [
        ([4, 77, 128], [2, 77, 128], [2, 77, 128], FLOAT16, r"Q must be 4-D \[B, H, S, D\], got \[4, 77, 128\]"),
        ([1, 4, -1, 128], [1, 2, -1, 128], [1, 2, -1, 128], FLOAT16, "empty or unknown dimension"),
        ([1, 4, 0, 128], [1, 2, 0, 128], [1, 2, 0, 128], FLOAT16, "empty or unknown dimension"),
        ([1, 4, 77, 128], [1, 2, 77, 128], [1, 1, 77, 128], FLOAT16, "K and V must be"),
        ([1, 4, 77, 128], [1, 2, 76, 128], [1, 2, 76, 128], FLOAT16, "K and V must be"),
        ([1, 4, 77, 96], [1, 2, 77, 96], [1, 2, 77, 96], FLOAT16, "head_dim 96 is not supported"),
        ([1, 4, 77, 64], [1, 3, 77, 64], [1, 3, 77, 64], FLOAT16, r"query heads \(4\) must be a positive multiple of KV heads \(3\)"),
        ([1, 8, 77, 64], [1, 2, 77, 64], [1, 2, 77, 64], FLOAT16, "pattern has 4 heads but Q has 8 query heads"),
        ([1, 4, 77, 64], [1, 2, 77, 64], [1, 2, 77, 64], FLOAT32, r"dtype float32 is not supported \(float16, bfloat16\)"),
    ],
)  # fmt: skip
def test_bad_problems_are_named(logic: PluginLogic, mixed, q, k, v, dtype: int, message: str) -> None:
    with pytest.raises(LogicError, match=message):
        logic.problem(mixed, q, k, v, dtype)
    with pytest.raises(LogicError, match=message):
        logic.workspace_bytes(mixed, q, k, v, dtype)


def test_workspace_for_the_profile_max_covers_every_smaller_shape(logic: PluginLogic) -> None:
    """getWorkspaceSize sizes for the profile's largest shape; enqueue passes the size of the actual one."""
    rng = random.Random(3)
    for _ in range(10):
        heads = [random_head(rng) for _ in range(4)]
        handle = logic.parse(plugin_fields(heads, 0.1))
        largest = logic.workspace_bytes(handle, [2, 4, 4096, 128], [2, 2, 4096, 128], [2, 2, 4096, 128], FLOAT16)
        for batch, seq in [(1, 1), (1, 63), (2, 64), (1, 1000), (2, 4095), (2, 4096)]:
            shape_q, shape_kv = [batch, 4, seq, 128], [batch, 2, seq, 128]
            assert logic.workspace_bytes(handle, shape_q, shape_kv, shape_kv, FLOAT16) <= largest, (heads, batch, seq)
        logic.free(handle)


# ---------------------------------------------------------------- GPU: the plugin's enqueue sequence


def _gpu_case(logic: PluginLogic, heads, batch: int, seq: int, max_seq: int, hkv: int, dim: int, dtype) -> None:
    hq = len(heads)
    scale = 1.0 / math.sqrt(dim)
    generator = torch.Generator().manual_seed(seq * 131 + hq * 7 + dim)
    q, k, v = (torch.randn(batch, h, seq, dim, generator=generator).to(dtype) for h in (hq, hkv, hkv))
    expected = sparse_prefill_attention(q.float(), k.float(), v.float(), heads, scale)  # same values, float32

    built = logic.parse(plugin_fields(heads, scale))  # build phase: workspace for the profile's max
    max_q, max_kv = [batch, hq, max_seq, dim], [batch, hkv, max_seq, dim]
    workspace_size = logic.workspace_bytes(built, max_q, max_kv, max_kv, TORCH_TYPES[dtype])
    runtime = logic.parse(logic.serialize(built))  # runtime phase: recreated from the engine's fields
    logic.free(built)

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        q_d, k_d, v_d = (t.cuda() for t in (q, k, v))
        out = torch.full_like(q_d, float("nan"))
        workspace = torch.full((max(workspace_size, 1),), 0xFF, dtype=torch.uint8, device="cuda")
    logic.enqueue(runtime, q_d, k_d, v_d, out, workspace.data_ptr(), stream.cuda_stream)
    stream.synchronize()
    logic.free(runtime)

    got = out.float().cpu()
    assert not got.isnan().any(), "rows left unwritten"
    tolerance = 1e-2 if dtype is torch.bfloat16 else 5e-3  # as tests/test_kernels_gpu.py
    error = ((got - expected).abs() / (1 + expected.abs())).max().item()
    assert error <= tolerance, f"error {error} (heads {heads}, B={batch}, S={seq}, D={dim}, {dtype})"


GPU_HEADS = (
    HeadPattern.vertical_slash(120, 150, last_q=64, sink=4, local=40),
    HeadPattern.a_shape(sink=3, local=70),
    HeadPattern.block_sparse(top_k=2),
    HeadPattern.dense(),
)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("seq,hkv", [(1, 2), (37, 1), (200, 2), (513, 4), (1000, 2)])
def test_enqueue_matches_the_reference(logic: PluginLogic, dtype, dim: int, seq: int, hkv: int) -> None:
    _gpu_case(logic, GPU_HEADS, batch=2, seq=seq, max_seq=1024, hkv=hkv, dim=dim, dtype=dtype)


@pytest.mark.gpu
def test_enqueue_random_patterns(logic: PluginLogic) -> None:
    rng = random.Random(11)
    for _ in range(6):
        heads = tuple(random_head(rng) for _ in range(8))
        _gpu_case(logic, heads, batch=1, seq=rng.randint(65, 900), max_seq=1024, hkv=2, dim=128, dtype=torch.float16)


@pytest.mark.gpu
def test_enqueue_refuses_a_bad_problem_before_launching(logic: PluginLogic, mixed) -> None:
    q = torch.zeros(1, 4, 70, 96, dtype=torch.float16, device="cuda")
    k = torch.zeros(1, 2, 70, 96, dtype=torch.float16, device="cuda")
    out = torch.full_like(q, 7.0)
    with pytest.raises(LogicError, match="head_dim 96 is not supported"):
        logic.enqueue(mixed, q, k, k, out, None, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert (out == 7.0).all()
