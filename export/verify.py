"""Deciding, by running the graph, which attention sites are causal self-attention and safe to rewrite.

Two checks, both on probe inputs that `probe_feeds` builds from the graph's own inputs:

- masks: a mask may depend on inputs only through their shapes (values mean padding or a custom
  mask), and evaluated at several lengths it must be exactly causal (boolean) or 0 / <= -1e4
  (additive). The lengths include w + 1 for every integer constant w <= 4096 in the mask's
  subgraph, which exposes sliding windows and similar cut-offs.
- outputs (optional, runs the model once): each site's output must equal causal softmax attention
  of its Q, K, V at its scale, which also checks the layout read by `minfer.export.match`.

The checks are evidence at the probed shapes, not a proof for every shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .errors import ExportError
from .match import MASKED_FILL, AttentionSite, Mask
from .ort_op import ORT_ERRORS, create_session

PROBE_BATCH = 2
PROBE_SEQ_LEN = 70  # one full 64-token block and a ragged one
MASK_PROBE_LENGTHS = (1, 5, PROBE_SEQ_LEN)
MAX_WINDOW_PROBE = 4096


@dataclass(frozen=True)
class SiteShape:
    num_q_heads: int
    num_kv_heads: int
    head_dim: int


def probe_feeds(graph: gs.Graph, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a decoder graph: dim 0 symbolic -> batch, other symbolic dims -> seq_len.

    Integer inputs named like masks are all ones (no padding), position inputs count 0..S-1, other
    integer inputs are token ids below the vocabulary size of the embedding they index.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in graph.inputs:
        if tensor.shape is None:
            raise ExportError(f"graph input {tensor.name} has no shape; cannot build probe inputs")
        shape = tuple(
            d if isinstance(d, int) and d >= 0 else (batch if i == 0 else seq_len) for i, d in enumerate(tensor.shape)
        )
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        name = tensor.name.lower()
        if dtype == np.bool_ or (np.issubdtype(dtype, np.integer) and "mask" in name):
            feeds[tensor.name] = np.ones(shape, dtype)
        elif np.issubdtype(dtype, np.integer) and "position" in name:
            feeds[tensor.name] = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
        elif np.issubdtype(dtype, np.integer):
            feeds[tensor.name] = rng.integers(0, _vocab_size(tensor), size=shape).astype(dtype)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _vocab_size(tensor: gs.Tensor) -> int:
    sizes = [
        node.inputs[0].shape[0]
        for node in tensor.outputs
        if node.op == "Gather" and isinstance(node.inputs[0], gs.Constant) and node.inputs[1] is tensor
    ]
    return min(sizes) if sizes else 2


def run_tensors(
    graph: gs.Graph, tensors: Sequence[gs.Tensor], feeds_at: Iterable[tuple[int, int]]
) -> list[list[np.ndarray]]:
    """Evaluate inner tensors of graph (only the nodes they need) once per (batch, seq_len)."""
    probe = graph.copy()
    by_name = probe.tensors()
    names = list(dict.fromkeys(t.name for t in tensors))
    for name in names:
        tensor = by_name[name]
        if tensor.dtype is None:  # outputs of ops onnx cannot infer (contrib ops) have their first input's type
            producer_inputs = tensor.inputs[0].inputs if tensor.inputs else []
            tensor.dtype = producer_inputs[0].dtype if producer_inputs else None
        if tensor.dtype is None:
            raise ExportError(f"tensor {name} has no dtype in the graph (run shape inference?)")
    probe.outputs = [by_name[name] for name in names]
    probe.cleanup()
    session = create_session(gs.export_onnx(probe))
    results = []
    for batch, seq_len in feeds_at:
        values = dict(zip(names, _run_probe(session, names, graph, batch, seq_len), strict=True))
        results.append([values[t.name] for t in tensors])
    return results


def _run_probe(session: ort.InferenceSession, names: list[str], graph: gs.Graph, batch: int, seq_len: int) -> list:
    """One probe run; models that only run at batch 1 are probed at batch 1.

    (torch's opset-23 exports of Llama fail in ONNX Runtime for batch > 1: RotaryEmbedding gets a
    batch-1 cos/sin cache.)
    """
    try:
        return session.run(names, probe_feeds(graph, batch, seq_len))
    except ORT_ERRORS as e:
        if batch > 1:
            return _run_probe(session, names, graph, 1, seq_len)
        raise ExportError(f"the model fails on probe inputs (batch 1, length {seq_len}): {e}") from None


# --- masks ----------------------------------------------------------------------------------------


def mask_problems(graph: gs.Graph, sites: Sequence[AttentionSite]) -> list[str | None]:
    """Per site, why its masking is not plain causal self-attention (None when it is).

    Masks shared by several layers (the usual case) are evaluated once.
    """
    problems: list[str | None] = []
    for site in sites:
        problem = site.problem
        if not site.masks and not site.is_causal and problem is None:
            problem = "it has no causal mask (bidirectional attention)"
        for mask in site.masks:
            inputs = value_dependencies(mask.tensor, graph)
            if inputs and problem is None:
                problem = f"its mask depends on the values of input(s) {inputs} (padding or a custom mask)"
        for lengths in site.lengths:
            inputs = value_dependencies(lengths, graph)
            if inputs and problem is None:
                problem = f"its sequence lengths depend on the values of input(s) {inputs} (padding)"
        problems.append(problem)
    probed = {m.tensor.name: m for s, p in zip(sites, problems, strict=True) if p is None for m in s.masks}
    if not probed:
        return problems
    lengths = sorted(set(MASK_PROBE_LENGTHS) | {w + 1 for w in _mask_constants(probed.values())})
    tensors = [m.tensor for m in probed.values()]
    results = run_tensors(graph, tensors, [(PROBE_BATCH, s) for s in lengths])
    for i, site in enumerate(sites):
        if problems[i] is not None or not site.masks:
            continue
        for values in results:
            by_name = dict(zip(probed, values, strict=True))
            site_values = [by_name[m.tensor.name] for m in site.masks]
            problem = _causal_problem(site, site_values)
            if problem:
                problems[i] = f"its mask is not causal at length {site_values[0].shape[-1]}: {problem}"
                break
    return problems


def value_dependencies(tensor: gs.Tensor, graph: gs.Graph) -> list[str]:
    """Graph inputs whose values (not just shapes) reach tensor."""
    inputs = {t.name for t in graph.inputs}
    found, seen, stack = set(), set(), [tensor]
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        if current.name in inputs:
            found.add(current.name)
        for node in current.inputs:
            if node.op in ("Shape", "Size"):
                continue
            stack.extend(node.inputs)
            stack.extend(_subgraph_inputs(node))
    return sorted(found)


def _subgraph_inputs(node: gs.Node) -> list[gs.Tensor]:
    """Outer tensors used inside If/Loop/Scan bodies."""
    tensors = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            local = {t.name for n in value.nodes for t in n.outputs} | {t.name for t in value.inputs}
            tensors.extend(t for n in value.nodes for t in n.inputs if t.name and t.name not in local)
    return tensors


def _mask_constants(masks: Iterable[Mask]) -> set[int]:
    """Integer-valued scalar constants in the masks' subgraphs (window sizes and similar)."""
    found, seen, stack = set(), set(), [m.tensor for m in masks]
    while stack:
        tensor = stack.pop()
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        if isinstance(tensor, gs.Constant) and tensor.values.size == 1:
            value = float(np.asarray(tensor.values).reshape(()))
            if value.is_integer() and 2 <= value <= MAX_WINDOW_PROBE:
                found.add(int(value))
        for node in tensor.inputs:
            if node.op not in ("Shape", "Size"):  # what feeds a Shape does not shape the mask's values
                stack.extend(node.inputs)
    return found


