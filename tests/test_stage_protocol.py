"""The sm_90a attention kernel's stage protocol, as bench/stage_protocol_model.py models it (CPU only).

The model is the design check of produce/consume in trt_plugins/kernels/attention.cu: it must pass on random
schedules of three consumers, and its mutations (a consumer giving a stage back before its P V; one keeping
the other blocks' tiles) must be caught, so the checks themselves are known to fire.
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


def test_protocol_holds_on_random_schedules(model):
    assert model.first_failure(2000) is None


def test_early_release_is_caught(model):
    failure = model.first_failure(2000, "early")
    assert failure is not None, "--mutation early went unnoticed"
    assert "refilled under its P V" in failure[1]


def test_keeping_the_other_blocks_tiles_deadlocks(model):
    failure = model.first_failure(2000, "keep")
    assert failure is not None, "--mutation keep went unnoticed"
    assert "deadlock" in failure[1]
