"""Time to first token of an 8B-shaped Llama: sparse pre-fill (minfer.patch) against dense SDPA.

The model has random bf16 weights, shaped as Llama-3-8B (hidden 4096, 32 layers, 32 heads, 8 KV
heads, intermediate 14336, vocabulary 128256, rope theta 500000). Plain i.i.d. weights make
attention diffuse, which no real long-context model shows and no sparse method can exploit, so the
Q/K projections are given the structure of the pinned "LLM-like" benchmark family
(../shared/bench/llm-like-inputs.md), per layer and per KV head h:

- q/k biases set to a shared direction mu_h (norm 2 * sqrt(128)) and projection weights of std
  1/sqrt(hidden) (so the per-token part has std 1 = sigma * scale): q_i = RoPE_i(mu_h + e_i),
  k_j = RoPE_j(mu_h + e'_j) as in the family; rotary embedding's long-range decay then concentrates
  attention on a local band and a few distances;
- sinks: the prompt starts with 4 copies of a sink token whose embedding r gets, through a rank-1
  term added to W_k, the key 4 * mu_h (+ its own noise), as the family's keys 0..3.

Only the last position is projected to the vocabulary (`logits_to_keep=1`) and no KV cache is kept
(all 32 layers at 1M would need 128 GB): the time is the pre-fill of the prompt to the first token's
logits. Where a dense run would exceed the time at hand (beyond --full-dense-max), it runs on 1 and 2
layers and the per-layer time (t2 - t1) is extrapolated to 32 layers: t1 + 31 * (t2 - t1); the table
says so.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import minfer
from minfer.patterns.config import PatternConfig, load_config
from minfer.runtime.patch import chunk_per_token_modules, restore_forwards

SINK_TOKEN = 0
NUM_SINKS = 4


LLAMA_3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}
SMOKE = {
    **LLAMA_3_8B,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
}


def build_model(shape: dict, device: str, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        **shape,
        rope_theta=500000.0,
        max_position_embeddings=1 << 21,
        attention_bias=True,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    _plant_llm_like_attention(model)
    return model


@torch.no_grad()
def _plant_llm_like_attention(model: LlamaForCausalLM, scale: float = 2.0) -> None:
    config = model.config
    hidden, head_dim = config.hidden_size, config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    device = model.device
    gen = torch.Generator(device=device).manual_seed(1234)
    r = torch.randint(0, 2, (hidden,), generator=gen, device=device).float() * 2 - 1  # rms 1
    model.model.embed_tokens.weight[SINK_TOKEN] = r.to(torch.bfloat16)
    for layer in model.model.layers:
        attn = layer.self_attn
        mu = torch.randn(config.num_key_value_heads, head_dim, generator=gen, device=device)
        mu = mu / mu.norm(dim=-1, keepdim=True) * math.sqrt(head_dim) * scale
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight.normal_(0.0, 1.0 / math.sqrt(hidden), generator=gen)
        attn.q_proj.bias.copy_(mu.repeat_interleave(group, dim=0).reshape(-1))
        attn.k_proj.bias.copy_(mu.reshape(-1))
        sink_key = (NUM_SINKS * mu).reshape(-1, 1) * (r / (r @ r)).reshape(1, -1)
        attn.k_proj.weight.add_(sink_key.to(torch.bfloat16))
        attn.v_proj.bias.zero_()
        attn.o_proj.bias.zero_()


def prompt(length: int, vocab: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (1, length), generator=gen)
    ids[0, :NUM_SINKS] = SINK_TOKEN
    return ids.to(device)


@torch.no_grad()
def time_prefill(model: LlamaForCausalLM, ids: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of a pre-fill to the last position's logits, and peak GPU GiB (0 on a CPU)."""
    cuda = ids.is_cuda
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:  # device time between events, after the previous work has drained
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        if cuda:
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            times.append(time.perf_counter() - t0)
        assert torch.isfinite(logits).all(), "non-finite logits"
    return sorted(times)[len(times) // 2], (torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)


def _truncate(model: LlamaForCausalLM, layers: torch.nn.ModuleList, n: int) -> None:
    """Keep the first n decoder layers (patching covers all of them, the config follows)."""
    model.model.layers = layers[:n]
    model.config.num_hidden_layers = n


def measure(model: LlamaForCausalLM, layers: torch.nn.ModuleList, ids: torch.Tensor, full: bool, repeats: int) -> dict:
    """Time the pre-fill of all layers, or of 1 and 2 layers extrapolated to all (t1 + (L-1) * (t2 - t1)).

    A 1-layer run at the same length comes first as warm-up: it builds cuDNN's plan for the shape
    and grows the allocator's pool, neither of which belongs in the time.
    """
    _truncate(model, layers, 1)
    time_prefill(model, ids, 1)
    if full:
        _truncate(model, layers, len(layers))
        t, peak = time_prefill(model, ids, repeats)
        return {"s": t, "extrapolated": False, "peak_gib": peak}
    t1, peak1 = time_prefill(model, ids, repeats)
    _truncate(model, layers, 2)
    t2, peak2 = time_prefill(model, ids, repeats)
    return {
        "s": t1 + (len(layers) - 1) * (t2 - t1),
        "extrapolated": True,
        "per_layer_s": t2 - t1,
        "peak_gib": max(peak1, peak2),  # no KV cache is kept, so the peak does not grow with the layers
    }


KERNEL_KINDS = (  # first match wins; names as the profiler records the kernels
    ("minfer attention", re.compile(r"minfer::.*attention_kernel")),
    ("minfer index", re.compile(r"minfer::")),
    ("dense attention", re.compile(r"flash|fmha|sdpa|cudnn", re.IGNORECASE)),
    ("GEMM", re.compile(r"gemm|nvjet|xmma|cutlass|sm90_", re.IGNORECASE)),
)


@torch.no_grad()
def profile_layer(model: LlamaForCausalLM, layers: torch.nn.ModuleList, ids: torch.Tensor, top: int = 12) -> dict:
    """Device ms per kind of kernel in a 1-layer pre-fill (after a warm-up), and the largest kernels.

    Says where the time outside attention goes (GEMMs against norms, rotary embedding and copies), which the
    whole-model times cannot.
    """
    _truncate(model, layers, 1)
    time_prefill(model, ids, 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    kernels = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    for event in kernels:
        kind = next((name for name, pattern in KERNEL_KINDS if pattern.search(event.key)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + event.device_time_total / 1e3
    largest = [{"kernel": e.key[:120], "ms": e.device_time_total / 1e3, "calls": e.count} for e in kernels[:top]]
    return {"ms_by_kind": kinds, "total_ms": sum(kinds.values()), "largest": largest}


def run(args: argparse.Namespace) -> list[dict]:
    shape = SMOKE if args.smoke else LLAMA_3_8B
    device = "cpu" if args.smoke else "cuda"
    patterns = load_config(args.patterns)
    if args.smoke:
        patterns = PatternConfig(tuple(layer[: shape["num_attention_heads"]] for layer in patterns.layers))
    model = build_model(shape, device)
    all_layers = model.model.layers
    rows = []
    for length in args.lengths:
        ids = prompt(length, model.config.vocab_size, model.device)
        repeats = 3 if length <= 262144 else 1
        row: dict = {"S": length}
        # sparse: all 32 layers, MInference's per-layer, per-head budgets
        minfer.patch(model, patterns, chunk_size=args.chunk)
        try:
            if args.profile and device == "cuda":
                row["sparse_profile"] = profile_layer(model, all_layers, ids)
                print(json.dumps(row["sparse_profile"], indent=1), flush=True)
            result = measure(model, all_layers, ids, True, repeats)
        finally:
            minfer.unpatch(model)
        row["sparse_s"], row["sparse_peak_gib"] = result["s"], result["peak_gib"]
        print(json.dumps(row), flush=True)
        for backend in args.backends:
            sdpa = {
                "cudnn": torch.nn.attention.SDPBackend.CUDNN_ATTENTION,
                "flash": torch.nn.attention.SDPBackend.FLASH_ATTENTION,
            }[backend]
            chunked = chunk_per_token_modules(model, args.chunk)  # the same memory savings as the sparse run
            try:
                with torch.nn.attention.sdpa_kernel([sdpa]):
                    if args.profile:  # the same layer's non-attention kernels as the sparse profile's
                        row[f"{backend}_profile"] = profile_layer(model, all_layers, ids)
                        print(json.dumps(row[f"{backend}_profile"], indent=1), flush=True)
                    result = measure(model, all_layers, ids, length <= args.full_dense_max, repeats)
                row.update({f"{backend}_{key}": value for key, value in result.items()})
            except RuntimeError as e:  # a backend that cannot run this shape: say so, do not guess
                row[f"{backend}_error"] = str(e).splitlines()[0][:200]
            finally:
                restore_forwards(chunked)
                _truncate(model, all_layers, len(all_layers))
            print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", required=True, help="MInference Llama-3-8B-262K config (or ours)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[131072, 262144, 524288, 1048576])
    parser.add_argument("--backends", nargs="+", default=["cudnn", "flash"], choices=["cudnn", "flash"])
    parser.add_argument(
        "--full-dense-max", type=int, default=262144, help="longest S whose dense run uses all 32 layers"
    )
    parser.add_argument("--chunk", type=int, default=65536, help="sequence chunk of the per-token modules")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile a 1-layer pre-fill on each path: device ms per kind of kernel",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny model on the CPU: checks the script, times nothing real"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    rows = run(args)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
