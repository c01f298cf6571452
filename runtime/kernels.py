"""The kernel library (`libminfer_kernels.so`) from Python, through the same C ABI the TensorRT plugin calls.

`KernelLibrary` binds the ABI with ctypes; `register_cuda_kernel` makes it the CUDA implementation of
`torch.ops.minfer.sparse_prefill_attention`, so the GPU tests and benchmarks exercise the plugin's
exact path and the library never links PyTorch. The library is found at `$MINFER_KERNELS_LIB` or in
the repository's `build/` (`cmake -S . -B build && cmake --build build -j`).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from ..patterns.spec import PER_HEAD_FIELDS, HeadPattern, PatternError
from .loading import BUILD_DIR

LIBRARY_ENV = "MINFER_KERNELS_LIB"
LIBRARY_NAME = "libminfer_kernels.so"
BUILD_HINT = "build it with `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j`"

DTYPES = {torch.float16: 0, torch.bfloat16: 1}


class KernelError(RuntimeError):
    """A failed C ABI call; `status` is the minfer_status code, the message the library's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Pattern(ctypes.Structure):
    _fields_ = [
        ("num_heads", ctypes.c_int32),
        *[(name, ctypes.POINTER(ctypes.c_int32)) for name in ("kind", *PER_HEAD_FIELDS)],
        ("scale", ctypes.c_float),
        ("block_size", ctypes.c_int32),
    ]


class ProblemStruct(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("num_q_heads", ctypes.c_int64),
        ("num_kv_heads", ctypes.c_int64),
        ("seq_len", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("dtype", ctypes.c_int32),
    ]


LAYOUT_FIELDS = (
    "vs_heads",
    "bs_heads",
    "num_blocks",
    "columns_stride",
    "diagonals_stride",
    "held_words",
    "blocks_stride",
    "column_scores",
    "diagonal_scores",
    "columns",
    "diagonals",
    "lags",
    "lag_counts",
    "held",
    "pooled_q",
    "pooled_k",
    "blocks",
    "total_bytes",
)


class _Layout(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in LAYOUT_FIELDS]


@dataclass(frozen=True)
class Problem:
    batch: int
    num_q_heads: int
    num_kv_heads: int
    seq_len: int
    head_dim: int
    dtype: int  # 0 float16, 1 bfloat16 (minfer_dtype)

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor) -> Problem:
        if q.dtype not in DTYPES:
            raise PatternError(f"dtype {q.dtype} is not supported by the CUDA kernels (float16, bfloat16)")
        return cls(q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3], DTYPES[q.dtype])


class PatternArgs:
    """A minfer_pattern and the int32 arrays it points into (kept alive together)."""

    def __init__(self, attrs: dict[str, Sequence[int]], scale: float, block_size: int = 64) -> None:
        count = len(attrs["kind"])
        array_type = ctypes.c_int32 * max(count, 1)
        self.arrays = {name: array_type(*attrs[name]) for name in ("kind", *PER_HEAD_FIELDS)}
        self.struct = _Pattern(count, *self.arrays.values(), scale, block_size)

    @classmethod
    def of_heads(cls, heads: Sequence[HeadPattern], scale: float) -> PatternArgs:
        attrs = {"kind": [int(h.kind) for h in heads]}
        attrs.update({name: [getattr(h, name) for h in heads] for name in PER_HEAD_FIELDS})
        return cls(attrs, scale)


