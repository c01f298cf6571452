"""com.microsoft contrib attention ops: MultiHeadAttention from onnxscript's ONNX Runtime fusions of a
real export, and GroupQueryAttention built from it (the fusions emit GQA only for graphs with a KV cache)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from export_helpers import SPARSE_CONFIG, dense_model, fused_for_ort, run_logits, sparse_nodes, token_ids

from minfer.export.match import MICROSOFT, _heads_first, _peel_repeat_kv
from minfer.export.model_io import load_model
from minfer.export.rewrite import rewrite_model
from minfer.patterns.spec import HeadPattern

DENSE = HeadPattern.dense()


def test_multi_head_attention_is_rewritten() -> None:
    fused = load_model(fused_for_ort())
    assert sum(n.op_type == "MultiHeadAttention" and n.domain == MICROSOFT for n in fused.graph.node) == 2
    rewritten, results = rewrite_model(fused, default_head=DENSE)
    assert [(r.form, r.rewritten) for r in results] == [("com.microsoft MultiHeadAttention", True)] * 2
    assert not any(n.op_type == "MultiHeadAttention" for n in rewritten.graph.node)
    ids = token_ids(2, 100, seed=6)
    np.testing.assert_allclose(run_logits(rewritten, ids), run_logits(fused, ids), rtol=1e-4, atol=1e-5)


def test_multi_head_attention_sparse_equals_rewritten_plain_export() -> None:
    from_fused, _ = rewrite_model(load_model(fused_for_ort()), SPARSE_CONFIG)
    from_plain, _ = rewrite_model(load_model(dense_model()), SPARSE_CONFIG)
    ids = token_ids(2, 200, seed=7)
    np.testing.assert_allclose(run_logits(from_fused, ids), run_logits(from_plain, ids), rtol=1e-4, atol=1e-4)


def _hidden(graph: gs.Graph, heads_first: gs.Tensor, name: str) -> gs.Variable:
    """[B, H, S, D] -> [B, S, H * D], as contrib ops take Q/K/V."""
    transposed = gs.Variable(f"{name}_t", dtype=np.float32)
    hidden = gs.Variable(f"{name}_h", dtype=np.float32)
    graph.nodes.append(gs.Node("Transpose", attrs={"perm": [0, 2, 1, 3]}, inputs=[heads_first], outputs=[transposed]))
    shape = gs.Constant(f"{name}_shape", np.array([0, 0, -1], np.int64))
    graph.nodes.append(gs.Node("Reshape", inputs=[transposed, shape], outputs=[hidden]))
    return hidden


def _constant_lengths(graph: gs.Graph, index: int) -> tuple[gs.Variable, gs.Variable]:
    """seqlens_k = S - 1 per sequence and total_sequence_length = S, from the ids' shape (no padding)."""
    ids = graph.inputs[0]

    def var(name: str, dtype) -> gs.Variable:
        return gs.Variable(f"gqa{index}_{name}", dtype=dtype)

    def const(name: str, value) -> gs.Constant:
        return gs.Constant(f"gqa{index}_{name}", np.array(value, np.int64))

    shape, batch, seq, last = var("shape", np.int64), var("b", np.int64), var("s", np.int64), var("last", np.int64)
    lengths, lengths32, total, total32 = (
        var(n, t) for n, t in (("len", np.int64), ("len32", np.int32), ("tot", np.int32), ("tot32", np.int32))
    )
    graph.nodes += [
        gs.Node("Shape", inputs=[ids], outputs=[shape]),
        gs.Node("Slice", inputs=[shape, const("0", [0]), const("1", [1])], outputs=[batch]),
        gs.Node("Slice", inputs=[shape, const("1b", [1]), const("2", [2])], outputs=[seq]),
        gs.Node("Sub", inputs=[seq, const("one", [1])], outputs=[last]),
        gs.Node("Expand", inputs=[last, batch], outputs=[lengths]),
        gs.Node("Cast", attrs={"to": onnx.TensorProto.INT32}, inputs=[lengths], outputs=[lengths32]),
        gs.Node("Cast", attrs={"to": onnx.TensorProto.INT32}, inputs=[seq], outputs=[total]),
        gs.Node("Reshape", inputs=[total, const("scalar", [])], outputs=[total32]),
    ]
    return lengths32, total32


def group_query_attention_model(**attrs) -> onnx.ModelProto:
    """The fused model with each MultiHeadAttention replaced by GroupQueryAttention on the un-repeated K/V."""
    fused = load_model(fused_for_ort())
    graph = gs.import_onnx(fused)
    for i, node in enumerate([n for n in graph.nodes if n.op == "MultiHeadAttention"]):
        q, k, v = node.inputs[:3]
        kv_first = [_peel_repeat_kv(_heads_first(t)) for t in (k, v)]  # [B, Hkv, S, D]
        k_hidden, v_hidden = (_hidden(graph, t, f"gqa{i}_{n}") for t, n in zip(kv_first, "kv", strict=True))
        lengths, total = _constant_lengths(graph, i)
        output = node.outputs[0]
        node.outputs.clear()
        present = [gs.Variable(f"gqa{i}_present_{n}", dtype=np.float32) for n in "kv"]
        graph.nodes.append(
            gs.Node(
                "GroupQueryAttention",
                domain=MICROSOFT,
                attrs={"num_heads": 2, "kv_num_heads": 1, **attrs},
                inputs=[q, k_hidden, v_hidden, gs.Variable.empty(), gs.Variable.empty(), lengths, total],
                outputs=[output, *present],
            )
        )
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    model.opset_import.extend(o for o in fused.opset_import if o.domain == MICROSOFT)
    return model


def test_group_query_attention_is_rewritten_with_its_own_kv_heads() -> None:
    model = group_query_attention_model()
    rewritten, results = rewrite_model(model, default_head=DENSE)
    assert [(r.form, r.rewritten) for r in results] == [("com.microsoft GroupQueryAttention", True)] * 2
    assert {(r.shape.num_q_heads, r.shape.num_kv_heads) for r in results} == {(2, 1)}
    assert len(sparse_nodes(rewritten)) == 2
    ids = token_ids(2, 90, seed=9)
    expected = run_logits(model, ids)
    np.testing.assert_allclose(expected, run_logits(fused_for_ort(), ids), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run_logits(rewritten, ids), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [({"local_window_size": 16}, "local window of 16"), ({"softcap": 30.0}, "soft cap")],
)
def test_group_query_attention_that_cannot_be_rewritten_stays_dense(attrs: dict, reason: str) -> None:
    _, results = rewrite_model(group_query_attention_model(**attrs), default_head=DENSE)
    assert all(not r.rewritten and reason in r.reason for r in results), [r.reason for r in results]


def _with_rotary_inside(model: onnx.ModelProto) -> onnx.ModelProto:
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            node.attribute.append(onnx.helper.make_attribute("do_rotary", 1))
    return model


@pytest.mark.parametrize(("edit", "reason"), [(_with_rotary_inside, "rotary embedding inside the op")])
def test_group_query_attention_with_rotary_inside_stays_dense(edit: Callable, reason: str) -> None:
    _, results = rewrite_model(edit(group_query_attention_model()), default_head=DENSE, verify=False)
    assert all(not r.rewritten and reason in r.reason for r in results), [r.reason for r in results]
