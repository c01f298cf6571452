"""bench/gpu_clocks.py against a fake nvidia-smi (CPU only).

The benchmark's TFLOP/s are read against the clock they ran at, so a parser that dropped samples, mixed up the
columns or decoded the throttle mask wrongly would mislead every table in docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def gpu_clocks(monkeypatch: pytest.MonkeyPatch):
    """bench/ is no package: imported as bench_kernels.py imports it, from its folder."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("gpu_clocks")


def fake_smi(folder: Path, lines: list[str]) -> None:
    """An nvidia-smi that prints `lines` over and over, 20 ms apart, as `-lms` does."""
    script = folder / "nvidia-smi"
    body = "".join(f"  echo '{line}'; sleep 0.02\n" for line in lines)
    script.write_text(f"#!/bin/sh\nwhile true; do\n{body}done\n")
    script.chmod(0o755)


def test_window_means_and_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(
        tmp_path, ["1400, 690.00, 58, 0x0000000000000004", "1600, 650.00, 61, 0x0000000000000000", "[N/A], 1, 1, 0x0"]
    )
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    module = gpu_clocks(monkeypatch)
    sampler = module.ClockSampler()
    try:
        with sampler.measured() as window:
            time.sleep(0.6)
    finally:
        sampler.close()
    clocks = window.clocks
    assert clocks is not None
    assert 1400 < clocks.sm_mhz < 1600  # both kinds of line arrived; the [N/A] one was skipped
    assert 650 < clocks.watts < 690
    assert clocks.max_temp_c == 61
    assert clocks.reasons == ("power cap",)
    assert str(clocks).endswith("C, power cap")


def test_no_nvidia_smi_gives_no_clocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    module = gpu_clocks(monkeypatch)
    sampler = module.ClockSampler()
    with sampler.measured() as window:
        pass
    sampler.close()
    assert window.clocks is None
