"""The sm_90a attention kernel's stage protocol, as bench/stage_protocol_model.py models it (CPU only).

The model is the design check of produce/consume in trt_plugins/kernels/attention.cu: it must pass on random
schedules, and each of its mutations (a consumer holding its pending stage across the other block's tiles, or
giving a stage back before its P V) must be caught, so the checks themselves are known to fire.
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


@pytest.mark.parametrize("mutation", ["hold", "early"])
def test_each_mutation_is_caught(model, mutation):
    failure = model.first_failure(2000, mutation)
    assert failure is not None, f"--mutation {mutation} went unnoticed"
    expected = "deadlock" if mutation == "hold" else "refilled under its P V"
    assert expected in failure[1]
