"""The sm_90a attention kernel's stage protocol, as bench/stage_protocol_model.py models it (CPU only).

The model is the design check of produce/consume in trt_plugins/kernels/attention.cu: it must pass on random
schedules, and its mutation (a consumer giving a stage back before its P V) must be caught, so the checks
themselves are known to fire.
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
