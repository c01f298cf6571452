"""`minfer-compare dense.onnx sparse.onnx`: run both on the same inputs with polygraphy and judge them.

Both models run in ONNX Runtime (the sparse one through the custom op of `minfer.export.ort_op`);
with `--trt` the sparse model also runs as a TensorRT engine with the minfer plugin (`--plugins`).
polygraphy's Comparator runs them and checks every output against the dense one with its
`SimpleCompareFunc` tolerances; on top, the logits' top-1 agreement must reach `--min-top1`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import onnx_graphsurgeon as gs
import typer
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER
from rich.console import Console
from rich.table import Table

from .errors import ExportError
from .model_io import load_model
from .ort_op import create_session
from .verify import probe_feeds

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)


@dataclass(frozen=True)
class OutputStats:
    """Error of one output of one runner against the dense reference, over all inputs."""

    runner: str
    output: str
    max_abs: float
    mean_abs: float
    max_rel: float
    top1: float | None  # fraction of positions whose argmax agrees (logits only)


def output_stats(reference: np.ndarray, other: np.ndarray, runner: str, name: str, logits: str) -> OutputStats:
    if reference.shape != other.shape:
        raise ExportError(f"output {name}: shapes differ ({reference.shape} vs {other.shape} from {runner})")
    ref, got = reference.astype(np.float64), other.astype(np.float64)
    error = np.abs(ref - got)
    top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1))) if name == logits else None
    return OutputStats(
        runner,
        name,
        float(error.max(initial=0.0)),
        float(error.mean()) if error.size else 0.0,
        float((error / np.maximum(np.abs(ref), 1e-6)).max(initial=0.0)),
        top1,
    )


def _trt_runner(path: Path, plugins: Sequence[Path], batch: int, seq_len: int, fp16: bool):
    """The sparse model as a TensorRT engine with the minfer plugin (polygraphy's TrtRunner)."""
    try:
        from polygraphy.backend.trt import (
            CreateConfig,
            EngineFromNetwork,
            LoadPlugins,
            NetworkFromOnnxPath,
            Profile,
            TrtRunner,
        )

        if importlib.util.find_spec("tensorrt") is None:
            raise ImportError("tensorrt")
    except ImportError:
        raise ExportError("--trt needs TensorRT (pip install tensorrt) and a GPU; run without --trt here") from None
    network = LoadPlugins(plugins=[str(p) for p in plugins], obj=NetworkFromOnnxPath(str(path)))
    profile = Profile().add("input_ids", min=(batch, seq_len), opt=(batch, seq_len), max=(batch, seq_len))
    engine = EngineFromNetwork(network, config=CreateConfig(fp16=fp16, profiles=[profile]))
    return TrtRunner(engine, name="sparse-tensorrt")


def compare_models(
    dense: Path,
    sparse: Path,
    *,
    batch: int,
    seq_len: int,
    inputs: int,
    atol: float,
    rtol: float,
    logits: str,
    trt: bool = False,
    plugins: Sequence[Path] = (),
    fp16: bool = False,
) -> tuple[list[OutputStats], bool]:
    """Per-output statistics against the dense model, and whether polygraphy's tolerances held."""
    dense_model, sparse_model = load_model(dense), load_model(sparse)
    graph = gs.import_onnx(dense_model)
    loader = [probe_feeds(graph, batch, seq_len, seed=i) for i in range(inputs)]
    runners = [
        OnnxrtRunner(lambda: create_session(dense_model), name="dense-onnxrt"),
        OnnxrtRunner(lambda: create_session(sparse_model), name="sparse-onnxrt"),
    ]
    if trt:
        runners.append(_trt_runner(sparse, plugins, batch, seq_len, fp16))
    results = Comparator.run(runners, data_loader=loader)
    if not results:
        raise ExportError("polygraphy ran no inference (see its log above)")
    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
    (_, reference), *others = list(results.items())
    stats = []
    for runner, iterations in others:
        for name in reference[0]:
            ref = np.concatenate([it[name].reshape(-1, it[name].shape[-1]) for it in reference])
            got = np.concatenate([it[name].reshape(-1, it[name].shape[-1]) for it in iterations])
            stats.append(output_stats(ref, got, runner, name, logits))
    return stats, bool(accuracy)


def print_stats(stats: Sequence[OutputStats]) -> None:
    table = Table(title="outputs against dense-onnxrt")
    for column in ("runner", "output", "max |err|", "mean |err|", "max rel err", "top-1 agreement"):
        table.add_column(column)
    for s in stats:
        top1 = f"{100 * s.top1:.2f}%" if s.top1 is not None else "-"
        table.add_row(s.runner, s.output, f"{s.max_abs:.3g}", f"{s.mean_abs:.3g}", f"{s.max_rel:.3g}", top1)
    console.print(table)


@app.command()
def main(
    dense: Annotated[Path, typer.Argument(help="the original (dense) ONNX model")],
    sparse: Annotated[Path, typer.Argument(help="the model minfer-export wrote")],
    seq_len: Annotated[int, typer.Option(min=1, help="tokens per input")] = 256,
    batch: Annotated[int, typer.Option(min=1, help="batch size")] = 1,
    inputs: Annotated[int, typer.Option(min=1, help="number of random inputs")] = 2,
    atol: Annotated[float, typer.Option(help="absolute tolerance per element (polygraphy)")] = 1e-3,
    rtol: Annotated[float, typer.Option(help="relative tolerance per element (polygraphy)")] = 1e-3,
    min_top1: Annotated[float, typer.Option(min=0.0, max=1.0, help="least top-1 agreement of the logits")] = 0.99,
    logits: Annotated[str, typer.Option(help="name of the logits output")] = "logits",
    trt: Annotated[bool, typer.Option(help="also run the sparse model in TensorRT with the minfer plugin")] = False,
    plugins: Annotated[list[Path] | None, typer.Option(help="plugin library for TensorRT (repeatable)")] = None,
    fp16: Annotated[bool, typer.Option(help="build the TensorRT engine with fp16 enabled")] = False,
    verbose: Annotated[bool, typer.Option(help="show polygraphy's log")] = False,
) -> None:
    """Run both models on the same random token ids; exit 1 when an output is beyond the tolerances."""
    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR
    try:
        stats, within = compare_models(
            dense,
            sparse,
            batch=batch,
            seq_len=seq_len,
            inputs=inputs,
            atol=atol,
            rtol=rtol,
            logits=logits,
            trt=trt,
            plugins=plugins or [],
            fp16=fp16,
        )
    except ExportError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    print_stats(stats)
    low_top1 = [s for s in stats if s.top1 is not None and s.top1 < min_top1]
    if not within:
        console.print(f"[red]FAILED[/]: outputs differ beyond atol={atol}, rtol={rtol}")
    for s in low_top1:
        console.print(f"[red]FAILED[/]: {s.runner} top-1 agreement {100 * s.top1:.2f}% < {100 * min_top1:.2f}%")
    if not within or low_top1:
        raise typer.Exit(1)
    console.print(f"[green]PASSED[/]: every output within atol={atol}, rtol={rtol}; top-1 >= {100 * min_top1:.2f}%")
