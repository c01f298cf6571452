"""Where the index building's time goes: the GPU time of each kernel of one layer's launch (the benchmark layer
of bench_kernels.py), from the torch profiler's kernel records, median over several calls. The index share at
128K LLM-like (6.6% in v17, 3.5% since the index kernels' rework; docs/kernels.md) is the part of the 5x target
the attention kernel does not decide. Beside the kernels, per build: the profiled calls' span from the first
kernel's start to the last one's end (less the kernels: the GPU idle between them), those calls timed with CUDA
events (less the span: the wait for the host before the first kernel), the call timed unprofiled with CUDA
events (builds in turns, bench_kernels.balanced_ms), the clocks over each phase, and the tiles its attention
computes. In the eleventh session two builds whose kernels took 50.06 ms each at 128K LLM-like ran 50.5 and
52.5 ms per call in bench_kernels.py.

    python bench/index_kernels.py --lengths 131072,1048576 --out out/index-kernels.md   # on the GPU
    python bench/index_kernels.py --library build/libminfer_kernels.so --library build-var-main/libminfer_kernels.so
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import torch
import typer
from bench_kernels import (
    LLM_LIKE_SEED,
    CallProfile,
    SparseLayer,
    balanced_ms,
    layer_patterns,
    make_inputs,
    print_table,
    turns,
)
from gpu_clocks import ClockSampler

from minfer.runtime import kernels


def kernel_name(key: str) -> str:
    """The demangled name without `void` and namespaces, parameters kept: the two index files each have a
    `select_kernel` and a `scores_kernel`, told apart by their parameters only."""
    return re.sub(r"^void |minfer::|\(anonymous namespace\)::| ?__grid_constant__| ?\bconst\b", "", key)


def profiles(layers: list[SparseLayer], calls: int) -> list[list[CallProfile]]:
    """Per layer, at least `calls` profiled launches, the layers taking turns as in bench_kernels.balanced_ms, each
    launch's kernel names shortened (names the same once shortened are summed within a launch)."""
    runs: list[list[CallProfile]] = [[] for _ in layers]
    for which in turns(len(layers), calls):
        run = layers[which].profile()
        per_kernel: dict[str, float] = defaultdict(float)
        for name, ms in run.kernel_ms.items():
            per_kernel[kernel_name(name)] += ms
        runs[which].append(CallProfile(dict(per_kernel), run.span_ms, run.event_ms))
    return runs


def main(
    lengths: Annotated[str, typer.Option(help="comma-separated S")] = "131072,1048576",
    family: Annotated[str, typer.Option(help="llm-like or iid")] = "llm-like",
    calls: Annotated[int, typer.Option(help="profiled launches per length, and timed calls per build")] = 5,
    library_paths: Annotated[
        list[Path] | None, typer.Option("--library", help="libminfer_kernels.so (repeat to compare builds)")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="MInference pattern config")] = None,
    layer: int = 16,
    out: Annotated[Path | None, typer.Option(help="write the table here too")] = None,
) -> None:
    libraries = [kernels.KernelLibrary(path) for path in library_paths] if library_paths else [kernels.load_library()]
    names = [str(path) for path in library_paths] if library_paths else ["build"]
    patterns = layer_patterns(config, layer)
    clocks = ClockSampler()
    lines = ["| S | library | kernel | ms (median) | share of the launch |", "|---|---|---|---|---|"]
    for seq in (int(s) for s in lengths.split(",")):
        q, k, v = make_inputs(family, seq, seed=LLM_LIKE_SEED)
        layers = [SparseLayer(library, patterns, q, k, v) for library in libraries]
        with clocks.measured() as timed_window:
            call_ms = balanced_ms(*layers, reps=calls)  # its warm-up is each layer's first call
        with clocks.measured() as profiled_window:
            profiled = profiles(layers, calls)
        for name, sparse_layer, whole, runs in zip(names, layers, call_ms, profiled, strict=True):
            by_kernel: dict[str, list[float]] = defaultdict(list)
            for run in runs:
                for kernel, ms in run.kernel_ms.items():
                    by_kernel[kernel].append(ms)
            times = {kernel: statistics.median(ms) for kernel, ms in by_kernel.items()}
            total = sum(times.values())
            span = statistics.median(run.span_ms for run in runs)
            profiled_call = statistics.median(run.event_ms for run in runs)
            row = f"| {seq // 1024}K | {name} |"
            for kernel, ms in sorted(times.items(), key=lambda item: -item[1]):
                lines.append(f"{row} `{kernel}` | {ms:.3f} | {ms / total:.1%} |")
            lines += [
                f"{row} all kernels | {total:.3f} | {sparse_layer.tiles()} tiles |",
                f"{row} first kernel's start to last one's end | {span:.3f} | {span - total:+.3f} ms between kernels |",
                f"{row} the profiled call (CUDA events; {profiled_window.clocks or '-'}) | {profiled_call:.3f} | "
                f"{profiled_call - span:+.3f} ms before the first kernel and after the last |",
                f"{row} the call unprofiled (CUDA events, builds in turns; {timed_window.clocks or '-'}) | "
                f"{whole:.3f} | {whole - profiled_call:+.3f} ms against the profiled call |",
            ]
        del q, k, v, layers
        torch.cuda.empty_cache()
    clocks.close()
    print_table(lines, out)


if __name__ == "__main__":
    typer.run(main)
