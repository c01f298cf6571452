"""Where the index building's time goes: the GPU time of each kernel of one layer's launch (the benchmark layer
of bench_kernels.py), from the torch profiler's kernel records, median over several calls. The index share at
128K LLM-like (6.6% in v17, 3.5% since the index kernels' rework; docs/kernels.md) is the part of the 5x target
the attention kernel does not decide. Beside the kernels, each build's whole call timed with CUDA events (builds
in turns, bench_kernels.median_ms) and what of it no kernel accounts for, and the tiles its attention computes:
in the eleventh session two builds whose kernels took 50.06 ms each at 128K LLM-like ran 50.5 and 52.5 ms per
call in bench_kernels.py.

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
from bench_kernels import LLM_LIKE_SEED, SparseLayer, layer_patterns, make_inputs, median_ms, turns

from minfer.runtime import kernels


def kernel_name(key: str) -> str:
    """The demangled name without `void` and namespaces, parameters kept: the two index files each have a
    `select_kernel` and a `scores_kernel`, told apart by their parameters only."""
    return re.sub(r"^void |minfer::|\(anonymous namespace\)::| ?__grid_constant__| ?\bconst\b", "", key)


def kernel_times(layers: list[SparseLayer], calls: int) -> list[dict[str, list[float]]]:
    """Per layer, ms per kernel name for each of at least `calls` profiled launches, the layers taking turns as in
    bench_kernels.median_ms (names the same once shortened are summed within a launch)."""
    times: list[dict[str, list[float]]] = [defaultdict(list) for _ in layers]
    for which in turns(len(layers), calls):
        per_call: dict[str, float] = defaultdict(float)
        for name, ms in layers[which].kernel_ms_by_name().items():
            per_call[kernel_name(name)] += ms
        for name, ms in per_call.items():
            times[which][name].append(ms)
    return times


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
    lines = ["| S | library | kernel | ms (median) | share of the launch |", "|---|---|---|---|---|"]
    for seq in (int(s) for s in lengths.split(",")):
        q, k, v = make_inputs(family, seq, seed=LLM_LIKE_SEED)
        layers = [SparseLayer(library, patterns, q, k, v) for library in libraries]
        call_ms = median_ms(*layers, reps=calls)  # its warm-up is each layer's first call
        profiled = kernel_times(layers, calls)
        for name, sparse_layer, whole, per_kernel in zip(names, layers, call_ms, profiled, strict=True):
            times = {kernel: statistics.median(ms) for kernel, ms in per_kernel.items()}
            total = sum(times.values())
            for kernel, ms in sorted(times.items(), key=lambda item: -item[1]):
                lines.append(f"| {seq // 1024}K | {name} | `{kernel}` | {ms:.3f} | {ms / total:.1%} |")
            lines.append(f"| {seq // 1024}K | {name} | all kernels | {total:.3f} | {sparse_layer.tiles()} tiles |")
            lines.append(
                f"| {seq // 1024}K | {name} | the call (CUDA events, builds in turns) | {whole:.3f} | "
                f"{whole - total:+.3f} ms outside the kernels |"
            )
        del q, k, v, layers
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
