"""Each timed call of builds (and dense SDPA) taking turns, grouped by the call that ran just before it. A build
whose kernels the profiler times alike with another's (bench/index_kernels.py) ran 2 ms slower than it at 128K
LLM-like in bench_kernels.py with cuDNN in the turns, and alike without it (eleventh and twelfth sessions of
2026-12-02): which predecessor, if any, the slowness follows. (It followed the place in the turns, not the build:
the second build ran within two calls of cuDNN more often; bench_kernels.build_cycle.)

    python bench/turn_times.py --library build/libminfer_kernels.so --library build-var-main/libminfer_kernels.so
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import torch
import typer
from bench_kernels import (
    LLM_LIKE_SEED,
    SparseLayer,
    dense_call,
    layer_patterns,
    make_inputs,
    print_table,
    timed_in_turns,
)
from gpu_clocks import ClockSampler

from minfer.runtime import kernels


def main(
    library_paths: Annotated[list[Path], typer.Option("--library", help="libminfer_kernels.so (repeat)")],
    lengths: Annotated[str, typer.Option(help="comma-separated S")] = "131072",
    family: Annotated[str, typer.Option(help="llm-like or iid")] = "llm-like",
    dense: Annotated[bool, typer.Option(help="cuDNN SDPA in the turns too")] = True,
    reps: Annotated[int, typer.Option(help="timed calls per build, rounded up to whole cycles")] = 12,
    config: Annotated[Path | None, typer.Option(help="MInference pattern config")] = None,
    layer: int = 16,
    out: Annotated[Path | None, typer.Option(help="write the table here too")] = None,
) -> None:
    patterns = layer_patterns(config, layer)
    names = [str(path) for path in library_paths] + (["cuDNN"] if dense else [])
    clocks = ClockSampler()
    lines = ["| S | call | after | calls | ms (median) | min | max |", "|---|---|---|---|---|---|---|"]
    for seq in (int(s) for s in lengths.split(",")):
        q, k, v = make_inputs(family, seq, seed=LLM_LIKE_SEED)
        calls = [SparseLayer(kernels.KernelLibrary(path), patterns, q, k, v) for path in library_paths]
        calls += [dense_call(q, k, v, "cudnn")] if dense else []
        with clocks.measured() as window:
            timed = timed_in_turns(*calls, reps=reps, builds=len(library_paths))
        groups: dict[tuple[int, int], list[float]] = defaultdict(list)  # before -1: after any call
        for which, before, ms in timed:
            groups[which, before].append(ms)
            groups[which, -1].append(ms)
        for (which, before), ms in sorted(groups.items()):
            after = "any" if before < 0 else names[before]
            lines.append(
                f"| {seq // 1024}K | {names[which]} | {after} | {len(ms)} | {statistics.median(ms):.3f} | "
                f"{min(ms):.3f} | {max(ms):.3f} |"
            )
        print(f"{seq // 1024}K in order:", ", ".join(f"{which}:{ms:.2f}" for which, _, ms in timed))
        lines.append(f"| {seq // 1024}K | clocks over the turns | {window.clocks or '-'} | | | | |")
        del q, k, v, calls
        torch.cuda.empty_cache()
    clocks.close()
    print_table(lines, out)


if __name__ == "__main__":
    typer.run(main)
