"""The TensorRT glue (SparsePrefillAttentionPlugin.cpp) driven through TensorRT's public headers.

Needs a build configured with TensorRT's headers and no TensorRT libraries:
`cmake -S . -B build-trtcheck -DMINFER_TRT_INCLUDE_DIR=<TensorRT>/include -DMINFER_PLUGIN_COMPILE_ONLY=ON`
(then MINFER_BUILD_DIR=build-trtcheck). glue_check/ holds the plugin linked against a mock registry
and logger, and a program that registers it both ways TensorRT does and calls every plugin method
but a real launch (the GPU tests of test_plugin_logic.py run that sequence on the device).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("MINFER_BUILD_DIR", REPO / "build"))
GLUE = BUILD / "glue_check"
CHECK = GLUE / "minfer_plugin_glue_check"


@pytest.fixture(scope="module")
def glue_check() -> Path:
    if not CHECK.is_file():
        pytest.skip(
            f"{CHECK} is not built: it needs TensorRT's headers (not committed); configure with "
            "-DMINFER_TRT_INCLUDE_DIR=<TensorRT>/include -DMINFER_PLUGIN_COMPILE_ONLY=ON and set MINFER_BUILD_DIR"
        )
    return CHECK


@pytest.mark.parametrize("registration", ["static", "dynamic"])
def test_plugin_glue(glue_check: Path, registration: str) -> None:
    library = GLUE / "libminfer_trt_plugins_glue.so"
    result = subprocess.run([glue_check, library, registration], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"passed: 0 check(s) failed ({registration})" in result.stdout


def test_a_library_without_get_creators_is_refused(glue_check: Path) -> None:
    """The harness can fail: a library without TensorRT's entry points does not load dynamically."""
    library = GLUE / "libminfer_nvinfer_mock.so"
    result = subprocess.run([glue_check, library, "dynamic"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "FAILED: IPluginRegistry::loadLibrary" in result.stdout
    assert "SymbolAddress for getCreators could not be loaded" in result.stdout
