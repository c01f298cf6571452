"""Whether two builds of the kernel library compute the same bits: the benchmark layer (bench_kernels.py) launched
through each build's C ABI on the same inputs, outputs compared bit for bit. A kernel change that only moves
work around (another schedule, P through shared memory instead of registers) must not change a single output;
one that does shows here before any tolerance hides it. Prints the share of differing elements and the largest
difference per (S, inputs); exits 1 if any differ.

    python bench/same_output.py --library build/libminfer_kernels.so --library build-var-main/libminfer_kernels.so
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from bench_kernels import IID_SEED, LLM_LIKE_SEED, SparseLayer, layer_patterns, make_inputs

from minfer.runtime import kernels


def main(
    library: Annotated[list[Path], typer.Option(help="a build of libminfer_kernels.so (exactly two)")],
    lengths: Annotated[str, typer.Option(help="comma-separated S")] = "4097,32768,131072",
) -> None:
    if len(library) != 2:
        raise typer.BadParameter(f"give two --library, got {len(library)}")
    builds = [kernels.KernelLibrary(path) for path in library]
    patterns = layer_patterns(None, 16)
    differing = False
    for seq in (int(s) for s in lengths.split(",")):
        for family, seed in (("iid", IID_SEED), ("llm-like", LLM_LIKE_SEED)):
            q, k, v = make_inputs(family, seq, seed)
            outs = []
            for build in builds:
                layer = SparseLayer(build, patterns, q, k, v)
                layer.out.fill_(float("nan"))
                layer()
                torch.cuda.synchronize()
                outs.append(layer.out.clone())
                del layer
            differs = outs[0].view(torch.int16) != outs[1].view(torch.int16)
            same, share = not bool(differs.any()), float(differs.float().mean())
            delta = (outs[0].float() - outs[1].float()).abs()
            print(
                f"S {seq} {family}: {'same bits' if same else 'DIFFERENT'} "
                f"({100 * share:.4f}% of elements differ, largest difference {float(delta.nan_to_num(1e9).max()):.3g}, "
                f"NaN {int(outs[0].isnan().sum())} / {int(outs[1].isnan().sum())})",
                flush=True,
            )
            differing |= not same
            del q, k, v, outs
            torch.cuda.empty_cache()
    raise typer.Exit(1 if differing else 0)


if __name__ == "__main__":
    typer.run(main)
