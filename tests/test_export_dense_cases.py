"""Attention that must stay dense: padding masks, sliding windows, bidirectional attention.

Each is reported with its reason, and the graph keeps computing exactly what it computed.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from export_helpers import run_logits, token_ids, workdir
from torch import nn
from torch.export import Dim

from minfer.export.hf import export_dense, tiny_model
from minfer.export.match import find_attention
from minfer.export.model_io import load_model
from minfer.export.ort_op import create_session
from minfer.export.rewrite import rewrite_model
from minfer.export.verify import SiteShape, check_outputs
from minfer.patterns.spec import HeadPattern


class WithPaddingMask(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def test_padding_mask_input_leaves_attention_dense() -> None:
    path = workdir() / "llama-padding-mask.onnx"
    ids = torch.randint(0, 256, (2, 70))
    torch.onnx.export(
        WithPaddingMask(tiny_model("llama")).eval(),
        (ids, torch.ones_like(ids)),
        str(path),
        dynamo=True,
        opset_version=18,
        input_names=["input_ids", "attention_mask"],
        dynamic_shapes={
            "input_ids": {0: Dim("batch"), 1: Dim("sequence")},
            "attention_mask": {0: "batch", 1: "sequence"},
        },
    )
    _, results = rewrite_model(load_model(path))
    assert [r.rewritten for r in results] == [False, False]
    assert all("attention_mask" in r.reason for r in results), [r.reason for r in results]


def test_sliding_window_leaves_attention_dense() -> None:
    path = export_dense(tiny_model("mistral", sliding_window=16), workdir() / "mistral-window16.onnx")
    original = load_model(path)
    rewritten, results = rewrite_model(original)
    assert [r.rewritten for r in results] == [False, False]
    assert all("not causal at length 17" in r.reason for r in results), [r.reason for r in results]
    ids = token_ids(2, 40, seed=1)
    np.testing.assert_array_equal(run_logits(rewritten, ids), run_logits(original, ids))


def _bidirectional_attention() -> onnx.ModelProto:
    """softmax(Q K^T * 0.125) V without any mask, [1, 2, S, 64]."""
    h = onnx.helper
    shape = [1, 2, "s", 64]
    inputs = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in "qkv"]
    output = h.make_tensor_value_info("o", onnx.TensorProto.FLOAT, shape)
    nodes = [
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        h.make_node("MatMul", ["q", "kt"], ["scores"]),
        h.make_node("Mul", ["scores", "scale"], ["scaled"]),
        h.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        h.make_node("MatMul", ["probs", "v"], ["o"]),
    ]
    scale = h.make_tensor("scale", onnx.TensorProto.FLOAT, [], [0.125])
    graph = h.make_graph(nodes, "bidirectional", inputs, [output], initializer=[scale])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def test_bidirectional_attention_is_reported_not_rewritten() -> None:
    model = _bidirectional_attention()
    rewritten, results = rewrite_model(model)
    assert len(results) == 1 and not results[0].rewritten
    assert "no causal mask" in results[0].reason
    assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]
    feeds = {n: np.random.default_rng(0).standard_normal((1, 2, 9, 64)).astype(np.float32) for n in "qkv"}
    np.testing.assert_array_equal(
        create_session(rewritten).run(None, feeds)[0], create_session(model).run(None, feeds)[0]
    )


@pytest.mark.parametrize("seq_len", [5, 70])
def test_causal_additive_mask_is_accepted(seq_len: int) -> None:
    """A constant causal additive mask of a static length is rewritten."""
    _, results = rewrite_model(_causal_chain(seq_len))
    assert results[0].rewritten, results[0].reason


def _causal_chain(seq_len: int, visible_bias: float = 0.0) -> onnx.ModelProto:
    """The unmasked chain of `_bidirectional_attention` with a constant additive mask of a static length."""
    model = _bidirectional_attention()
    for value_info in (*model.graph.input, *model.graph.output):
        value_info.type.tensor_type.shape.dim[2].dim_value = seq_len
    mask = np.triu(np.full((seq_len, seq_len), -1e9, np.float32), k=1) + np.tril(
        np.full((seq_len, seq_len), visible_bias, np.float32)
    )
    model.graph.initializer.append(onnx.numpy_helper.from_array(mask, "mask"))
    model.graph.node[2].output[0] = "scaled0"
    model.graph.node.insert(3, onnx.helper.make_node("Add", ["scaled0", "mask"], ["scaled"]))
    return model


def test_bias_on_visible_scores_leaves_attention_dense() -> None:
    _, results = rewrite_model(_causal_chain(9, visible_bias=0.5))
    assert not results[0].rewritten and "non-zero bias" in results[0].reason


def test_output_check_catches_a_misread_site() -> None:
    """The numerical check is the safety net under matching: a wrong scale is refused."""
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(_causal_chain(9)))
    (site,) = find_attention(graph)
    assert isinstance(check_outputs(graph, [site])[0], SiteShape)
    site.scale *= 2
    (problem,) = check_outputs(graph, [site])
    assert "not causal attention" in problem


def test_probabilities_used_outside_attention_leave_it_dense() -> None:
    model = _causal_chain(9)
    model.graph.output.append(onnx.helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, None))
    _, results = rewrite_model(model)
    assert not results[0].rewritten and "probabilities are also used" in results[0].reason


def _onnx_attention(is_causal: int, past: bool = False) -> onnx.ModelProto:
    """One opset-23 Attention node on [1, 2, 9, 64] (K/V with 1 head), optionally with a past KV cache."""
    h = onnx.helper
    q = h.make_tensor_value_info("q", onnx.TensorProto.FLOAT, [1, 2, 9, 64])
    kv = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 1, 9, 64]) for n in ("k", "v")]
    past_inputs = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 1, 3, 64]) for n in ("pk", "pv")]
    output = h.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [1, 2, 9, 64])
    inputs = ["q", "k", "v", "", "pk", "pv"] if past else ["q", "k", "v"]
    node = h.make_node("Attention", inputs, ["o"], is_causal=is_causal)
    graph = h.make_graph([node], "attention", [q, *kv, *(past_inputs if past else [])], [output])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23)])


def test_onnx_attention_is_causal_flag() -> None:
    model = _onnx_attention(is_causal=1)
    rewritten, results = rewrite_model(model, default_head=HeadPattern.dense())
    assert results[0].rewritten and results[0].shape == SiteShape(2, 1, 64)
    rng = np.random.default_rng(3)
    feeds = {n: rng.standard_normal((1, 2 if n == "q" else 1, 9, 64)).astype(np.float32) for n in "qkv"}
    np.testing.assert_allclose(
        create_session(rewritten).run(None, feeds)[0], create_session(model).run(None, feeds)[0], rtol=1e-5, atol=1e-6
    )
    _, results = rewrite_model(_onnx_attention(is_causal=0))
    assert not results[0].rewritten and "bidirectional" in results[0].reason
    _, results = rewrite_model(_onnx_attention(is_causal=1, past=True))
    assert not results[0].rewritten and "past KV cache" in results[0].reason


def test_unrecognised_score_step_is_reported() -> None:
    """A logit soft cap (tanh) between the score MatMul and the Softmax is reported, not skipped."""
    model = _causal_chain(9)
    h = onnx.helper
    model.graph.node[3].output[0] = "masked"
    model.graph.node.insert(4, h.make_node("Tanh", ["masked"], ["scaled"]))
    _, results = rewrite_model(model)
    assert len(results) == 1 and not results[0].rewritten
    assert "pass through Tanh" in results[0].reason
