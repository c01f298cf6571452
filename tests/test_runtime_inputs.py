"""Inputs from numpy, torch, cupy or DLPack; streams from any library; device buffers (GPU part)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minfer.runtime.buffers import DeviceArray, as_array, as_device_array, ensure_device_memory, stream_handle
from minfer.runtime.errors import DeviceMemoryError, InputError


class _Stream:
    def __init__(self, **attributes) -> None:
        self.__dict__.update(attributes)


class _StreamProtocol:
    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, 1234)


def test_stream_handles() -> None:
    assert stream_handle(None) == 0
    assert stream_handle(77) == 77
    assert stream_handle(_Stream(cuda_stream=11)) == 11  # torch.cuda.Stream
    assert stream_handle(_Stream(ptr=12)) == 12  # cupy.cuda.Stream
    assert stream_handle(_StreamProtocol()) == 1234
    with pytest.raises(InputError, match="cannot use str as a CUDA stream"):
        stream_handle("stream")


def test_host_token_ids_convert_only_when_exact() -> None:
    ids = np.arange(10, dtype=np.int64).reshape(2, 5)
    converted = as_array(ids, "int32", "input_ids")
    assert converted.dtype == np.int32 and converted.flags.c_contiguous
    np.testing.assert_array_equal(converted, ids)
    with pytest.raises(InputError, match="input 'input_ids' must be int32, got int64"):
        as_array(np.array([[2**40]]), "int32", "input_ids")
    with pytest.raises(InputError, match="must be float16, got float64"):
        as_array(np.zeros((1, 3)), "float16", "x")


def test_torch_and_dlpack_cpu_inputs_become_host_arrays() -> None:
    tensor = torch.arange(12).reshape(3, 4)[:, ::2]  # not contiguous
    from_torch = as_array(tensor, "int64", "ids")
    np.testing.assert_array_equal(from_torch, tensor.numpy())
    assert from_torch.flags.c_contiguous

    class DLPackOnly:  # a DLPack producer that is neither numpy nor torch
        def __init__(self, array: np.ndarray) -> None:
            self.array = array

        def __dlpack__(self, **kwargs):
            return self.array.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.array.__dlpack_device__()

    np.testing.assert_array_equal(as_array(DLPackOnly(np.ones((2, 2), np.int32)), "int32", "m"), np.ones((2, 2)))


def test_bfloat16_host_data_rounds_like_torch() -> None:
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 100
    bits = as_array(values.numpy(), "bfloat16", "x")
    np.testing.assert_array_equal(bits, values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    exact = as_array(values.to(torch.bfloat16), "bfloat16", "x")  # a CPU bfloat16 tensor
    np.testing.assert_array_equal(exact, bits)
    with pytest.raises(InputError, match=r"must be bfloat16 .* got int64"):
        as_array(np.zeros(3, np.int64), "bfloat16", "x")


class _DeviceArrayLike:
    def __init__(self, typestr: str, strides=None) -> None:
        self.__cuda_array_interface__ = {
            "shape": (2, 3),
            "typestr": typestr,
            "data": (0xDEAD0000, False),
            "version": 3,
            "strides": strides,
        }


def test_cuda_array_interface_inputs_are_used_in_place() -> None:
    found = as_array(_DeviceArrayLike("<f2"), "float16", "q")
    assert isinstance(found, DeviceArray) and found.ptr == 0xDEAD0000 and found.shape == (2, 3)
    assert found.nbytes == 12
    with pytest.raises(InputError, match="must be float32, got float16 \\(device arrays are not converted\\)"):
        as_array(_DeviceArrayLike("<f2"), "float32", "q")
    with pytest.raises(InputError, match="must be C-contiguous"):
        as_array(_DeviceArrayLike("<f2", strides=(2, 4)), "float16", "q")


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_host_inputs_upload_and_outputs_come_back() -> None:
    values = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    device = as_device_array(values, "float32", "x", 0)
    np.testing.assert_array_equal(device.to_numpy(), values)
    bf16 = as_device_array(values, "bfloat16", "x", 0)
    expected = torch.from_numpy(values).to(torch.bfloat16)
    assert torch.equal(bf16.to_torch().cpu(), expected)
    np.testing.assert_array_equal(bf16.to_numpy(), expected.float().numpy())


@pytest.mark.gpu
def test_device_tensors_are_used_in_place() -> None:
    tensor = torch.arange(6, device="cuda", dtype=torch.int64).reshape(2, 3)
    same = as_device_array(tensor, "int64", "ids", 0)
    assert same.ptr == tensor.data_ptr()
    converted = as_device_array(tensor, "int32", "ids", 0)
    assert converted.to_torch().dtype == torch.int32 and converted.to_numpy().tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(InputError, match="must be float16, got float32"):
        as_device_array(tensor.float(), "float16", "q", 0)
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    array = cupy.arange(4, dtype=cupy.float16)
    assert as_device_array(array, "float16", "q", 0).ptr == array.data.ptr
    ones = as_device_array(cupy.ones((2, 2), dtype=cupy.int64), "int64", "ids", 0)
    assert ones.to_numpy().tolist() == [[1, 1], [1, 1]]


@pytest.mark.gpu
def test_too_large_a_buffer_is_a_clear_error() -> None:
    with pytest.raises(DeviceMemoryError, match=r"needs 1048576\.00 GiB but the GPU has .* GiB free"):
        ensure_device_memory(1 << 50, "output 'logits'")
    with pytest.raises(DeviceMemoryError, match="output 'logits' needs"):
        DeviceArray.empty((1 << 20, 1 << 20, 1 << 10), "float32", "output 'logits'")
