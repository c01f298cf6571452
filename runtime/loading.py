"""Finding TensorRT and the plugin library, with errors that name what is missing.

TensorRT is imported lazily so that everything else in minfer works without it. The plugin library
is loaded with dlopen: its static registration puts `minfer::SparsePrefillAttention` v1 into
TensorRT's plugin registry, the same path as `trtexec --staticPlugins` and `polygraphy --plugins`.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from types import ModuleType

from ..patterns.spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from .errors import PluginLibraryNotFound, TensorRTNotFound

PLUGIN_LIBRARY_NAME = "libminfer_trt_plugins.so"
PLUGIN_LIBRARY_ENV = "MINFER_TRT_PLUGINS"
BUILD_DIR = Path(__file__).resolve().parents[1] / "build"
MIN_TENSORRT_MAJOR = 10  # IPluginV3


def import_tensorrt() -> ModuleType:
    """`import tensorrt`, refusing versions without IPluginV3."""
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTNotFound(
            f"TensorRT's Python package is not installed ({error}). minfer's engines need TensorRT "
            f"{MIN_TENSORRT_MAJOR} or newer: `pip install tensorrt` (or the tensorrt-cu12 / tensorrt-cu13 wheels), "
            "or use the Python wheel of a TensorRT tarball."
        ) from None
    major = int(tensorrt.__version__.split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise TensorRTNotFound(
            f"TensorRT {tensorrt.__version__} is installed; the SparsePrefillAttention plugin is an IPluginV3 and "
            f"needs TensorRT {MIN_TENSORRT_MAJOR} or newer"
        )
    return tensorrt


def find_plugin_library(path: str | os.PathLike[str] | None = None) -> Path:
    """The given path, else $MINFER_TRT_PLUGINS, else the library in this checkout's build/ folder."""
    if path is not None:
        library = Path(path)
    elif os.environ.get(PLUGIN_LIBRARY_ENV):
        library = Path(os.environ[PLUGIN_LIBRARY_ENV])
    else:
        library = BUILD_DIR / PLUGIN_LIBRARY_NAME
    if library.is_file():
        return library
    raise PluginLibraryNotFound(
        f"the SparsePrefillAttention plugin library was not found at {library}. Build it where TensorRT is "
        "installed (`cmake -S . -B build -DTENSORRT_ROOT=<TensorRT> && cmake --build build`), then pass its path "
        f"(--plugin, plugin_library=) or set {PLUGIN_LIBRARY_ENV}"
    )


def load_plugin_library(trt: ModuleType, path: str | os.PathLike[str] | None = None) -> None:
    """Make sure TensorRT's registry holds our creator, loading the library if it does not yet."""
    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
        return
    library = find_plugin_library(path)
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError as error:
        raise PluginLibraryNotFound(f"{library} failed to load: {error}") from None
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise PluginLibraryNotFound(
            f"{library} loaded but registered no {PLUGIN_NAMESPACE}::{PLUGIN_NAME} version {PLUGIN_VERSION}; was it "
            f"built against this TensorRT ({trt.__version__})?"
        )
