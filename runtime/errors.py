"""Errors of the TensorRT runtime: each says what is missing or wrong and what to do about it."""

from __future__ import annotations


class MinferRuntimeError(RuntimeError):
    """Base of the runtime's errors; the CLIs print the message without a traceback."""


class TensorRTNotFound(MinferRuntimeError):
    """TensorRT's Python package is missing or too old."""


class PluginLibraryNotFound(MinferRuntimeError):
    """libminfer_trt_plugins.so is missing, fails to load, or registers no SparsePrefillAttention creator."""


class ProfileError(MinferRuntimeError):
    """An invalid optimisation profile, or inputs that fit none of the engine's profiles."""


class DeviceMemoryError(MinferRuntimeError):
    """The GPU has less free memory than the engine or its buffers need."""


class BuildError(MinferRuntimeError):
    """TensorRT's ONNX parser or builder refused the model."""


class InputError(MinferRuntimeError):
    """An input that is missing, unknown, or of a type or layout the engine cannot take."""
