"""The ONNX rewrite on real exporter output: every form, dense-config equality, sparse = PyTorch reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from export_helpers import (
    FORMS,
    SPARSE_CONFIG,
    SPARSE_LAYER,
    SPARSE_LAYER_2,
    dense_model,
    node_attributes,
    run_logits,
    sparse_nodes,
    token_ids,
)

from minfer.export.errors import ExportError
from minfer.export.hf import tiny_model
from minfer.export.model_io import load_model
from minfer.export.rewrite import rewrite_model
from minfer.patterns.config import PatternConfig
from minfer.patterns.spec import OP_TYPE, HeadPattern, validate_attributes
from minfer.runtime.patch import patch

DENSE = HeadPattern.dense()


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_rewritten_and_dense_config_matches(form: str) -> None:
    source = dense_model("llama", form)
    original = load_model(source)
    rewritten, results = rewrite_model(original, default_head=DENSE)
    assert [r.rewritten for r in results] == [True, True], [r.reason for r in results]
    nodes = sparse_nodes(rewritten)
    assert len(nodes) == 2
    remaining = {n.op_type for n in rewritten.graph.node}
    assert not remaining & {"Softmax", "Attention"}, "the dense attention must be gone"
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(rewritten))
    for node in (n for n in graph.nodes if n.op == OP_TYPE):
        q, k, v = node.inputs
        assert q.shape[1] == 2 and k.shape[1] == 1 and v.shape[1] == 1, "K/V go in with their own head count"
        attrs = {name: value for name, value in node.attrs.items()}
        scale, heads = validate_attributes(attrs)
        assert heads == (DENSE, DENSE) and scale == pytest.approx(0.125, rel=1e-6)
    batch = 1 if form == "sdpa-opset23" else 2  # torch's opset-23 export runs in ONNX Runtime at batch 1 only
    for seq_len in (1, 37, 130):
        ids = token_ids(batch, seq_len, seed=seq_len)
        expected, got = run_logits(original, ids), run_logits(rewritten, ids)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "head_dim", "num_kv_heads"),
    [("mistral", 64, 1), ("qwen2", 64, 1), ("phi3", 64, 2), ("llama", 128, 2)],
)
def test_families_and_head_dims(family: str, head_dim: int, num_kv_heads: int) -> None:
    original = load_model(dense_model(family, "sdpa-opset18", head_dim, num_kv_heads))
    rewritten, results = rewrite_model(original, default_head=DENSE)
    assert all(r.rewritten for r in results) and len(results) == 2
    assert {(r.shape.num_q_heads, r.shape.num_kv_heads, r.shape.head_dim) for r in results} == {
        (2, num_kv_heads, head_dim)
    }
    ids = token_ids(1, 90, seed=3)
    np.testing.assert_allclose(run_logits(rewritten, ids), run_logits(original, ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["sdpa-opset18", "eager-opset18"])
def test_float16_exports_keep_float16_attention(form: str) -> None:
    """Half-precision graphs (what the TensorRT plugin runs) are verified in ONNX Runtime and keep fp16 Q/K/V/O."""
    original = load_model(dense_model("llama", form, dtype="float16"))
    rewritten, results = rewrite_model(original, default_head=DENSE)
    assert all(r.rewritten for r in results), [r.reason for r in results]
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(rewritten))
    for node in (n for n in graph.nodes if n.op == OP_TYPE):
        assert {np.dtype(t.dtype) for t in (*node.inputs, *node.outputs)} == {np.dtype(np.float16)}
    ids = token_ids(2, 100, seed=12)
    got, expected = run_logits(rewritten, ids), run_logits(original, ids)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=2e-3)


@pytest.mark.parametrize("form", ["sdpa-opset18", "sdpa-opset23"])
def test_sparse_config_equals_pytorch_reference(form: str) -> None:
    original = load_model(dense_model("llama", form))
    rewritten, _ = rewrite_model(original, SPARSE_CONFIG)
    model = patch(tiny_model("llama"), SPARSE_CONFIG, chunk_size=None)
    ids = token_ids(2 if form == "sdpa-opset18" else 1, 200, seed=11)
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    got = run_logits(rewritten, ids)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    dense = run_logits(original, ids)
    assert np.abs(dense - got).max() > 1e-3, "the sparse patterns must change the result at S = 200"


def test_config_layers_follow_graph_order() -> None:
    rewritten, results = rewrite_model(load_model(dense_model()), SPARSE_CONFIG)
    found = [validate_attributes(node_attributes(n))[1] for n in sparse_nodes(rewritten)]
    assert found == [SPARSE_LAYER, SPARSE_LAYER_2]
    assert [r.heads for r in results] == [SPARSE_LAYER, SPARSE_LAYER_2]


def test_layer_count_mismatch_is_an_error() -> None:
    config = PatternConfig((SPARSE_LAYER,))
    with pytest.raises(ExportError, match="1 layers but the model has 2 attention subgraphs"):
        rewrite_model(load_model(dense_model()), config)


def test_head_count_mismatch_names_the_layer() -> None:
    config = PatternConfig(((DENSE,) * 3, (DENSE,) * 3))
    with pytest.raises(ExportError, match="layer 0: pattern has 3 heads but Q has 2 query heads"):
        rewrite_model(load_model(dense_model()), config)


def test_unsupported_head_dim_is_an_error() -> None:
    with pytest.raises(ExportError, match="head_dim 32 is not supported"):
        rewrite_model(load_model(dense_model(head_dim=32)), default_head=DENSE)


def test_graph_without_attention_is_an_error() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y])
    with pytest.raises(ExportError, match="found no attention"):
        rewrite_model(onnx.helper.make_model(graph))


def test_without_verification_static_shapes_are_used() -> None:
    rewritten, results = rewrite_model(load_model(dense_model()), default_head=DENSE, verify=False)
    assert all(r.rewritten for r in results)
    ids = token_ids(2, 66, seed=5)
    np.testing.assert_allclose(run_logits(rewritten, ids), run_logits(dense_model(), ids), rtol=1e-4, atol=1e-5)
