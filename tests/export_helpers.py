"""Small exported decoders shared by the export tests: built once per test session, on the CPU."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import torch

from minfer.export.hf import export_dense, tiny_model
from minfer.export.ort_op import create_session
from minfer.patterns.config import PatternConfig
from minfer.patterns.spec import DOMAIN, OP_TYPE, HeadPattern

_WORKDIR = Path(tempfile.mkdtemp(prefix="minfer-export-tests-"))
atexit.register(shutil.rmtree, _WORKDIR, ignore_errors=True)

# how each attention form is produced by a real exporter (torch's dynamo exporter, transformers 5)
FORMS = {
    "sdpa-opset18": {"attn_implementation": "sdpa", "opset": 18},  # MatMul/Softmax chain, Where mask, NaN guard
    "eager-opset18": {"attn_implementation": "eager", "opset": 18},  # MatMul/Softmax chain, additive mask
    "sdpa-opset23": {"attn_implementation": "sdpa", "opset": 23},  # the ONNX Attention op
}


@cache
def dense_model(
    family: str = "llama", form: str = "sdpa-opset18", head_dim: int = 64, num_kv_heads: int = 1, dtype: str = "float32"
) -> Path:
    """Path of a tiny random decoder's dense ONNX export (2 layers, 2 query heads)."""
    settings = FORMS[form]
    model = tiny_model(
        family, head_dim=head_dim, num_kv_heads=num_kv_heads, attn_implementation=settings["attn_implementation"]
    ).to(getattr(torch, dtype))
    path = _WORKDIR / f"{family}-{form}-d{head_dim}-kv{num_kv_heads}-{dtype}.onnx"
    return export_dense(model, path, opset=settings["opset"])


# one head of each sparse kind, small enough budgets that they select less than dense at S = 200
SPARSE_LAYER = (
    HeadPattern.a_shape(sink=4, local=40),
    HeadPattern.vertical_slash(8, 48, last_q=16, sink=2, local=8),
)
SPARSE_LAYER_2 = (HeadPattern.block_sparse(top_k=2), HeadPattern.vertical_slash(70, 3, last_q=64, sink=1, local=1))
SPARSE_CONFIG = PatternConfig((SPARSE_LAYER, SPARSE_LAYER_2))


def sparse_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def node_attributes(node: onnx.NodeProto) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


@cache
def fused_for_ort(family: str = "llama") -> Path:
    """The dense export after onnxscript's ONNX Runtime fusions: attention as com.microsoft MultiHeadAttention."""
    import onnx_ir as ir
    import onnxscript.optimizer
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(dense_model(family)))
    onnxscript.optimizer.optimize(model)
    model, _ = optimize_for_ort(model)
    path = _WORKDIR / f"{family}-ort-fused.onnx"
    ir.save(model, str(path))
    return path


def token_ids(batch: int, seq_len: int, seed: int, vocab: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq_len)).astype(np.int64)


def run_logits(model: onnx.ModelProto | Path, ids: np.ndarray) -> np.ndarray:
    if isinstance(model, Path):
        model = onnx.load(str(model))
    (logits,) = create_session(model).run(["logits"], {"input_ids": ids})
    return logits


def workdir() -> Path:
    return _WORKDIR
