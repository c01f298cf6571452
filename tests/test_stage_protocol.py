"""The sm_90a attention kernel's stage protocol, as bench/stage_protocol_model.py models it (CPU only).

The model is the design check of produce/consume in trt_plugins/kernels/attention.cu: it must pass on random
schedules, with pairs of tiles (head_dim 128) and without (64), and its mutations (a consumer giving a stage
back before its P V; one pairing the ring's last stage with its first; one keeping the other block's tiles)
must be caught, so the checks themselves are known to fire.
"""

import importlib.util
from pathlib import Path

import pytest

MODEL_PATH = Path(__file__).resolve().parents[1] / "bench" / "stage_protocol_model.py"


@pytest.fixture(scope="module")
def model():
    spec = importlib.util.spec_from_file_location("stage_protocol_model", MODEL_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pairs", [True, False])
def test_protocol_holds_on_random_schedules(model, pairs):
    assert model.first_failure(2000, None, pairs) is None


def test_pairing_across_the_ring_end_is_caught(model):
    failure = model.first_failure(2000, "wrap")
    assert failure is not None, "--mutation wrap went unnoticed"
    assert "not adjacent" in failure[1]


def test_early_release_is_caught(model):
    failure = model.first_failure(2000, "early")
    assert failure is not None, "--mutation early went unnoticed"
    assert "refilled under its P V" in failure[1]


def test_keeping_the_other_blocks_tiles_deadlocks(model):
    failure = model.first_failure(2000, "keep")
    assert failure is not None, "--mutation keep went unnoticed"
    assert "deadlock" in failure[1]
