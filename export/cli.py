"""`minfer-export`: rewrite the attention of an ONNX decoder into SparsePrefillAttention nodes."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..patterns.config import DEFAULT_HEAD, PatternConfig, load_config, minference_config_from_json
from ..patterns.spec import HeadPattern, Kind, PatternError
from .errors import ExportError
from .model_io import load_model, needs_external_data, save_model
from .rewrite import rewrite_model
from .summary import print_summary

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)

DEMO_DIR = Path("minfer-demo")
DEMO_DENSE = "tiny-llama.onnx"


def parse_pattern(text: str) -> HeadPattern:
    """`kind` or `kind:field=value,...`, e.g. `a_shape:sink=64,local=1024`, `block_sparse:top_k=16`."""
    kind_text, _, fields_text = text.partition(":")
    kind = Kind.parse(kind_text.strip())
    fields = {}
    for item in filter(None, (f.strip() for f in fields_text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise PatternError(f"--default-pattern: expected field=integer, got {item!r}")
        fields[name.strip()] = int(value)
    if kind == Kind.VERTICAL_SLASH:
        fields = {"last_q": 64, "sink": 30, "local": 100, **fields}
    try:
        return HeadPattern(kind, **fields).validate(0)
    except TypeError:
        raise PatternError(f"--default-pattern: unknown field in {text!r}") from None


def _load_patterns(patterns: Path | None, minference_config: Path | None) -> PatternConfig | None:
    if patterns is not None and minference_config is not None:
        raise ExportError("give either --patterns or --minference-config, not both")
    if patterns is not None:
        return load_config(patterns)
    if minference_config is not None:
        try:
            data = json.loads(minference_config.read_text())
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot read MInference config {minference_config}: {e}") from None
        return minference_config_from_json(data, str(minference_config))
    return None


def _output_path(model: Path, output: Path | None, force: bool) -> Path:
    output = output or model.with_name(model.stem + ".sparse.onnx")
    if output.resolve() == model.resolve():
        raise ExportError(f"the output {output} is the input model; minfer-export never overwrites its input")
    if output.exists() and not force:
        raise ExportError(f"{output} exists; pass --force to replace it")
    return output


def _build_demo(directory: Path, force: bool) -> Path:
    """A tiny random Llama exported to ONNX (dense): the model the README starts from."""
    try:
        from .hf import export_dense, tiny_model
    except ImportError as e:
        raise ExportError(
            f"--demo needs transformers and onnxscript ({e}); pip install transformers onnxscript"
        ) from None

    directory.mkdir(parents=True, exist_ok=True)
    dense = directory / DEMO_DENSE
    if dense.exists() and not force:
        raise ExportError(f"{dense} exists; pass --force to rebuild the demo")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with console.status("building a tiny random Llama and exporting it to ONNX"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes are not the demo user's concern
        exporter_log.setLevel(logging.ERROR)
        try:
            export_dense(tiny_model("llama"), dense)
        finally:
            exporter_log.setLevel(level)
    console.print(f"dense demo model: {dense}")
    return dense


@app.command()
def main(
    model: Annotated[Path | None, typer.Argument(help="ONNX model to rewrite (omit with --demo)")] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="output model (default <model>.sparse.onnx; with --demo, a folder)"),
    ] = None,
    patterns: Annotated[Path | None, typer.Option(help="per-layer, per-head pattern config (our JSON format)")] = None,
    minference_config: Annotated[Path | None, typer.Option(help="a published MInference config (JSON list)")] = None,
    default_pattern: Annotated[
        str | None, typer.Option(help="every head's pattern without a config, e.g. a_shape:sink=64,local=1024")
    ] = None,
    seq_len: Annotated[int, typer.Option(min=1, help="sequence length for the FLOPs estimate")] = 32768,
    verify: Annotated[bool, typer.Option(help="check every rewritten layer numerically on probe inputs")] = True,
    force: Annotated[bool, typer.Option(help="replace an existing output")] = False,
    demo: Annotated[bool, typer.Option(help="build and rewrite a tiny random Llama (no model needed)")] = False,
) -> None:
    """Replace every attention subgraph with one SparsePrefillAttention node carrying its layer's patterns."""
    try:
        config = _load_patterns(patterns, minference_config)
        head = parse_pattern(default_pattern) if default_pattern else DEFAULT_HEAD
        if config is not None and default_pattern:
            raise ExportError("--default-pattern applies only without --patterns/--minference-config")
        if demo == (model is not None):
            raise ExportError("give an ONNX model to rewrite, or --demo to build one (not both)")
        if demo:
            model = _build_demo(output or DEMO_DIR, force)
            output = None
        target = _output_path(model, output, force)
        with console.status(f"loading {model}"):
            loaded = load_model(model)
        if verify and needs_external_data(loaded):
            console.print(
                "note: the model is over 2 GB; checking it on probe inputs writes a temporary copy and runs it "
                "once in ONNX Runtime (--no-verify skips the run; masks are still checked)"
            )
        with console.status("finding attention") as status:
            rewritten, results = rewrite_model(loaded, config, head, verify=verify, report=status.update)
        print_summary(console, results, seq_len)
        if not any(r.rewritten for r in results):
            raise ExportError("no attention layer could be rewritten safely; nothing written")
        with console.status(f"saving {target}"):
            save_model(rewritten, target)
    except (ExportError, PatternError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(f"wrote {target}")
    if demo:
        console.print(f"next: minfer-compare {model} {target}")