def _causal_problem(site: AttentionSite, values: Sequence[np.ndarray]) -> str | None:
    """Why the masks (evaluated together) are not exactly causal; the length is the masks' own."""
    seq_len = values[0].shape[-1]
    keep = np.ones((seq_len, seq_len), dtype=bool)
    bias = np.zeros((seq_len, seq_len))
    for mask, value in zip(site.masks, values, strict=True):
        if value.ndim < 2 or value.shape[-2:] != (seq_len, seq_len):
            return f"mask shape {value.shape} is not [.., S, S] (cross-attention or a KV cache)"
        if value.dtype != np.bool_:
            bias = bias + value.astype(np.float64)
        elif mask.keeps_true:
            keep = keep & value
        else:
            keep = keep & ~value
    causal = np.tril(np.ones((seq_len, seq_len), dtype=bool))
    keep = np.broadcast_to(keep, np.broadcast_shapes(keep.shape, bias.shape))
    bias = np.broadcast_to(bias, keep.shape)
    if site.is_causal:
        keep = keep & causal
    allowed = keep & (bias > MASKED_FILL)
    if not np.array_equal(allowed, np.broadcast_to(causal, allowed.shape)):
        return "it allows or blocks keys other than exactly j <= i"
    if np.any(bias[allowed] != 0):
        return "it adds a non-zero bias to visible scores"
    return None


