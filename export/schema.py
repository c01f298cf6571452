"""An ONNX schema for `minfer::SparsePrefillAttention`, so onnx and onnxscript know the op.

torch's exporter builds custom nodes through onnxscript, which needs a schema; with it the onnx
checker also verifies the node's attributes. The output has Q's type and shape.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from ..patterns.spec import DOMAIN, OP_TYPE, OPSET_VERSION, PER_HEAD_FIELDS

_FLOATS = ["tensor(float16)", "tensor(bfloat16)", "tensor(float)", "tensor(double)"]


def _infer_output(context: onnx.shape_inference.InferenceContext) -> None:
    context.set_output_type(0, context.get_input_type(0))


def register_schema() -> None:
    """Register the schema once per process (the op contract: docs/op-spec.md)."""
    if onnx.defs.has(OP_TYPE, OPSET_VERSION, DOMAIN):
        return
    attrs = [
        OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale"),
        OpSchema.Attribute("block_size", OpSchema.AttrType.INT, "must be 64"),
        OpSchema.Attribute(
            "kind", OpSchema.AttrType.INTS, "per query head: 0 dense, 1 a_shape, 2 vertical_slash, 3 block_sparse"
        ),
        *(OpSchema.Attribute(name, OpSchema.AttrType.INTS, "per query head") for name in PER_HEAD_FIELDS),
        OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "for TensorRT's parser", required=False),
        OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "for TensorRT's parser", required=False),
    ]
    schema = OpSchema(
        OP_TYPE,
        DOMAIN,
        OPSET_VERSION,
        "Causal sparse attention of Q [B, Hq, S, D] over K, V [B, Hkv, S, D] with per-head patterns.",
        inputs=[OpSchema.FormalParameter(name, "T") for name in ("Q", "K", "V")],
        outputs=[OpSchema.FormalParameter("O", "T")],
        type_constraints=[("T", _FLOATS, "floating-point tensors")],
        attributes=attrs,
    )
    schema.set_type_and_shape_inference_function(_infer_output)
    onnx.defs.register_schema(schema)
