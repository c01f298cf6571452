"""`minfer-build` (ONNX -> TensorRT engine) and `minfer-run` (prefill with an engine)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from ..patterns.spec import PatternError
from .engine import BuildOptions, PrefillEngine, build_engine, save_engine
from .errors import InputError, MinferRuntimeError
from .profiles import MAX_SEQ_LEN, DimRange, Profile, ShapeTriple

console = Console(stderr=True)
build_app = typer.Typer(add_completion=False, help="Build a TensorRT engine from minfer-export's ONNX.")
run_app = typer.Typer(add_completion=False, help="Run prefill with a minfer TensorRT engine.")

PluginOption = Annotated[
    Path | None,
    typer.Option("--plugin", help="libminfer_trt_plugins.so (default: $MINFER_TRT_PLUGINS, then ./build)"),
]
TOKEN_ID_LIMIT = 1000  # synthetic token ids stay below every LLM vocabulary size


@contextmanager
def _user_errors():
    """Print the runtime's errors (they say what to do) without a traceback."""
    try:
        yield
    except (MinferRuntimeError, PatternError, OSError) as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None


def parse_profiles(batch: str, seq_lens: Sequence[str]) -> list[Profile]:
    """One profile per --seq-len range, all over the --batch range."""
    batch_range = DimRange.parse(batch, "batch")
    return [Profile(batch_range, DimRange.parse(seq, "sequence length", MAX_SEQ_LEN)) for seq in seq_lens]


@build_app.command()
def build(
    onnx_path: Annotated[Path, typer.Argument(help="the ONNX written by minfer-export", exists=True, dir_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="engine file to write")],
    plugin: PluginOption = None,
    batch: Annotated[str, typer.Option(help="batch range N, MIN:MAX or MIN:OPT:MAX")] = "1",
    seq_len: Annotated[
        list[str] | None,
        typer.Option(help=f"sequence-length range (one profile each, repeatable; max {MAX_SEQ_LEN})"),
    ] = None,
    timing_cache: Annotated[
        Path | None, typer.Option(help="timing cache read and updated (default: OUTPUT.timing-cache)")
    ] = None,
    workspace_gib: Annotated[float | None, typer.Option(help="builder workspace limit in GiB")] = None,
    optimization_level: Annotated[int, typer.Option(min=0, max=5, help="builder optimisation level")] = 3,
    fp16: Annotated[bool, typer.Option(help="TensorRT 10 only: let a float32 ONNX run in float16")] = False,
    bf16: Annotated[bool, typer.Option(help="TensorRT 10 only: let a float32 ONNX run in bfloat16")] = False,
    force: Annotated[bool, typer.Option(help="replace OUTPUT if it exists")] = False,
    progress: Annotated[bool, typer.Option(help="show TensorRT's build phases")] = True,
) -> None:
    """Parse the rewritten ONNX with TensorRT's parser and build an engine with the SparsePrefillAttention plugin."""
    with _user_errors():
        if output.exists() and not force:
            raise MinferRuntimeError(f"{output} exists; pass --force to replace it")
        if fp16 and bf16:
            raise MinferRuntimeError("give at most one of --fp16 and --bf16")
        options = BuildOptions(
            profiles=parse_profiles(batch, seq_len or ["1:8192:131072"]),
            timing_cache=timing_cache or output.with_name(output.name + ".timing-cache"),
            workspace_gib=workspace_gib,
            optimization_level=optimization_level,
            progress=progress,
            weak_precision="float16" if fp16 else "bfloat16" if bf16 else None,
        )
        start = time.perf_counter()
        data = build_engine(onnx_path, options, plugin)
        save_engine(data, output, overwrite=force)
        console.print(f"wrote {output} ({len(data) / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s")


def synthetic_inputs(
    profile: Mapping[str, ShapeTriple], dtypes: Mapping[str, str], batch: int, seq_len: int, seed: int
) -> dict[str, np.ndarray]:
    """Token inputs for a quick run: random ids, an all-ones mask, positions 0..S-1."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, (low, _, _) in profile.items():
        if len(low) != 2 or dtypes[name] not in ("int32", "int64"):
            raise InputError(f"--seq-len makes token inputs only; {name!r} is {dtypes[name]} of rank {len(low)}")
        if "mask" in name:
            values = np.ones((batch, seq_len))
        elif "position" in name:
            values = np.broadcast_to(np.arange(seq_len), (batch, seq_len))
        else:
            values = rng.integers(0, TOKEN_ID_LIMIT, (batch, seq_len))
        inputs[name] = np.ascontiguousarray(values, dtype=dtypes[name])
    return inputs


def load_inputs(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def timed(call: Callable[[], Any], iterations: int) -> tuple[Any, list[float]]:
    times, result = [], None
    for _ in range(iterations):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return result, times


@run_app.command()
def run(
    engine_path: Annotated[Path, typer.Argument(help="engine written by minfer-build", exists=True, dir_okay=False)],
    inputs: Annotated[Path | None, typer.Option(help=".npz with one array per engine input")] = None,
    seq_len: Annotated[int | None, typer.Option(min=1, help="run on synthetic tokens of this length")] = None,
    batch: Annotated[int, typer.Option(min=1, help="batch of the synthetic tokens")] = 1,
    output: Annotated[Path | None, typer.Option(help=".npz to write every output to")] = None,
    force: Annotated[bool, typer.Option(help="replace OUTPUT if it exists")] = False,
    plugin: PluginOption = None,
    iterations: Annotated[int, typer.Option(min=1, help="runs to time (the first warms up)")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the synthetic tokens")] = 0,
) -> None:
    """Run prefill: inputs from an .npz or synthetic tokens; outputs (logits, present keys/values) to an .npz."""
    with _user_errors():
        if (inputs is None) == (seq_len is None):
            raise InputError("give exactly one of --inputs FILE.npz and --seq-len N")
        if output is not None and output.exists() and not force:
            raise MinferRuntimeError(f"{output} exists; pass --force to replace it")
        engine = PrefillEngine.load(engine_path, plugin)
        if inputs is not None:
            feed = load_inputs(inputs)
        else:
            feed = synthetic_inputs(engine.profiles[0], engine.dtypes, batch, seq_len, seed)
        outputs, times = timed(lambda: engine.run(feed), iterations)
        table = Table("output", "shape", "dtype")
        for name, array in outputs.items():
            table.add_row(name, str(array.shape), array.dtype)
        console.print(table)
        steady = times[1:] or times
        console.print(f"prefill: median {statistics.median(steady) * 1e3:.2f} ms over {len(steady)} run(s)")
        if output is not None:
            np.savez(output, **{name: array.to_numpy() for name, array in outputs.items()})
            console.print(f"wrote {output}")
