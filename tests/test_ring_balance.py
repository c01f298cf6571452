"""bench/ring_balance.py's ring model (CPU only): docs/kernels.md reads the consumers' full-stage waits against
it, so its timing rules are checked on orders whose makespans are known by hand."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def ring():
    sys.path.insert(0, str(BENCH))  # the script imports gqa_sharing from its folder
    try:
        spec = importlib.util.spec_from_file_location("ring_balance", BENCH / "ring_balance.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_shared_tiles_without_latency_keep_every_consumer_busy(ring):
    assert ring.makespan([0b111] * 10, stages=2, latency=0.0, issue=0.0, skip=0.0) == pytest.approx(10.0)


def test_one_blocks_run_stalls_the_others_once_the_ring_fills(ring):
    # block 0's 6 tiles, then block 1's 6: with 2 stages block 1's first tile lands only once block 0 is done
    # with its fifth, so the item takes 5 + 6 = 11; taken in turn the two blocks work side by side and finish at 6
    blocked = ring.makespan([0b001] * 6 + [0b010] * 6, stages=2, latency=0.0, issue=0.0, skip=0.0)
    in_turn = ring.makespan([0b001, 0b010] * 6, stages=2, latency=0.0, issue=0.0, skip=0.0)
    assert blocked == pytest.approx(11.0)
    assert in_turn == pytest.approx(6.0)


def test_latency_is_paid_once_per_ring_round(ring):
    # one stage: every tile waits for the previous one's release, then the refill latency
    assert ring.makespan([0b111] * 4, stages=1, latency=0.5, issue=0.0, skip=0.0) == pytest.approx(4 * 1.5)
    # enough stages: only the first refill's latency shows
    assert ring.makespan([0b111] * 4, stages=8, latency=0.5, issue=0.0, skip=0.0) == pytest.approx(4.5)
