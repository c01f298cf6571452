"""Loading and saving ONNX models, with external data for models over the 2 GB protobuf limit."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ExportError

PROTOBUF_LIMIT = 2**31 - 1
# Initializers above this many bytes are written as external data; leaves headroom for the graph.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load a model and its external data; refuse anything that is not an ONNX model, by name."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist or is not a file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise ExportError(f"{path} is not a readable ONNX model: {e}") from None
    if not model.graph.node:
        raise ExportError(f"{path} is not an ONNX model (no graph nodes; is it the right file?)")
    return model


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the model's initializers (the part that can push a model over 2 GB)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data"):
            total += len(tensor.raw_data)
        else:
            total += tensor.ByteSize()
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    return initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save next to a `<name>.data` file when the weights would break the 2 GB protobuf limit."""
    path = Path(path)
    if needs_external_data(model):
        data = path.name + ".data"
        (path.parent / data).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    else:
        onnx.save_model(model, str(path))
    return path


@contextmanager
def model_for_session(model: onnx.ModelProto) -> Iterator[bytes | str]:
    """What onnxruntime.InferenceSession takes: bytes, or a temporary file when over 2 GB.

    Create the session inside the `with`: onnxruntime reads external weights when it is built.
    """
    if not needs_external_data(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="minfer-") as tmp:
        try:
            yield str(save_model(model, Path(tmp) / "model.onnx"))
        finally:  # saving moved the weights out of the proto; bring them back before the file goes
            onnx.load_external_data_for_model(model, tmp)
