"""Kernel-header logic checked on the host: bench/*_check.cu programs, compiled by nvcc and run (CPU only).

- wgmma.cuh's descriptor advance (bench/descriptor_advance_check.cu): the sm_90a kernel builds each k-step's wgmma
  descriptor as the tile's plus a constant; if that ever carried out of the start-address field, Q K^T and P V would
  read the wrong shared memory with no error, so CI checks it for every 1 KB aligned tile position.
- grid_order.cuh's work-item order (bench/grid_order_check.cu): a CTA index that decoded to no item, or two to the
  same one, would leave output rows unwritten or race on them; the check covers 3000 random layers.
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


def run_check(source: str, tmp_path: Path, extra: list[str]) -> str:
    """Compiles bench/<source> against the kernel headers, runs it, and returns its output (exit status 0)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    binary = tmp_path / Path(source).stem
    command = [nvcc, "-std=c++17", f"-I{REPO / 'trt_plugins/include'}", f"-I{REPO / 'trt_plugins/kernels'}", *extra]
    subprocess.run([*command, str(REPO / "bench" / source), "-o", str(binary)], check=True, capture_output=True)
    result = subprocess.run([binary], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    return result.stdout.strip()


def test_descriptor_advance_equals_a_rebuilt_descriptor(tmp_path: Path) -> None:
    output = run_check("descriptor_advance_check.cu", tmp_path, ["-isystem", str(cutlass_include())])
    assert output.endswith(", 0 differ"), output


def test_grid_covers_every_work_item_once_heaviest_first(tmp_path: Path) -> None:
    output = run_check("grid_order_check.cu", tmp_path, [])
    assert output.startswith("3000 layers,") and output.endswith(", 0 bad"), output
