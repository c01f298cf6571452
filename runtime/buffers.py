"""Device buffers and streams through cuda-python, and inputs from numpy, torch, cupy or DLPack.

Device inputs (torch CUDA tensors, `__cuda_array_interface__` objects such as cupy arrays, CUDA
DLPack objects) are used in place; host inputs are copied to the device on the run's stream.
Numeric types are converted only where no value can change (token ids int64 <-> int32 in range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DeviceMemoryError, InputError, MinferRuntimeError

# DLPack device types (dlpack.h)
DLPACK_CPU = 1
DLPACK_CUDA = 2

# element type names, as TensorRT's DataType maps onto them (numpy has no bfloat16)
NUMPY_TYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}
ITEM_SIZES = {name: np.dtype(t).itemsize for name, t in NUMPY_TYPES.items()} | {"bfloat16": 2}
GIB = 1 << 30


def _cudart() -> Any:
    from cuda.bindings import runtime

    return runtime


def cuda_check(result: tuple[Any, ...], what: str) -> Any:
    """Unpack a cuda-python call's (error, *values); raise naming the call on failure."""
    cudart = _cudart()
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(error)[1].decode()
        if error == cudart.cudaError_t.cudaErrorMemoryAllocation:
            raise DeviceMemoryError(f"{what}: the GPU is out of memory ({name})")
        raise MinferRuntimeError(f"{what} failed: {name}")
    return values[0] if len(values) == 1 else tuple(values) or None


def free_device_memory() -> tuple[int, int]:
    """(free, total) bytes of the current device."""
    return cuda_check(_cudart().cudaMemGetInfo(), "cudaMemGetInfo")


def ensure_device_memory(needed: int, what: str) -> None:
    free, total = free_device_memory()
    if needed > free:
        raise DeviceMemoryError(
            f"{what} needs {needed / GIB:.2f} GiB but the GPU has {free / GIB:.2f} GiB free of {total / GIB:.2f} "
            "GiB; use a shorter sequence or smaller batch, or free the GPU"
        )


class DeviceAllocation:
    """Device memory from cudaMalloc, freed with its owner."""

    def __init__(self, nbytes: int, what: str) -> None:
        self.ptr = int(cuda_check(_cudart().cudaMalloc(max(nbytes, 1)), f"allocating {nbytes} bytes for {what}"))

    def __del__(self) -> None:
        if getattr(self, "ptr", 0):
            _cudart().cudaFree(self.ptr)
            self.ptr = 0


@dataclass
class DeviceArray:
    """A contiguous device tensor: pointer, shape, element type name, and whatever keeps it alive."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    owner: Any = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_SIZES[self.dtype]

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: str, what: str) -> DeviceArray:
        nbytes = math.prod(shape) * ITEM_SIZES[dtype]
        ensure_device_memory(nbytes, what)
        allocation = DeviceAllocation(nbytes, what)
        return cls(allocation.ptr, tuple(shape), dtype, allocation)

    def to_numpy(self) -> np.ndarray:
        """A host copy; bfloat16 comes back as float32 (exact)."""
        raw_type = np.uint16 if self.dtype == "bfloat16" else NUMPY_TYPES[self.dtype]
        host = np.empty(self.shape, dtype=raw_type)
        cudart = _cudart()
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(cudart.cudaMemcpy(host.ctypes.data, self.ptr, self.nbytes, kind), "copying an output to the host")
        if self.dtype == "bfloat16":
            return (host.astype(np.uint32) << 16).view(np.float32)
        return host

    def to_torch(self) -> Any:
        """A torch CUDA tensor sharing this memory (it keeps this array alive)."""
        import torch

        raw = "<u2" if self.dtype == "bfloat16" else np.dtype(NUMPY_TYPES[self.dtype]).str
        view = _CudaArrayView(self, raw)
        tensor = torch.as_tensor(view, device="cuda")
        return tensor.view(torch.bfloat16) if self.dtype == "bfloat16" else tensor


@dataclass
class _CudaArrayView:
    array: DeviceArray
    typestr: str

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.array.shape, "typestr": self.typestr, "data": (self.array.ptr, False), "version": 3}


def stream_handle(stream: Any) -> int:
    """A cudaStream_t as an int from an int, cuda-python handle, torch or cupy stream, or __cuda_stream__."""
    if stream is None:
        return 0
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    for attribute in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
        if hasattr(stream, attribute):
            return int(getattr(stream, attribute))
    try:
        return int(stream)
    except (TypeError, ValueError):
        raise InputError(f"cannot use {type(stream).__name__} as a CUDA stream") from None


def _torch_type_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _converted_host(array: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """Host data in the engine's type, refusing conversions that could change a value."""
    if dtype == "bfloat16":
        if array.dtype != np.float32:
            raise InputError(f"input {name!r} must be bfloat16 (or float32 on the host), got {array.dtype}")
        bits = np.ascontiguousarray(array).view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    target = np.dtype(NUMPY_TYPES[dtype])
    if array.dtype == target:
        return array
    if array.dtype.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(target)
    raise InputError(f"input {name!r} must be {dtype}, got {array.dtype}")


