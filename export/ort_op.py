"""`minfer::SparsePrefillAttention` in ONNX Runtime on the CPU, backed by the PyTorch reference.

onnxruntime-extensions runs Python functions as custom ops, with two limits this module works
around:
- its Python ops take scalar attributes only (no INTS), so a session is built from a copy of the
  model in which each minfer node carries its per-head arrays as one JSON string attribute (the
  file on disk keeps the contract's attributes, which TensorRT's parser reads);
- an exception escaping a Python op aborts the process, so the op records the error, returns NaNs,
  and `SparseSession.run` raises it;
- an op is registered for one type (float32), so float16/bfloat16 nodes are wrapped in Casts; the
  reference computes in float32 for half-precision input and rounds its output once, which the
  Casts reproduce exactly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime.capi.onnxruntime_pybind11_state as ort_state
import torch

from ..patterns.reference import sparse_prefill_attention
from ..patterns.spec import DOMAIN, OP_TYPE, PER_HEAD_FIELDS, PatternError, validate_attributes
from .errors import ExportError
from .model_io import model_for_session, needs_external_data
from .schema import register_schema

ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)

# The attribute the session copy carries instead of the INTS arrays (never written to files).
PACKED_ATTRIBUTE = "minfer_packed_attributes"

try:
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
except ImportError:  # pragma: no cover - exercised only without the dependency
    onnx_op = None


_op_errors: list[str] = []
_op_errors_lock = threading.Lock()


def _run_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, **attrs: str) -> np.ndarray:
    """The custom op body: unpack the attributes, validate them, run the reference."""
    try:
        scale, patterns = validate_attributes(json.loads(attrs[PACKED_ATTRIBUTE]), num_heads=q.shape[1])
        out = sparse_prefill_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), patterns, scale)
        return out.numpy()
    except Exception as e:  # anything escaping would abort the process; SparseSession.run raises it
        with _op_errors_lock:
            _op_errors.append(f"{type(e).__name__}: {e}")
        return np.full(q.shape, np.nan, dtype=q.dtype)


class SparseSession(ort.InferenceSession):
    """An InferenceSession whose `run` raises the errors of the SparsePrefillAttention op."""

    def run(self, output_names, input_feed, run_options=None):
        with _op_errors_lock:
            _op_errors.clear()
        outputs = super().run(output_names, input_feed, run_options)
        with _op_errors_lock:
            errors, _op_errors[:] = list(_op_errors), []
        if errors:
            raise ExportError(f"SparsePrefillAttention failed: {errors[0]}")
        return outputs


if onnx_op is not None:
    onnx_op(
        op_type=f"{DOMAIN}::{OP_TYPE}",
        inputs=[PyCustomOpDef.dt_float] * 3,
        outputs=[PyCustomOpDef.dt_float],
        attrs={PACKED_ATTRIBUTE: PyCustomOpDef.dt_string},
    )(_run_reference)


def has_sparse_nodes(model: onnx.ModelProto) -> bool:
    return any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node)


_HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def pack_for_session(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose minfer nodes carry their attributes as one validated JSON string (half precision in Casts)."""
    packed = onnx.ModelProto()
    packed.CopyFrom(model)
    _cast_half_precision_nodes(packed)
    for index, node in enumerate(n for n in packed.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        try:
            scale, heads = validate_attributes(attrs, layer=index)
        except PatternError as e:
            raise ExportError(f"node {node.name or index}: {e}") from None
        plain = {"scale": scale, "block_size": attrs["block_size"], "kind": [int(h.kind) for h in heads]}
        plain.update({name: [getattr(h, name) for h in heads] for name in PER_HEAD_FIELDS})
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute(PACKED_ATTRIBUTE, json.dumps(plain)))
    return packed


def _cast_half_precision_nodes(model: onnx.ModelProto) -> None:
    """Run float16/bfloat16 minfer nodes in float32: Cast their inputs up and their output back."""
    if needs_external_data(model):
        return  # shape inference cannot take the model in memory; it is taken as float32
    register_schema()
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    }
    nodes = []
    for node in model.graph.node:
        elem_type = types.get(node.input[0]) if node.domain == DOMAIN and node.op_type == OP_TYPE else None
        if elem_type not in _HALF_TYPES:
            nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            nodes.append(onnx.helper.make_node("Cast", [name], [f"{name}_minfer_f32"], to=onnx.TensorProto.FLOAT))
            node.input[i] = f"{name}_minfer_f32"
        output = node.output[0]
        node.output[0] = f"{output}_minfer_f32"
        nodes.extend([node, onnx.helper.make_node("Cast", [node.output[0]], [output], to=elem_type)])
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def create_session(
    model: onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    """An ONNX Runtime session for any model, minfer nodes included (on the CPU)."""
    options = ort.SessionOptions()
    session_type = ort.InferenceSession
    if has_sparse_nodes(model):
        session_type = SparseSession
        if onnx_op is None:
            raise ExportError(
                "running SparsePrefillAttention in ONNX Runtime needs onnxruntime-extensions "
                "(pip install onnxruntime-extensions)"
            )
        options.register_custom_ops_library(get_library_path())
        model = pack_for_session(model)
    with model_for_session(model) as source:
        try:
            return session_type(source, options, providers=list(providers))
        except ORT_ERRORS as e:
            raise ExportError(f"ONNX Runtime cannot load the model: {e}") from None
