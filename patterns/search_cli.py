"""`minfer-search`: run a model on calibration input and pick every head's pattern and budget offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .capture import capture_layers, load_model, read_calibration
from .search import HeadResult, SearchSettings, Summary, parse_budget, search_layer, summarize, to_config
from .spec import PatternError, validate_shapes

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)
console = Console(stderr=True)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def summary_table(summary: Summary, budget: float | None) -> Table:
    """The searched config next to the embedded default on the same calibration input."""
    title = "pattern search" + (f", budget density <= {budget:.4g}" if budget else "")
    table = Table(title=title + "; default = vertical_slash 1000/6096 on every head")
    for name in ("config", "pattern mix", "mean recall", "density", "est. speed-up"):
        table.add_column(name, justify="left" if name in ("config", "pattern mix") else "right")
    mix = ", ".join(f"{label} {n}" for label, n in summary.kinds.items() if n)
    heads = sum(summary.kinds.values())
    for name, kinds, recall, density in (
        ("searched", mix, summary.recall, summary.density),
        ("default", f"vertical_slash {heads}", summary.default_recall, summary.default_density),
    ):
        table.add_row(name, kinds, f"{recall:.4f}", f"{density:.4f}", f"{1 / density:.2f}x")
    return table


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PatternError(f"--device {name}: no CUDA device is visible to torch")
    return torch.device(name)


@app.command()
def main(
    model: Annotated[Path, typer.Option(help="Hugging Face model directory, or a config.json (random weights)")],
    calibration: Annotated[Path, typer.Option(help="calibration text file, or token ids as a .json list")],
    output: Annotated[Path, typer.Option("-o", "--output", help="pattern config to write (our JSON format)")],
    length: Annotated[int | None, typer.Option(help="use the first N calibration tokens")] = None,
    budget: Annotated[
        str | None, typer.Option(help="target per head: a speed-up like '8x' or a sparsity like '90%' / '0.9'")
    ] = None,
    min_recall: Annotated[
        float, typer.Option(help="attention mass every head must keep (dense if nothing does)")
    ] = 0.95,
    sample_blocks: Annotated[int, typer.Option(help="64-query blocks per head whose recall is measured")] = 16,
    device: Annotated[str, typer.Option(help="auto (CUDA when visible), cpu, cuda, cuda:N")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="model dtype: auto (float32 on CPU, bfloat16 on GPU), float32, ...")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="seed of random weights when --model is a config")] = 0,
    force: Annotated[bool, typer.Option(help="overwrite the output file")] = False,
) -> None:
    """Search each head's pattern (A-shape, vertical-slash, block-sparse, dense) and budget."""
    try:
        if output.exists() and not force:
            raise PatternError(f"{output} exists; pass --force to replace it")
        settings = SearchSettings(
            budget=parse_budget(budget) if budget is not None else None,
            min_recall=min_recall,
            sample_blocks=sample_blocks,
        )
        where = _device(device)
        if dtype != "auto" and dtype not in _DTYPES:
            raise PatternError(f"--dtype {dtype!r}: expected auto or one of {sorted(_DTYPES)}")
        torch_dtype = _DTYPES[dtype] if dtype != "auto" else torch.bfloat16 if where.type == "cuda" else torch.float32
        net, tokenizer = load_model(model, where, torch_dtype, seed)
        cfg = net.config
        num_layers, num_heads = cfg.num_hidden_layers, cfg.num_attention_heads
        num_kv_heads = getattr(cfg, "num_key_value_heads", None) or num_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
        validate_shapes(num_heads, num_kv_heads, head_dim, num_heads)
        ids = read_calibration(calibration, tokenizer, cfg.vocab_size, length)
        if ids.numel() >= 32768 and where.type == "cpu":
            console.print(f"[yellow]searching {ids.numel()} tokens on the CPU is slow; a GPU is used when visible")
        layers = _search(net, ids, settings, num_layers, num_heads)
        summary = summarize(layers, settings.budget)
        meta = {
            "name": model.name if model.is_dir() else model.parent.name,
            "source": f"minfer-search on {calibration.name}",
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "head_dim": head_dim,
            "searched_length": int(ids.numel()),
            "search": {
                "budget_density": settings.budget,
                "min_recall": settings.min_recall,
                "sample_blocks": settings.sample_blocks,
                **summary.to_json(),
            },
        }
        to_config(layers, meta).save(output, overwrite=force)
    except (PatternError, FileExistsError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(summary_table(summary, settings.budget))
    if summary.over_budget:
        console.print(f"{summary.over_budget} head(s) exceed the budget to keep recall >= {settings.min_recall}")
    console.print(f"wrote {output}")


def _search(
    net: torch.nn.Module, ids: torch.Tensor, settings: SearchSettings, num_layers: int, num_heads: int
) -> list[list[HeadResult]]:
    found: dict[int, list[HeadResult]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        layer_task = progress.add_task(f"layers ({ids.numel()} tokens)", total=num_layers)
        head_task = progress.add_task("heads", total=num_heads)

        def on_layer(layer: int, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
            progress.update(head_task, completed=0, description=f"heads of layer {layer}")
            found[layer] = search_layer(
                q, k, scale, settings, on_head=lambda h: progress.update(head_task, completed=h + 1)
            )
            progress.advance(layer_task)

        capture_layers(net, ids, on_layer)
    missing = sorted(set(range(num_layers)) - set(found))
    if missing:
        raise PatternError(
            f"layers {missing} were not captured: their attention does not go through AttentionInterface"
        )
    return [found[i] for i in range(num_layers)]
