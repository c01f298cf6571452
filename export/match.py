"""Finding attention in exported decoder graphs: the forms real exporters emit, one `AttentionSite` each.

Matching is structural and deliberately lenient about layout details (scale multiplications, the
transpose of K, grouped-query K/V repetition): every site is then checked numerically by
`minfer.export.verify` before it is rewritten, so a mis-read layout leaves the layer dense instead
of changing what the model computes. What matching does decide on its own is whether a site can
be rewritten at all (past KV inputs, attention probabilities used elsewhere, 3-D layouts, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

MICROSOFT = "com.microsoft"
_DEFAULT_DOMAINS = (None, "", "ai.onnx")
MASKED_FILL = -1e4  # a Where that masks scores must fill at most this


@dataclass(frozen=True)
class Mask:
    """A tensor applied to the scores: additive when float; boolean masks keep True (or False) entries."""

    tensor: gs.Tensor
    keeps_true: bool = True


@dataclass
class AttentionSite:
    """One attention subgraph: what goes into the sparse node and why it may have to stay dense."""

    form: str
    anchor: gs.Node  # the Softmax or attention node (names the site in reports)
    output: gs.Variable | None = None  # [B, Hq, S, D]
    q: gs.Tensor | None = None  # [B, Hq, S, D], after rotary embedding
    k: gs.Tensor | None = None  # [B, Hkv, S, D], before any repeat for grouped-query attention
    v: gs.Tensor | None = None
    scale: float | None = None
    masks: list[Mask] = field(default_factory=list)
    is_causal: bool = False  # causality stated by the op itself (is_causal / unidirectional)
    output_heads_last: bool = False  # output is [B, S, Hq * D] (contrib ops) instead of [B, Hq, S, D]
    lengths: list[gs.Tensor] = field(default_factory=list)  # per-sequence lengths the op reads (GQA)
    problem: str | None = None  # why this site is left dense

    @property
    def name(self) -> str:
        return self.anchor.name or self.anchor.op

    def leave_dense(self, reason: str) -> AttentionSite:
        if self.problem is None:
            self.problem = reason
        return self


def find_attention(graph: gs.Graph) -> list[AttentionSite]:
    """Every attention subgraph in graph (topological) order."""
    graph.toposort()
    outputs = {t.name for t in graph.outputs}
    sites = []
    for node in graph.nodes:
        if node.op == "Softmax" and node.domain in _DEFAULT_DOMAINS:
            site = _match_softmax_chain(node, outputs)
            if site is not None:
                sites.append(site)
        elif node.op == "Attention" and node.domain in _DEFAULT_DOMAINS:
            sites.append(_match_onnx_attention(node, outputs))
        elif node.op == "MultiHeadAttention" and node.domain == MICROSOFT:
            sites.append(_match_multi_head_attention(node, outputs))
        elif node.op == "GroupQueryAttention" and node.domain == MICROSOFT:
            sites.append(_match_group_query_attention(node, outputs))
    return sites


# --- helpers over tensors -------------------------------------------------------------------------


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def _constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = _producer(tensor)
    if node is not None and node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return np.asarray(node.attrs["value"].values)
    return None


def _scalar(tensor: gs.Tensor) -> float | None:
    value = _constant_value(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _present(node: gs.Node, index: int) -> gs.Tensor | None:
    """Optional input `index` of node, None when absent or empty."""
    if index >= len(node.inputs):
        return None
    tensor = node.inputs[index]
    return None if tensor.name == "" else tensor


def _peel_scale(tensor: gs.Tensor, through_casts: bool = False) -> tuple[gs.Tensor, float]:
    """Strip multiplications/divisions by scalar constants; return (base, factor).

    Casts are stripped too on the scores path (`through_casts`), never on Q/K: the sparse node must
    get Q, K, V of one dtype.
    """
    factor = 1.0
    while (node := _producer(tensor)) is not None:
        if through_casts and node.op == "Cast":
            tensor = node.inputs[0]
            continue
        if node.op not in ("Mul", "Div") or len(node.inputs) != 2:
            break
        a, b = node.inputs
        if node.op == "Mul" and (c := _scalar(a)) is not None:
            factor, tensor = factor * c, b
        elif (c := _scalar(b)) is not None:
            factor, tensor = (factor * c, a) if node.op == "Mul" else (factor / c, a)
        else:
            break
    return tensor, factor


def _peel_key_transpose(tensor: gs.Tensor) -> tuple[gs.Tensor, float] | None:
    """K from K^T: a Transpose of the last two axes, or Reshape(Transpose(Reshape(K), [0, 2, 1])).

    Scalar factors before or after the transpose are collected (PyTorch's SDPA decomposition
    scales K by sqrt(scale) on either side).
    """
    tensor, factor = _peel_scale(tensor)
    node = _producer(tensor)
    if node is None:
        return None
    if node.op == "Transpose" and list(node.attrs.get("perm", [])) == [0, 1, 3, 2]:
        base, inner = _peel_scale(node.inputs[0])
        return base, factor * inner
    if node.op == "Reshape":
        transpose = _producer(node.inputs[0])
        if transpose is not None and transpose.op == "Transpose" and list(transpose.attrs.get("perm", [])) == [0, 2, 1]:
            flat = _producer(transpose.inputs[0])
            if flat is not None and flat.op == "Reshape":
                base, inner = _peel_scale(flat.inputs[0])
                return base, factor * inner
    return None


def _peel_repeat_kv(tensor: gs.Tensor) -> gs.Tensor:
    """K/V before the grouped-query repeat: Reshape(Expand(Unsqueeze(x) or Reshape(x))) -> x."""
    reshape = _producer(tensor)
    if reshape is None or reshape.op != "Reshape":
        return tensor
    expand = _producer(reshape.inputs[0])
    if expand is None or expand.op != "Expand":
        return tensor
    inner = _producer(expand.inputs[0])
    if inner is None or inner.op not in ("Unsqueeze", "Reshape"):
        return tensor
    return inner.inputs[0]


# --- the MatMul -> scale -> mask -> Softmax -> MatMul chain ----------------------------------------


_SCORE_PASSTHROUGH = ("Cast",)


def _match_softmax_chain(softmax: gs.Node, graph_outputs: set[str]) -> AttentionSite | None:
    """None when this Softmax is not attention: no P @ V MatMul after it or no score MatMul behind it."""
    probs, pv = _follow_probabilities(softmax.outputs[0], graph_outputs)
    if pv is None:
        return None
    site = AttentionSite("MatMul-Softmax chain", softmax, output=pv.outputs[0])
    qk, factor, unknown = _read_scores(site, softmax.inputs[0])
    if qk is None:
        if unknown is None or not _upstream_matmul(unknown):
            return None
        return site.leave_dense(f"its scores pass through {unknown.op} ({unknown.name}) before the Softmax")
    q, q_factor = _peel_scale(qk.inputs[0])
    key = _peel_key_transpose(qk.inputs[1])
    if key is None:
        return site.leave_dense("cannot read K from the score MatMul's second input")
    k, k_factor = key
    site.q, site.k, site.v = q, _peel_repeat_kv(k), _peel_repeat_kv(pv.inputs[1])
    site.scale = factor * q_factor * k_factor
    if probs is None:
        site.leave_dense("the attention probabilities are also used outside attention (output_attentions?)")
    axis = softmax.attrs.get("axis", -1)
    if axis not in (-1, 3):
        site.leave_dense(f"Softmax over axis {axis} is not attention over keys")
    return site


def _read_scores(site: AttentionSite, scores: gs.Tensor) -> tuple[gs.Node | None, float, gs.Node | None]:
    """Walk from the Softmax input to the Q @ K^T MatMul, collecting masks and scalar factors.

    Returns (MatMul, factor, None), or (None, factor, the node that is not a recognised step).
    """
    factor = 1.0
    while (node := _producer(scores)) is not None:
        if node.op == "MatMul":
            return node, factor, None
        if node.op in _SCORE_PASSTHROUGH:
            scores = node.inputs[0]
            continue
        if node.op in ("Mul", "Div"):
            base, f = _peel_scale(scores, through_casts=True)
            if base is scores:
                return None, factor, node
            scores, factor = base, factor * f
            continue
        operand = None
        if node.op == "Add":
            operand = _score_operand(node)
        elif node.op == "Where":
            operand = _score_operand(node, candidates=(1, 2))
        if operand is None:
            return None, factor, node
        if node.op == "Add":
            site.masks.append(Mask(node.inputs[1 - operand]))
        else:
            fill = _scalar(node.inputs[3 - operand])
            if fill is None or fill > MASKED_FILL:
                site.leave_dense(f"a Where fills scores with {fill} instead of masking them out")
            site.masks.append(Mask(node.inputs[0], keeps_true=operand == 1))
        scores = node.inputs[operand]
    return None, factor, None


def _upstream_matmul(node: gs.Node, depth: int = 6) -> bool:
    """Whether a MatMul feeds node within `depth` steps (the scores of an attention we cannot read)."""
    frontier = [node]
    for _ in range(depth):
        frontier = [p for n in frontier for t in n.inputs if (p := _producer(t)) is not None]
        if any(n.op == "MatMul" for n in frontier):
            return True
    return False


def _score_operand(node: gs.Node, candidates: tuple[int, ...] = (0, 1)) -> int | None:
    """Which input of an Add/Where carries the scores: the only one a MatMul feeds."""
    found = [i for i in candidates if _reaches_matmul(node.inputs[i])]
    return found[0] if len(found) == 1 else None


def _reaches_matmul(tensor: gs.Tensor, depth: int = 8) -> bool:
    """Whether tensor is a MatMul output seen through scalings, Casts and other mask steps."""
    base, _ = _peel_scale(tensor, through_casts=True)
    node = _producer(base)
    if node is None or depth == 0:
        return False
    if node.op == "MatMul":
        return True
    if node.op == "Add":
        return any(_reaches_matmul(t, depth - 1) for t in node.inputs)
    if node.op == "Where":
        return any(_reaches_matmul(t, depth - 1) for t in node.inputs[1:])
    return False


def _follow_probabilities(probs: gs.Tensor, graph_outputs: set[str]) -> tuple[gs.Tensor | None, gs.Node | None]:
    """From the Softmax output to the P @ V MatMul, through NaN guards, Casts and Dropout.

    Returns (probabilities feeding the MatMul or None when they also leave attention, MatMul node).
    """
    exclusive = True
    while True:
        consumers = list(probs.outputs)
        exclusive &= probs.name not in graph_outputs
        guard = _nan_guard(probs, consumers)
        if guard is not None:
            probs = guard.outputs[0]
            continue
        if len(consumers) != 1:
            exclusive = False
            matmuls = [c for c in consumers if c.op == "MatMul" and c.inputs[0] is probs]
            if len(matmuls) != 1:
                return None, None
            return None, matmuls[0]
        (node,) = consumers
        if node.op in ("Cast", "Dropout", "Identity"):
            probs = node.outputs[0]
            continue
        if node.op == "MatMul" and node.inputs[0] is probs:
            return (probs if exclusive else None), node
        return None, None


def _nan_guard(probs: gs.Tensor, consumers: list[gs.Node]) -> gs.Node | None:
    """Where(IsNaN(p), 0, p): PyTorch's SDPA decomposition zeroes fully masked rows."""
    if len(consumers) != 2:
        return None
    isnan = next((c for c in consumers if c.op == "IsNaN"), None)
    where = next((c for c in consumers if c.op == "Where"), None)
    if isnan is None or where is None or len(isnan.outputs[0].outputs) != 1:
        return None
    if where.inputs[0] is isnan.outputs[0] and where.inputs[2] is probs and _scalar(where.inputs[1]) == 0.0:
        return where
    return None


