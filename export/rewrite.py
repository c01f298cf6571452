"""Replacing each attention subgraph with one `minfer::SparsePrefillAttention` node."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..patterns.config import DEFAULT_HEAD, PatternConfig, default_config
from ..patterns.spec import DOMAIN, OP_TYPE, OPSET_VERSION, HeadPattern, LayerPattern, PatternError, to_attributes
from ..patterns.spec import validate_shapes as validate_head_shapes
from .errors import ExportError
from .match import AttentionSite, find_attention
from .model_io import needs_external_data
from .verify import SiteShape, check_outputs, mask_problems, static_shape


@dataclass(frozen=True)
class LayerResult:
    """One attention subgraph of the input: rewritten with `heads`, or left dense for `reason`."""

    index: int
    site: str
    form: str
    shape: SiteShape | None
    heads: LayerPattern | None
    reason: str | None = None

    @property
    def rewritten(self) -> bool:
        return self.reason is None


def rewrite_model(
    model: onnx.ModelProto,
    config: PatternConfig | None = None,
    default_head: HeadPattern = DEFAULT_HEAD,
    verify: bool = True,
    report: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, list[LayerResult]]:
    """The rewritten model and one result per attention subgraph, in graph order.

    Layers are matched to `config` layers in graph order (without a config every head gets
    `default_head`). Sites that are not plain causal self-attention stay dense and are reported.
    `verify` runs the model once on probe inputs to check every rewritten site numerically.
    `report` receives a line per step (progress for big graphs).
    """
    report = report or _quiet
    if not needs_external_data(model):
        report("inferring shapes")
        model = onnx.shape_inference.infer_shapes(model)
    report("importing the graph")
    graph = gs.import_onnx(model)
    report("finding attention")
    sites = find_attention(graph)
    if not sites:
        raise ExportError("found no attention subgraph in the model (nothing to rewrite)")
    if config is not None and config.num_layers != len(sites):
        raise ExportError(
            f"the pattern config has {config.num_layers} layers but the model has {len(sites)} attention "
            "subgraphs (layers are matched in graph order)"
        )
    report(f"checking the masks of {len(sites)} attention subgraphs")
    _record(sites, mask_problems(graph, sites))
    candidates = [s for s in sites if s.problem is None]
    shapes = dict.fromkeys(map(id, sites))
    if candidates:
        if verify:
            report(f"checking {len(candidates)} attention outputs on probe inputs (runs the model once)")
        found = check_outputs(graph, candidates) if verify else [static_shape(s) for s in candidates]
        for site, shape in zip(candidates, found, strict=True):
            if isinstance(shape, str):
                site.leave_dense(shape)
            else:
                shapes[id(site)] = shape
    results = []
    for index, site in enumerate(sites):
        report(f"rewriting layer {index + 1}/{len(sites)}")
        shape = shapes[id(site)]
        if site.problem is not None:
            results.append(LayerResult(index, site.name, site.form, shape, None, site.problem))
            continue
        heads = _layer_heads(config, index, shape, default_head)
        _replace(graph, site, heads, index)
        results.append(LayerResult(index, site.name, site.form, shape, heads))
    report("removing the dense attention nodes")
    graph.cleanup().toposort()
    return _export(graph, model), results


def _record(sites: Iterable[AttentionSite], problems: Iterable[str | None]) -> None:
    for site, problem in zip(sites, problems, strict=True):
        if problem is not None:
            site.leave_dense(problem)


def _layer_heads(config: PatternConfig | None, index: int, shape: SiteShape, default_head: HeadPattern) -> LayerPattern:
    heads = config.layers[index] if config is not None else default_config(1, shape.num_q_heads, default_head).layers[0]
    try:
        validate_head_shapes(shape.num_q_heads, shape.num_kv_heads, shape.head_dim, len(heads))
    except PatternError as e:
        raise ExportError(f"layer {index}: {e}") from None
    return heads


def _replace(graph: gs.Graph, site: AttentionSite, heads: LayerPattern, index: int) -> None:
    """Detach the site's output from the dense subgraph and produce it with the sparse node."""
    name = f"minfer_sparse_prefill_attention_{index}"
    output = site.output
    output.inputs.clear()
    result = gs.Variable(f"{name}_output", dtype=output.dtype) if site.output_heads_last else output
    graph.nodes.append(
        gs.Node(
            op=OP_TYPE,
            name=name,
            domain=DOMAIN,
            attrs=to_attributes(heads, site.scale),
            inputs=[site.q, site.k, site.v],
            outputs=[result],
        )
    )
    if site.output_heads_last:  # [B, Hq, S, D] -> [B, S, Hq * D], the layout the contrib ops return
        heads_last = gs.Variable(f"{name}_heads_last", dtype=output.dtype)
        graph.nodes.append(gs.Node("Transpose", f"{name}_transpose", {"perm": [0, 2, 1, 3]}, [result], [heads_last]))
        shape = gs.Constant(f"{name}_hidden_shape", np.array([0, 0, -1], dtype=np.int64))
        graph.nodes.append(gs.Node("Reshape", f"{name}_reshape", inputs=[heads_last, shape], outputs=[output]))


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    model = gs.export_onnx(graph)
    domains = {o.domain for o in model.opset_import}
    for opset in original.opset_import:
        if opset.domain not in domains:
            model.opset_import.append(opset)
    if DOMAIN not in {o.domain for o in model.opset_import}:
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION))
    model.ir_version = max(model.ir_version, original.ir_version)
    model.producer_name = "minfer-export"
    return model


def _quiet(message: str) -> None:
    """The default progress report: nothing."""
