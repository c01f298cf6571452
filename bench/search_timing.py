"""Time `minfer-search` on one Llama-3-8B-shaped layer (32 query heads, 8 KV heads, head_dim 128).

Q/K come from the pinned LLM-like family (minfer.patterns.planted.llm_like_qk), generated on the
device; only the search is timed. On the H100:

    python bench/search_timing.py --seq-len 131072 --device cuda

and on a CPU, as a smoke run: python bench/search_timing.py --seq-len 4096 --device cpu
"""

from __future__ import annotations

import time
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import Progress

from minfer.patterns.planted import llm_like_qk
from minfer.patterns.search import SearchSettings, parse_budget, search_layer, summarize

app = typer.Typer(add_completion=False)


@app.command()
def main(
    seq_len: Annotated[int, typer.Option()] = 131072,
    q_heads: Annotated[int, typer.Option()] = 32,
    kv_heads: Annotated[int, typer.Option()] = 8,
    head_dim: Annotated[int, typer.Option()] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="bfloat16, float16, float32")] = "bfloat16",
    budget: Annotated[str | None, typer.Option(help="as minfer-search --budget")] = None,
    sample_blocks: Annotated[int, typer.Option()] = 16,
    cpu_threads: Annotated[int, typer.Option(help="intra-op threads of the search's CPU stages")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    console = Console()
    where = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    q, k = llm_like_qk(q_heads, kv_heads, seq_len, head_dim, seed=seed, device=where, dtype=getattr(torch, dtype))
    settings = SearchSettings(
        budget=parse_budget(budget) if budget else None, sample_blocks=sample_blocks, cpu_threads=cpu_threads
    )
    with Progress(console=console) as progress:
        task = progress.add_task(f"heads ({seq_len} tokens)", total=q_heads)
        if where.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        results = search_layer(q, k, head_dim**-0.5, settings, on_head=lambda h: progress.advance(task))
        if where.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    summary = summarize([results], settings.budget)
    gpu = torch.cuda.get_device_name(where) if where.type == "cuda" else "CPU"
    console.print(
        f"search of one layer ({q_heads} q heads, {kv_heads} KV heads, D={head_dim}, S={seq_len}, {dtype}) "
        f"on {gpu}: {elapsed:.1f} s ({elapsed / q_heads:.2f} s per head, search on {settings.cpu_threads} CPU thread(s))"
    )
    console.print(
        f"searched: {summary.kinds}, mean recall {summary.recall:.4f}, density {summary.density:.4f} "
        f"(est. speed-up {summary.speedup:.2f}x); default 1000/6096: recall {summary.default_recall:.4f}, "
        f"density {summary.default_density:.4f}; heads over budget: {summary.over_budget}"
    )


if __name__ == "__main__":
    app()