# --- the ONNX Attention op (opset 23+) -------------------------------------------------------------


def _match_onnx_attention(node: gs.Node, graph_outputs: set[str]) -> AttentionSite:
    site = AttentionSite("ONNX Attention", node, output=node.outputs[0])
    q, k, v = node.inputs[:3]
    site.q, site.k, site.v = q, _peel_repeat_kv(k), _peel_repeat_kv(v)
    site.is_causal = bool(node.attrs.get("is_causal", 0))
    if (mask := _present(node, 3)) is not None:
        site.masks.append(Mask(mask))
    if _present(node, 4) is not None or _present(node, 5) is not None:
        site.leave_dense("it reads a past KV cache (decoding graph, not pre-filling)")
    if any(o.outputs or o.name in graph_outputs for o in node.outputs[1:]):
        site.leave_dense("it returns present KV or QK outputs that are used")
    if node.attrs.get("softcap", 0.0):
        site.leave_dense("it applies a logit soft cap")
    if q.shape is not None and len(q.shape) != 4:
        site.leave_dense("3-D (packed heads) Q/K/V are not supported; export with 4-D [B, H, S, D]")
    scale = node.attrs.get("scale")
    site.scale = float(scale) if scale else _default_scale(q)
    if site.scale is None:
        site.leave_dense("the default scale needs a static head_dim")
    return site