# --- outputs --------------------------------------------------------------------------------------


def check_outputs(graph: gs.Graph, sites: Sequence[AttentionSite]) -> list[SiteShape | str]:
    """Run the model once; per site its head shape, or why its output is not causal attention."""
    tensors = [t for s in sites for t in (s.q, s.k, s.v, s.output)]
    (values,) = run_tensors(graph, tensors, [(PROBE_BATCH, PROBE_SEQ_LEN)])
    return [_compare(site, *values[4 * i : 4 * i + 4]) for i, site in enumerate(sites)]


def _compare(site: AttentionSite, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray) -> SiteShape | str:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        return f"Q/K/V are not 4-D [B, H, S, D] (got {q.shape}, {k.shape}, {v.shape})"
    if not q.dtype == k.dtype == v.dtype == out.dtype:
        return f"Q, K, V and the output do not share one dtype ({q.dtype}, {k.dtype}, {v.dtype}, {out.dtype})"
    batch, num_q_heads, seq_len, head_dim = q.shape
    if site.output_heads_last:
        if out.shape != (batch, seq_len, num_q_heads * head_dim):
            return f"output shape {out.shape} is not [B, S, Hq * D] for Q {q.shape}"
        out = out.reshape(batch, seq_len, num_q_heads, head_dim).transpose(0, 2, 1, 3)
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2] != seq_len or k.shape[3] != head_dim:
        return f"K/V shapes {k.shape}, {v.shape} do not match Q {q.shape} (cross-attention or a KV cache)"
    if num_q_heads % k.shape[1] != 0 or out.shape != q.shape:
        return f"head counts do not line up (Q {q.shape}, K {k.shape}, output {out.shape})"
    expected = causal_attention(q, k, v, site.scale)
    tolerance = 1e-4 if q.dtype == np.float32 or q.dtype == np.float64 else 2e-2
    error = float(np.max(np.abs(out.astype(np.float64) - expected)))
    if not error <= tolerance * max(1.0, float(np.max(np.abs(expected)))):
        return f"its output is not causal attention of the Q/K/V it was read as (max error {error:.3g})"
    return SiteShape(num_q_heads, k.shape[1], head_dim)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Dense causal softmax attention in float64 with grouped-query heads (the rewrite's target)."""
    group = q.shape[1] // k.shape[1]
    k = np.repeat(k.astype(np.float64), group, axis=1)
    v = np.repeat(v.astype(np.float64), group, axis=1)
    scores = q.astype(np.float64) @ np.swapaxes(k, -1, -2) * scale
    seq_len = q.shape[2]
    scores = np.where(np.tril(np.ones((seq_len, seq_len), dtype=bool)), scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v


def static_shape(site: AttentionSite) -> SiteShape | str:
    """Head shape from the graph's static shapes (when the outputs are not checked by running)."""
    dtypes = {t.dtype for t in (site.q, site.k, site.v) if t.dtype is not None}
    if len(dtypes) > 1:
        return f"Q, K and V do not share one dtype ({sorted(map(str, dtypes))})"
    q_shape, k_shape = site.q.shape, site.k.shape
    dims = (q_shape[1], k_shape[1], q_shape[3]) if q_shape and k_shape and len(q_shape) == len(k_shape) == 4 else ()
    if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
        return "head counts and head_dim are not static in the graph (run with --verify to read them)"
    return SiteShape(*dims)
