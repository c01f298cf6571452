"""The ONNX Runtime custom op equals the PyTorch reference, and refuses bad input by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from minfer.export.errors import ExportError
from minfer.export.ort_op import create_session
from minfer.patterns.reference import sparse_prefill_attention
from minfer.patterns.spec import DOMAIN, OP_TYPE, OPSET_VERSION, HeadPattern, to_attributes

PATTERNS = (
    HeadPattern.dense(),
    HeadPattern.a_shape(sink=3, local=20),
    HeadPattern.vertical_slash(9, 30, last_q=17, sink=2, local=5),
    HeadPattern.block_sparse(top_k=2),
)


def single_node_model(heads, scale: float, dtype: int = TensorProto.FLOAT, **extra) -> onnx.ModelProto:
    attrs = {**to_attributes(heads, scale), **extra}
    node = helper.make_node(OP_TYPE, ["q", "k", "v"], ["o"], domain=DOMAIN, **attrs)
    values = [helper.make_tensor_value_info(n, dtype, None) for n in ("q", "k", "v", "o")]
    graph = helper.make_graph([node], "sparse", values[:3], values[3:])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, OPSET_VERSION)]
    )


@pytest.mark.parametrize(
    ("batch", "kv_heads", "seq_len", "head_dim"), [(2, 2, 130, 64), (1, 1, 1, 128), (1, 4, 63, 64)]
)
def test_custom_op_equals_reference(batch: int, kv_heads: int, seq_len: int, head_dim: int) -> None:
    generator = torch.Generator().manual_seed(seq_len)
    q = torch.randn(batch, 4, seq_len, head_dim, generator=generator)
    k, v = (torch.randn(batch, kv_heads, seq_len, head_dim, generator=generator) for _ in range(2))
    scale = head_dim**-0.5
    (got,) = create_session(single_node_model(PATTERNS, scale)).run(
        None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    )
    expected = sparse_prefill_attention(q, k, v, PATTERNS, scale).numpy()
    np.testing.assert_array_equal(got, expected)


def test_runtime_shape_error_is_raised_not_a_crash() -> None:
    session = create_session(single_node_model(PATTERNS[:2], 0.1))
    q = np.zeros((1, 2, 8, 96), np.float32)
    k = np.zeros((1, 1, 8, 96), np.float32)
    with pytest.raises(ExportError, match="head_dim 96 is not supported"):
        session.run(None, {"q": q, "k": k, "v": k})
    with pytest.raises(ExportError, match=r"query heads \(2\) must be a positive multiple of KV heads \(3\)"):
        session.run(
            None,
            {
                "q": np.zeros((1, 2, 8, 64), np.float32),
                "k": np.zeros((1, 3, 8, 64), np.float32),
                "v": np.zeros((1, 3, 8, 64), np.float32),
            },
        )
    ok = session.run(
        None,
        {
            "q": np.zeros((1, 2, 8, 64), np.float32),
            "k": np.zeros((1, 1, 8, 64), np.float32),
            "v": np.ones((1, 1, 8, 64), np.float32),
        },
    )
    np.testing.assert_array_equal(ok[0], np.ones((1, 2, 8, 64), np.float32))


def test_invalid_attributes_are_refused_when_the_session_is_built() -> None:
    model = single_node_model(PATTERNS[:1], 0.1)
    for attribute in model.graph.node[0].attribute:
        if attribute.name == "block_size":
            attribute.i = 32
    with pytest.raises(ExportError, match="block_size must be 64"):
        create_session(model)


def test_float16_runs_through_casts_and_equals_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 100, 64, generator=generator).half()
    k, v = (torch.randn(1, 2, 100, 64, generator=generator).half() for _ in range(2))
    model = single_node_model(PATTERNS, 0.125, dtype=TensorProto.FLOAT16)
    (got,) = create_session(model).run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, sparse_prefill_attention(q, k, v, PATTERNS, 0.125).numpy())