def _default_scale(q: gs.Tensor) -> float | None:
    head_dim = q.shape[-1] if q.shape else None
    return 1.0 / math.sqrt(head_dim) if isinstance(head_dim, int) else None


# --- com.microsoft contrib ops ----------------------------------------------------------------------


def _heads_first(tensor: gs.Tensor) -> gs.Tensor | None:
    """The [B, H, S, D] tensor behind Reshape(Transpose(x, [0, 2, 1, 3]), [B, S, H * D])."""
    reshape = _producer(tensor)
    if reshape is None or reshape.op != "Reshape":
        return None
    transpose = _producer(reshape.inputs[0])
    if transpose is None or transpose.op != "Transpose" or list(transpose.attrs.get("perm", [])) != [0, 2, 1, 3]:
        return None
    return transpose.inputs[0]


def _read_hidden_qkv(site: AttentionSite, node: gs.Node) -> None:
    """Q/K/V of a contrib op, which takes them as [B, S, H * D]: the 4-D tensors they were made from."""
    q, k, v = (_present(node, i) for i in range(3))
    if k is None or v is None:
        site.leave_dense("it takes packed QKV in one input")
        return
    heads_first = [_heads_first(t) for t in (q, k, v)]
    if any(t is None for t in heads_first):
        site.leave_dense("its Q/K/V are not reshaped from [B, H, S, D] tensors")
        return
    site.q, site.k, site.v = heads_first[0], _peel_repeat_kv(heads_first[1]), _peel_repeat_kv(heads_first[2])
    scale = node.attrs.get("scale")
    site.scale = float(scale) if scale else _default_scale(site.q)
    if site.scale is None:
        site.leave_dense("the default scale needs a static head_dim")


