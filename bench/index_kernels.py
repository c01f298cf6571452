"""Where the index building's time goes: the GPU time of each kernel of one layer's launch (the benchmark layer
of bench_kernels.py), from the torch profiler's kernel records, median over several calls. The index share at
128K LLM-like (6.6% in v17, 3.5% since the index kernels' rework; docs/kernels.md) is the part of the 5x target
the attention kernel does not decide.

    python bench/index_kernels.py --lengths 131072,1048576 --out out/index-kernels.md   # on the GPU
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import torch
import typer
from bench_kernels import LLM_LIKE_SEED, SparseLayer, layer_patterns, make_inputs  # bench/, the script's folder

from minfer.runtime import kernels


def kernel_name(key: str) -> str:
    """The demangled name without `void` and namespaces, parameters kept: the two index files each have a
    `select_kernel` and a `scores_kernel`, told apart by their parameters only."""
    return re.sub(r"^void |minfer::|\(anonymous namespace\)::| ?__grid_constant__| ?\bconst\b", "", key)


def kernel_times(layer: SparseLayer, calls: int) -> dict[str, list[float]]:
    """ms per kernel name for each of `calls` launches (names the same once shortened are summed)."""
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(calls):
        per_call: dict[str, float] = defaultdict(float)
        for name, ms in layer.kernel_ms_by_name().items():
            per_call[kernel_name(name)] += ms
        for name, ms in per_call.items():
            times[name].append(ms)
    return times


def main(
    lengths: Annotated[str, typer.Option(help="comma-separated S")] = "131072,1048576",
    family: Annotated[str, typer.Option(help="llm-like or iid")] = "llm-like",
    calls: Annotated[int, typer.Option(help="profiled launches per length")] = 5,
    library_path: Annotated[Path | None, typer.Option("--library", help="libminfer_kernels.so")] = None,
    config: Annotated[Path | None, typer.Option(help="MInference pattern config")] = None,
    layer: int = 16,
    out: Annotated[Path | None, typer.Option(help="write the table here too")] = None,
) -> None:
    library = kernels.KernelLibrary(library_path) if library_path else kernels.load_library()
    patterns = layer_patterns(config, layer)
    lines = ["| S | kernel | ms (median) | share of the launch |", "|---|---|---|---|"]
    for seq in (int(s) for s in lengths.split(",")):
        q, k, v = make_inputs(family, seq, seed=LLM_LIKE_SEED)
        sparse_layer = SparseLayer(library, patterns, q, k, v)
        sparse_layer()  # warm-up
        times = {name: statistics.median(ms) for name, ms in kernel_times(sparse_layer, calls).items()}
        total = sum(times.values())
        for name, ms in sorted(times.items(), key=lambda item: -item[1]):
            lines.append(f"| {seq // 1024}K | `{name}` | {ms:.3f} | {ms / total:.1%} |")
        del q, k, v, sparse_layer
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
