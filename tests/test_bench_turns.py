"""bench/bench_kernels.py's balanced_ms against a fake clock (CPU only).

Under the H200's power cap the SM clock drifts by hundreds of MHz within one benchmark run, so builds (and dense
SDPA) timed one after another take that drift as their own; balanced_ms takes them in turns instead. These tests
fail if it times each call's reps back to back again, mixes up whose time is whose, or lets one build follow the
heavy dense call, or run within two calls of it, more often than another (a call runs at the clock the calls before
it left).
"""

from __future__ import annotations

import importlib
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


class FakeGpu:
    """A GPU whose calls take `work` units at a speed that falls by `drift` per unit done (a warming GPU), and by
    `after_heavy` more for a call within `reach` calls after one of at least `heavy` units (the clock a long call
    leaves)."""

    def __init__(self, drift: float, after_heavy: float = 0.0, heavy: float = float("inf"), reach: int = 1) -> None:
        self.now, self.done, self.drift = 0.0, 0.0, drift
        self.after_heavy, self.heavy, self.recent = after_heavy, heavy, [0.0] * reach

    def run(self, work: float) -> None:
        slowdown = self.after_heavy if max(self.recent) >= self.heavy else 0.0
        self.now += work * (1 + self.drift * self.done + slowdown)
        self.done, self.recent = self.done + work, [*self.recent[1:], work]

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


def test_each_call_gets_its_own_time_and_the_orders_change(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu, order = FakeGpu(drift=0.0), []

    def call(name: str, work: float):
        def run() -> None:
            order.append(name)
            gpu.run(work)

        return run

    module = bench_kernels(monkeypatch, gpu)
    medians = module.balanced_ms(call("a", 1.0), call("b", 3.0), call("c", 5.0), reps=3, warmup=1, builds=1)
    assert medians == [1.0, 3.0, 5.0]
    warmup, turns = order[:3], order[3:]
    assert warmup == ["c", "b", "a"]  # ending with the first timed call's predecessor in the cycle
    path = ["a", "b", "a", "c", "b", "b", "c", "c", "a"]
    assert turns == path + path[::-1]


def test_reps_round_up_to_whole_cycles(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu, runs = FakeGpu(drift=0.0), Counter()
    module = bench_kernels(monkeypatch, gpu)
    module.balanced_ms(*(lambda i=i: runs.update([i]) for i in range(2)), reps=3, warmup=0)
    assert runs == {0: 4, 1: 4}  # one cycle of 8


def test_a_drifting_clock_falls_on_identical_calls_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(drift=0.01)
    module = bench_kernels(monkeypatch, gpu)
    first, second = module.balanced_ms(lambda: gpu.run(1.0), lambda: gpu.run(1.0), reps=9, warmup=0)
    # back to back, the second call's 9 reps would run 9 units later: about 9% slower
    assert abs(second - first) / first < 0.015


@pytest.mark.parametrize("calls", [1, 2, 3, 4, 5, 6])
def test_every_call_follows_every_call_alike_and_sits_mid_cycle(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    cycle = bench_kernels(monkeypatch, FakeGpu(drift=0.0)).turn_cycle(calls)
    cyclic_pairs = Counter(pairwise([*cycle, cycle[0]]))
    each = 1 if calls == 1 else 2  # times each pair comes round
    assert len(cycle) == each * calls**2 and len(cyclic_pairs) == calls**2 and set(cyclic_pairs.values()) == {each}
    middle = (len(cycle) - 1) / 2
    for call in range(calls):
        positions = [k for k, which in enumerate(cycle) if which == call]
        assert len(positions) == each * calls and sum(positions) / len(positions) == middle
    assert cycle[-1] == 0  # the warm-up's last call


def test_a_heavy_call_slows_its_successors_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    # the tree, a compared build of the same machine code and dense SDPA 5x longer, as at 128K; a call right after
    # dense runs 10% slower. Rotating one order put the tree after dense in 2 of 3 reps: 10% apart here.
    gpu = FakeGpu(drift=0.0, after_heavy=0.10, heavy=5.0)
    module = bench_kernels(monkeypatch, gpu)
    tree, build, _ = module.balanced_ms(lambda: gpu.run(1.0), lambda: gpu.run(1.0), lambda: gpu.run(5.0), reps=18)
    assert abs(tree - build) / build < 0.01


def test_builds_alike_however_far_a_heavy_call_reaches(monkeypatch: pytest.MonkeyPatch) -> None:
    # as above, but dense slows the next two calls (bench/turn_times.py, twelfth session: 54.4 ms after cuDNN,
    # 50.3 after itself at 128K). turn_cycle(3) alone runs the build within two calls of dense 5 times out of 6 and
    # the tree 3 times: 5% apart here.
    gpu = FakeGpu(drift=0.0, after_heavy=0.10, heavy=5.0, reach=2)
    module = bench_kernels(monkeypatch, gpu)
    calls = (lambda: gpu.run(1.0), lambda: gpu.run(1.0), lambda: gpu.run(5.0))
    tree, build, _ = module.balanced_ms(*calls, reps=12, builds=1)
    assert abs(tree - build) / build > 0.03  # the imbalance the shifts remove
    tree, build, _ = module.balanced_ms(*calls, reps=12, builds=2)
    assert abs(tree - build) / build < 0.01


@pytest.mark.parametrize(("calls", "builds"), [(2, 2), (3, 2), (3, 3), (4, 3), (5, 2)])
def test_every_build_has_every_builds_place(monkeypatch: pytest.MonkeyPatch, calls: int, builds: int) -> None:
    cycle = bench_kernels(monkeypatch, FakeGpu(drift=0.0)).build_cycle(calls, builds)
    shifted = [c if c >= builds else (c + 1) % builds for c in cycle]
    assert any(shifted == cycle[k:] + cycle[:k] for k in range(len(cycle)))  # the same cycle, seen from elsewhere
    assert Counter(cycle) == dict.fromkeys(range(calls), len(cycle) // calls)
    assert cycle[-1] == 0  # the warm-up's last call


def test_a_call_after_dense_half_the_time_gets_the_mean_of_both(monkeypatch: pytest.MonkeyPatch) -> None:
    # the tree and dense alone: the tree follows dense in half its turns (10% slower here, 54 against 50 ms at
    # 128K on the H200), so the median of its times is any value between the two clusters; the mean of its median
    # after each predecessor is their middle
    gpu = FakeGpu(drift=0.0, after_heavy=0.10, heavy=5.0)
    module = bench_kernels(monkeypatch, gpu)
    tree, dense = module.balanced_ms(lambda: gpu.run(1.0), lambda: gpu.run(5.0), reps=9, builds=1)
    assert tree == pytest.approx(1.05) and dense == pytest.approx(5.25)
