"""The PyTorch route: Hugging Face decoders exported with SparsePrefillAttention nodes directly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from export_helpers import SPARSE_CONFIG, dense_model, node_attributes, run_logits, sparse_nodes, token_ids, workdir

from minfer.export.errors import ExportError
from minfer.export.hf import TINY_FAMILIES, export_sparse, tiny_model
from minfer.export.model_io import load_model
from minfer.export.rewrite import rewrite_model
from minfer.patterns.spec import validate_attributes
from minfer.runtime.patch import patch


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_sparse_export_equals_patched_pytorch_model(family: str) -> None:
    model = tiny_model(family, num_kv_heads=1)
    path = export_sparse(model, workdir() / f"{family}-torch-sparse.onnx", SPARSE_CONFIG)
    assert not hasattr(model, "_minfer_patched"), "the model is restored after the export"
    exported = onnx.load(str(path))
    nodes = sparse_nodes(exported)
    assert [validate_attributes(node_attributes(n))[1] for n in nodes] == list(SPARSE_CONFIG.layers)
    assert not {"Softmax", "Attention"} & {n.op_type for n in exported.graph.node}
    patched = patch(model, SPARSE_CONFIG, chunk_size=None)
    for batch, seq_len in ((2, 150), (1, 7)):  # dynamic batch and sequence length
        ids = token_ids(batch, seq_len, seed=seq_len)
        with torch.no_grad():
            expected = patched(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
        np.testing.assert_allclose(run_logits(exported, ids), expected, rtol=1e-4, atol=1e-4)


def test_pytorch_route_and_onnx_rewrite_agree() -> None:
    rewritten, _ = rewrite_model(load_model(dense_model("llama")), SPARSE_CONFIG)
    exported = onnx.load(str(export_sparse(tiny_model("llama"), workdir() / "llama-route.onnx", SPARSE_CONFIG)))
    ids = token_ids(2, 140, seed=8)
    np.testing.assert_allclose(run_logits(exported, ids), run_logits(rewritten, ids), rtol=1e-4, atol=1e-4)


def test_sliding_window_model_is_refused() -> None:
    with pytest.raises(ExportError, match="sliding-window attention"):
        export_sparse(tiny_model("mistral", sliding_window=32), workdir() / "refused.onnx")
    assert not (workdir() / "refused.onnx").exists()
