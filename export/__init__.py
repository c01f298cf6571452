"""ONNX export: rewrite attention into `minfer::SparsePrefillAttention`, export from PyTorch, run and compare.

- `rewrite_model`: find every attention subgraph of an ONNX decoder and replace it (minfer-export);
- `minfer.export.hf.export_dense` / `export_sparse`: Hugging Face decoders to ONNX, dense or with the
  sparse node (not imported here: it loads transformers);
- `create_session`: an ONNX Runtime session that runs the sparse node on the CPU (PyTorch reference);
- `compare_models`: polygraphy comparison of a dense and a sparse model (minfer-compare).
"""

from .compare import compare_models
from .errors import ExportError
from .ort_op import create_session
from .rewrite import LayerResult, rewrite_model

__all__ = [
    "ExportError",
    "LayerResult",
    "compare_models",
    "create_session",
    "rewrite_model",
]
