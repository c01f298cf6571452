"""The SM clock, power and throttle reasons a timing ran at, sampled by nvidia-smi in the background.

Long runs on the H100/H200 are limited by power, not by a fixed clock: the 1M-token kernel ran at 1.44 GHz
under Nsight Compute against a 1.98 GHz maximum. A TFLOP/s figure means little without the clock it ran at,
so the benchmark reports both.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"
# NVML's clocks event reasons (nvml.h, nvmlClocksEventReason*), those that lower the clock under load
REASONS = {0x4: "power cap", 0x8: "hw slowdown", 0x20: "sw thermal", 0x40: "hw thermal", 0x80: "power brake"}


@dataclass(frozen=True)
class Clocks:
    """What nvidia-smi saw over one timing window."""

    sm_mhz: float
    watts: float
    max_temp_c: float
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        limits = ", ".join(self.reasons) or "none"
        return f"{self.sm_mhz:.0f} MHz, {self.watts:.0f} W, {self.max_temp_c:.0f} C, {limits}"


@dataclass
class Window:
    """Filled in when the `measured` block ends; None where nvidia-smi gave no sample in it."""

    clocks: Clocks | None = None


class ClockSampler:
    """nvidia-smi -lms in a thread, each line stamped with time.monotonic() on arrival."""

    def __init__(self, interval_ms: int = 50) -> None:
        self.samples: list[tuple[float, float, float, float, int]] = []
        self.process = None
        if shutil.which("nvidia-smi") is None:
            return
        self.process = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", f"-lms={interval_ms}", "-i=0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            fields = [f.strip() for f in line.split(",")]
            try:
                mhz, watts, temp = (float(f) for f in fields[:3])
                reasons = int(fields[3], 16)
            except (ValueError, IndexError):
                continue  # "[N/A]" or a partial line
            self.samples.append((time.monotonic(), mhz, watts, temp, reasons))

    def over(self, start: float, end: float) -> Clocks | None:
        inside = [s for s in list(self.samples) if start <= s[0] <= end]
        if not inside:
            return None
        mask = 0
        for sample in inside:
            mask |= sample[4]
        return Clocks(
            sm_mhz=statistics.mean(s[1] for s in inside),
            watts=statistics.mean(s[2] for s in inside),
            max_temp_c=max(s[3] for s in inside),
            reasons=tuple(name for bit, name in REASONS.items() if mask & bit),
        )

    @contextmanager
    def measured(self) -> Iterator[Window]:
        window, start = Window(), time.monotonic()
        yield window
        window.clocks = self.over(start, time.monotonic())

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