def _match_multi_head_attention(node: gs.Node, graph_outputs: set[str]) -> AttentionSite:
    """MultiHeadAttention(query, key, value, bias, key_padding_mask, attention_bias, past_key, past_value)."""
    site = AttentionSite("com.microsoft MultiHeadAttention", node, output=node.outputs[0], output_heads_last=True)
    site.is_causal = bool(node.attrs.get("unidirectional", 0))
    _read_hidden_qkv(site, node)
    if _present(node, 3) is not None:
        site.leave_dense("it adds a QKV bias inside the op")
    site.masks.extend(Mask(t) for i in (4, 5) if (t := _present(node, i)) is not None)
    if _present(node, 6) is not None or _present(node, 7) is not None:
        site.leave_dense("it reads a past KV cache (decoding graph, not pre-filling)")
    if any(o.outputs or o.name in graph_outputs for o in node.outputs[1:]):
        site.leave_dense("it returns present KV or QK outputs that are used")
    return site


def _match_group_query_attention(node: gs.Node, graph_outputs: set[str]) -> AttentionSite:
    """GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
    cos_cache, sin_cache, position_ids, attention_bias, head_sink): always causal."""
    site = AttentionSite("com.microsoft GroupQueryAttention", node, output=node.outputs[0], output_heads_last=True)
    site.is_causal = True
    _read_hidden_qkv(site, node)
    if node.attrs.get("do_rotary", 0):
        site.leave_dense("it applies rotary embedding inside the op (its Q/K inputs are before RoPE)")
    if node.attrs.get("local_window_size", -1) != -1:
        site.leave_dense(f"it attends a local window of {node.attrs['local_window_size']} tokens")
    if node.attrs.get("softcap", 0.0):
        site.leave_dense("it applies a logit soft cap")
    if _present(node, 3) is not None or _present(node, 4) is not None:
        site.leave_dense("it reads a past KV cache (decoding graph, not pre-filling)")
    if _present(node, 11) is not None:
        site.leave_dense("it has attention sinks (head_sink)")
    site.lengths.extend(t for i in (5, 6) if (t := _present(node, i)) is not None)
    if (bias := _present(node, 10)) is not None:
        site.masks.append(Mask(bias))
    if any(o.outputs or o.name in graph_outputs for o in node.outputs[1:]):
        site.leave_dense("it returns present KV outputs that are used")
    return site
