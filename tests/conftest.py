"""Shared test fixtures: where the shared data lives, and GPU gating."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MINFER_SHARED", REPO.parent / "shared"))
MINFERENCE_CONFIGS = SHARED / "data" / "minference-configs"


@pytest.fixture
def minference_configs() -> Path:
    if not MINFERENCE_CONFIGS.is_dir():
        pytest.skip(f"MInference configs not found at {MINFERENCE_CONFIGS} (set MINFER_SHARED)")
    return MINFERENCE_CONFIGS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