class KernelLibrary:
    """The C ABI of one loaded libminfer_kernels.so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        status, p_pattern, p_problem = ctypes.c_int, ctypes.POINTER(_Pattern), ctypes.POINTER(ProblemStruct)
        vp, size_t = ctypes.c_void_p, ctypes.c_size_t
        signatures = {
            "minfer_validate_pattern": (status, [p_pattern]),
            "minfer_validate_problem": (status, [p_pattern, p_problem]),
            "minfer_workspace_size": (status, [p_pattern, p_problem, ctypes.POINTER(size_t)]),
            "minfer_launch": (status, [p_pattern, p_problem, vp, vp, vp, vp, vp, size_t, vp]),
            "minfer_last_error": (ctypes.c_char_p, []),
            "minfer_abi_version": (ctypes.c_int32, []),
            "minfer_index_layout_of": (status, [p_pattern, p_problem, ctypes.POINTER(_Layout)]),
            "minfer_debug_tiles": (
                status,
                [p_pattern, p_problem, vp, size_t, vp, ctypes.c_int64, ctypes.c_int32, vp, vp, vp],
            ),
            "minfer_debug_block_scores": (status, [p_pattern, p_problem, vp, size_t, vp, vp]),
            "minfer_kernel_versions": (status, [ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)]),
        }
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = restype, argtypes

    def _check(self, status: int) -> None:
        if status != 0:
            raise KernelError(status, self.lib.minfer_last_error().decode())

    def abi_version(self) -> int:
        return self.lib.minfer_abi_version()

    def validate_pattern(self, pattern: PatternArgs) -> str | None:
        """None if valid, else the library's message."""
        status = self.lib.minfer_validate_pattern(ctypes.byref(pattern.struct))
        return None if status == 0 else self.lib.minfer_last_error().decode()

    def validate_problem(self, pattern: PatternArgs, problem: Problem) -> str | None:
        status = self.lib.minfer_validate_problem(
            ctypes.byref(pattern.struct), ctypes.byref(ProblemStruct(**vars(problem)))
        )
        return None if status == 0 else self.lib.minfer_last_error().decode()

    def workspace_size(self, pattern: PatternArgs, problem: Problem) -> int:
        size = ctypes.c_size_t()
        self._check(
            self.lib.minfer_workspace_size(
                ctypes.byref(pattern.struct), ctypes.byref(ProblemStruct(**vars(problem))), ctypes.byref(size)
            )
        )
        return size.value

    def index_layout(self, pattern: PatternArgs, problem: Problem) -> dict[str, int]:
        layout = _Layout()
        self._check(
            self.lib.minfer_index_layout_of(
                ctypes.byref(pattern.struct), ctypes.byref(ProblemStruct(**vars(problem))), ctypes.byref(layout)
            )
        )
        return {name: getattr(layout, name) for name in LAYOUT_FIELDS}

    def launch(
        self,
        pattern: PatternArgs,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        workspace: torch.Tensor,
        stream: int,
    ) -> None:
        """Enqueues index building and attention on `stream` (a cudaStream_t as int), as the plugin does."""
        problem = ProblemStruct(**vars(Problem.of(q, k)))
        self._check(
            self.lib.minfer_launch(
                ctypes.byref(pattern.struct),
                ctypes.byref(problem),
                q.data_ptr(),
                k.data_ptr(),
                v.data_ptr(),
                out.data_ptr(),
                workspace.data_ptr(),
                workspace.numel(),
                stream,
            )
        )

    def debug_tiles(
        self,
        pattern: PatternArgs,
        problem: Problem,
        workspace: torch.Tensor,
        items: torch.Tensor,
        max_tiles: int,
        stream: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Key tiles of work items [n, 3] (batch, head, query block): ([n, max_tiles, 64] keys, [n] counts)."""
        items = items.to(device=workspace.device, dtype=torch.int32).contiguous()
        keys = torch.full((items.shape[0], max_tiles, 64), -(2**31), dtype=torch.int32, device=workspace.device)
        counts = torch.full((items.shape[0],), -1, dtype=torch.int32, device=workspace.device)
        self._check(
            self.lib.minfer_debug_tiles(
                ctypes.byref(pattern.struct),
                ctypes.byref(ProblemStruct(**vars(problem))),
                workspace.data_ptr(),
                workspace.numel(),
                items.data_ptr(),
                items.shape[0],
                max_tiles,
                keys.data_ptr(),
                counts.data_ptr(),
                stream,
            )
        )
        return keys, counts

    def debug_block_scores(
        self, pattern: PatternArgs, problem: Problem, workspace: torch.Tensor, bs_heads: int, stream: int
    ) -> torch.Tensor:
        nb = -(-problem.seq_len // 64)
        scores = torch.full((problem.batch, bs_heads, nb, nb), float("nan"), device=workspace.device)
        self._check(
            self.lib.minfer_debug_block_scores(
                ctypes.byref(pattern.struct),
                ctypes.byref(ProblemStruct(**vars(problem))),
                workspace.data_ptr(),
                workspace.numel(),
                scores.data_ptr(),
                stream,
            )
        )
        return scores

    def kernel_versions(self) -> tuple[int, int]:
        """(PTX version, binary version) of the attention kernel loaded for the current device."""
        ptx, binary = ctypes.c_int32(), ctypes.c_int32()
        self._check(self.lib.minfer_kernel_versions(ctypes.byref(ptx), ctypes.byref(binary)))
        return ptx.value, binary.value


def library_path() -> Path:
    """Where the library is looked for: $MINFER_KERNELS_LIB, else <repo>/build/libminfer_kernels.so."""
    env = os.environ.get(LIBRARY_ENV)
    return Path(env) if env else BUILD_DIR / LIBRARY_NAME


@cache
def load_library() -> KernelLibrary:
    path = library_path()
    if not path.is_file():
        raise FileNotFoundError(f"kernel library not found at {path}: {BUILD_HINT}, or set ${LIBRARY_ENV}")
    return KernelLibrary(path)


def sparse_prefill_attention_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kind: list[int],
    sink: list[int],
    local: list[int],
    vertical_size: list[int],
    slash_size: list[int],
    last_q: list[int],
    top_k: list[int],
    scale: float,
) -> torch.Tensor:
    """The op's CUDA implementation: the kernel library on the current stream, workspace from PyTorch."""
    from .torch_op import attributes_to_patterns  # torch_op imports this module to register it

    scale, patterns = attributes_to_patterns(kind, sink, local, vertical_size, slash_size, last_q, top_k, scale)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape != v.shape:
        raise PatternError(
            f"Q, K, V must be 4-D [B, H, S, D] with K and V alike; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise PatternError(f"Q, K, V must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise PatternError(f"Q, K, V must be on one device; got {q.device}, {k.device}, {v.device}")
    library = load_library()
    pattern = PatternArgs.of_heads(patterns, scale)
    problem = Problem.of(q, k)
    message = library.validate_problem(pattern, problem)
    if message is not None:
        raise PatternError(message)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    with torch.cuda.device(q.device):
        workspace = torch.empty(max(library.workspace_size(pattern, problem), 16), dtype=torch.uint8, device=q.device)
        library.launch(pattern, q, k, v, out, workspace, torch.cuda.current_stream().cuda_stream)
    return out


def register_cuda_kernel() -> None:
    """Makes the kernel library the CUDA implementation of the op (loaded at the first CUDA call)."""
    from .torch_op import OP_NAME

    torch.library.register_kernel(OP_NAME, "cuda", sparse_prefill_attention_cuda)
