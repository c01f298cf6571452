"""How much of dense causal work the benchmark layer selects on the LLM-like inputs, per seed, by the PyTorch
reference's index rules (CPU; the CPU generator draws other inputs than the GPU's for the same seed).

The family is pinned but its draw is not: each KV head's mean direction is random, and the diagonals its heads
pick, so the layer's selection (and the speed-up it allows), follow the seed. docs/benchmarks.md compares
these fractions with the GPU's (`bench_kernels.py --llm-seeds`) and with the 15.4% the pinned page reports.
About 75 s per seed at 128K on 2 CPU cores.
Run: python bench/selection_by_seed.py --seq-len 131072 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from bench_kernels import HKV, HQ, SCALE, D, layer_patterns  # bench/, on the path as the script's folder

from minfer.patterns.indices import BLOCK, build_head_index
from minfer.patterns.planted import llm_like_qk


def main(
    seq_len: Annotated[int, typer.Option(help="S")] = 131072,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds of llm_like_qk")] = "0,1,2,3,4",
    layer: Annotated[int, typer.Option(help="layer of the MInference config")] = 16,
) -> None:
    patterns = layer_patterns(None, layer)
    dense_tiles = seq_len * seq_len / (2 * BLOCK * BLOCK)  # the denominator bench_kernels.py uses, per head
    for seed in (int(s) for s in seeds.split(",")):
        start = time.time()
        q, k = llm_like_qk(HQ, HKV, seq_len, D, seed=seed)
        tiles = [build_head_index(q[h], k[h // (HQ // HKV)], patterns[h], SCALE).tiles() for h in range(HQ)]
        per_head = " ".join(f"{t / dense_tiles:.3f}" for t in tiles)
        print(
            f"seed {seed}: {sum(tiles) / (HQ * dense_tiles):.4f} of dense ({time.time() - start:.0f} s); "
            f"per head: {per_head}",
            flush=True,
        )


if __name__ == "__main__":
    typer.run(main)