def _from_torch(tensor: Any, dtype: str, name: str) -> DeviceArray | np.ndarray:
    import torch

    if tensor.device.type != "cuda":
        cpu = tensor.detach().contiguous()
        return cpu.float().numpy() if cpu.dtype == torch.bfloat16 else cpu.numpy()
    if _torch_type_name(tensor) != dtype:
        integer = not tensor.dtype.is_floating_point and dtype in ("int32", "int64")
        if not integer:
            raise InputError(f"input {name!r} must be {dtype}, got {_torch_type_name(tensor)}")
        target = getattr(torch, dtype)
        info = torch.iinfo(target)
        if tensor.numel() and (tensor.min() < info.min or tensor.max() > info.max):
            raise InputError(f"input {name!r} has values outside {dtype}")
        tensor = tensor.to(target)
    tensor = tensor.contiguous()
    return DeviceArray(tensor.data_ptr(), tuple(tensor.shape), dtype, tensor)


def _from_cuda_array_interface(value: Any, dtype: str, name: str) -> DeviceArray:
    interface = value.__cuda_array_interface__
    shape = tuple(interface["shape"])
    found = np.dtype(interface["typestr"])
    if dtype == "bfloat16" or found != np.dtype(NUMPY_TYPES[dtype]):
        raise InputError(f"input {name!r} must be {dtype}, got {found} (device arrays are not converted)")
    strides = interface.get("strides")
    if strides is not None and tuple(strides) != tuple(np.empty(shape, found).strides):
        raise InputError(f"input {name!r} must be C-contiguous on the device")
    return DeviceArray(int(interface["data"][0]), shape, dtype, value)


def as_array(value: Any, dtype: str, name: str) -> DeviceArray | np.ndarray:
    """A device array used in place, or contiguous host data already in the engine's type."""
    try:
        import torch
    except ImportError:  # torch is a dependency of minfer, not of this runtime
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        found = _from_torch(value, dtype, name)
    elif hasattr(value, "__cuda_array_interface__"):
        found = _from_cuda_array_interface(value, dtype, name)
    elif hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__") and not isinstance(value, np.ndarray):
        device_type = int(value.__dlpack_device__()[0])
        if device_type == DLPACK_CPU:
            found = np.from_dlpack(value)
        elif device_type == DLPACK_CUDA and torch is not None:
            found = _from_torch(torch.from_dlpack(value), dtype, name)
        else:
            raise InputError(f"input {name!r} is a DLPack tensor on device type {device_type}; expected CPU or CUDA")
    else:
        found = np.asarray(value)
    if isinstance(found, DeviceArray):
        return found
    return np.ascontiguousarray(_converted_host(found, dtype, name))


def as_device_array(value: Any, dtype: str, name: str, stream: int) -> DeviceArray:
    """Any supported input on the device in the engine's type; host data is copied on `stream`."""
    found = as_array(value, dtype, name)
    if isinstance(found, DeviceArray):
        return found
    array = DeviceArray.empty(found.shape, dtype, f"input {name!r}")
    cudart = _cudart()
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    cuda_check(cudart.cudaMemcpyAsync(array.ptr, found.ctypes.data, found.nbytes, kind, stream), f"copying {name!r}")
    array.owner = (array.owner, found)  # the host data must outlive the asynchronous copy
    return array
