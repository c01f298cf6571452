"""bench/bench_kernels.py's median_ms against a fake clock (CPU only).

Under the H200's power cap the SM clock drifts by hundreds of MHz within one benchmark run, so builds (and dense
SDPA) timed one after another take that drift as their own; median_ms takes them in turns instead. These tests
fail if it times each call's reps back to back again, or mixes up whose time is whose.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


class FakeGpu:
    """A GPU whose calls take `work` units at a speed that falls by `drift` per unit done (a warming GPU)."""

    def __init__(self, drift: float) -> None:
        self.now, self.done, self.drift = 0.0, 0.0, drift

    def run(self, work: float) -> None:
        self.now += work * (1 + self.drift * self.done)
        self.done += work

    def event_class(self):
        gpu = self

        class Event:
            def __init__(self, enable_timing: bool) -> None:
                self.at = 0.0

            def record(self) -> None:
                self.at = gpu.now

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, end: Event) -> float:
                return end.at - self.at

        return Event


def bench_kernels(monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(torch.cuda, "Event", gpu.event_class())
    return importlib.import_module("bench_kernels")


def test_each_call_gets_its_own_time_and_the_order_rotates(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu, order = FakeGpu(drift=0.0), []

    def call(name: str, work: float):
        def run() -> None:
            order.append(name)
            gpu.run(work)

        return run

    module = bench_kernels(monkeypatch, gpu)
    medians = module.median_ms(call("a", 1.0), call("b", 3.0), call("c", 5.0), reps=3, warmup=1)
    assert medians == [1.0, 3.0, 5.0]
    warmup, turns = order[:3], order[3:]
    assert warmup == ["a", "b", "c"]
    assert turns == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each rep starts one call later


def test_a_drifting_clock_falls_on_identical_calls_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(drift=0.01)
    module = bench_kernels(monkeypatch, gpu)
    first, second = module.median_ms(lambda: gpu.run(1.0), lambda: gpu.run(1.0), reps=9, warmup=0)
    # back to back, the second call's 9 reps would run 9 units later: about 9% slower
    assert abs(second - first) / first < 0.015
