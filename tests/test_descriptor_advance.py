"""wgmma.cuh's descriptor advance on the host (bench/descriptor_advance_check.cu, compiled by nvcc; CPU only).

The sm_90a kernel builds each k-step's wgmma descriptor as the tile's plus a constant; if that ever carried out
of the start-address field, Q K^T and P V would read the wrong shared memory with no error, so CI checks it for
every 1 KB aligned tile position.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cutlass_include() -> Path:
    """The CUTLASS headers of the nvidia-cutlass wheel, found as trt_plugins/CMakeLists.txt finds them."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the nvidia-cutlass wheel is not installed (pip install nvidia-cutlass==4.2.0.0)")
    return Path(spec.submodule_search_locations[0]) / "source" / "include"


def test_descriptor_advance_equals_a_rebuilt_descriptor(tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    binary = tmp_path / "descriptor_advance_check"
    command = [nvcc, "-std=c++17", f"-I{REPO / 'trt_plugins/include'}", f"-I{REPO / 'trt_plugins/kernels'}"]
    command += ["-isystem", str(cutlass_include()), str(REPO / "bench/descriptor_advance_check.cu"), "-o", str(binary)]
    subprocess.run(command, check=True, capture_output=True)
    result = subprocess.run([binary], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith(", 0 differ"), result.stdout
