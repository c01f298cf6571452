"""`minfer.patch`: Hugging Face decoders pre-fill through the sparse op and decode densely."""

from __future__ import annotations

import pytest
import torch

import minfer
from minfer.export import hf
from minfer.patterns.config import PatternConfig, default_config
from minfer.patterns.reference import sparse_prefill_attention
from minfer.patterns.spec import HeadPattern, PatternError
from minfer.runtime import patch as patch_module

SPARSE_LAYER = (
    HeadPattern.vertical_slash(8, 8, sink=2, local=4),
    HeadPattern.a_shape(sink=2, local=16),
    HeadPattern.block_sparse(top_k=1),
    HeadPattern.dense(),
)


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    return hf.tiny_model(arch, num_heads=4, num_kv_heads=2, head_dim=64, hidden_size=256, seed=seed)


@pytest.mark.parametrize("arch", hf.TINY_FAMILIES)
@torch.no_grad()
def test_dense_config_keeps_logits(arch: str) -> None:
    model = tiny_model(arch)
    ids = torch.randint(0, 256, (2, 150))
    want = model(input_ids=ids).logits
    dense = PatternConfig(((HeadPattern.dense(),) * 4,) * 2)
    minfer.patch(model, dense, chunk_size=32)  # chunked MLP/norms too
    assert model.config._attn_implementation == "minfer"
    torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    minfer.unpatch(model)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=0, atol=0)


@pytest.mark.parametrize("arch", hf.TINY_FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_norms_run_fused_with_the_modules_arithmetic(
    arch: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    fused = torch.nn.functional.rms_norm
    monkeypatch.setattr(torch.nn.functional, "rms_norm", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    model = tiny_model(arch).to(dtype)
    norms = [m for name, m in model.named_modules() if name.endswith("norm")]
    assert norms and all(isinstance(m, patch_module.FUSABLE_NORMS) for m in norms), "a family's RMSNorm is not fused"
    for norm in norms:
        norm.weight.normal_()
    x = torch.randn(3, 70, model.config.hidden_size, dtype=dtype) * 4
    want = [norm(x) for norm in norms]
    changed = patch_module.chunk_per_token_modules(model, chunk=32)
    assert all(norm in changed for norm in norms)
    calls.clear()
    for norm, expected in zip(norms, want, strict=True):
        torch.testing.assert_close(norm(x), expected, rtol=0, atol=0)
    assert len(calls) == 3 * len(norms), "70 positions in chunks of 32: three fused calls per norm"
    patch_module.restore_forwards(changed)


@torch.no_grad()
def test_default_patterns_clip_to_dense_on_short_prompts_and_generate_the_same() -> None:
    model = tiny_model("llama", seed=1)
    ids = torch.randint(0, 256, (1, 90))
    want = model.generate(ids, max_new_tokens=6, do_sample=False)
    minfer.patch(model)  # embedded default: (1000, 6096) covers every key below 1000 tokens
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), want)


@torch.no_grad()
def test_sparse_config_runs_the_op_on_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = patch_module.call_with_patterns

    def record(q, k, v, patterns, scale):
        out = original(q, k, v, patterns, scale)
        calls.append((q, k, v, patterns, scale, out))
        return out

    monkeypatch.setattr(patch_module, "call_with_patterns", record)
    model = tiny_model("llama", seed=2)
    ids = torch.randint(0, 256, (1, 200))
    dense_logits = model(input_ids=ids).logits
    minfer.patch(model, PatternConfig((SPARSE_LAYER, SPARSE_LAYER[::-1])))
    sparse_logits = model(input_ids=ids).logits
    assert len(calls) == 2
    for (q, k, v, patterns, scale, out), layer in zip(calls, (SPARSE_LAYER, SPARSE_LAYER[::-1]), strict=True):
        assert patterns == layer and q.shape == (1, 4, 200, 64) and k.shape == (1, 2, 200, 64)
        assert scale == pytest.approx(64**-0.5)
        torch.testing.assert_close(out, sparse_prefill_attention(q, k, v, layer, scale))
    assert not torch.allclose(sparse_logits, dense_logits, atol=1e-3), "sparse patterns must change the result"


def test_config_mismatches_are_named() -> None:
    model = tiny_model("llama")
    with pytest.raises(PatternError, match="pattern config has 3 layers but the model has 2 attention layers"):
        minfer.patch(model, default_config(3, 4))
    with pytest.raises(PatternError, match="layer 0: pattern config has 8 heads but the model has 4 query heads"):
        minfer.patch(model, default_config(2, 8))
    minfer.patch(model)
    with pytest.raises(RuntimeError, match="already patched"):
        minfer.patch(model)
    minfer.unpatch(model)
    with pytest.raises(RuntimeError, match="not patched"):
        minfer.unpatch(model)


@torch.no_grad()
def test_padded_prefill_is_refused_not_silently_dense() -> None:
    model = minfer.patch(tiny_model("llama"), PatternConfig((SPARSE_LAYER,) * 2))
    ids = torch.randint(0, 256, (2, 70))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with pytest.raises(PatternError, match="unpadded causal prompts"):
        model(input_ids=ids, attention_mask=mask)


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_sparse_prefill_matches_reference_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the GPU the op runs the CUDA kernels; each layer's output must match the CPU reference."""
    calls = []
    original = patch_module.call_with_patterns

    def record(q, k, v, patterns, scale):
        out = original(q, k, v, patterns, scale)
        calls.append((q.cpu(), k.cpu(), v.cpu(), patterns, scale, out.cpu()))
        return out

    monkeypatch.setattr(patch_module, "call_with_patterns", record)
    model = tiny_model("llama", seed=3).to("cuda", torch.bfloat16)
    minfer.patch(model, PatternConfig((SPARSE_LAYER, SPARSE_LAYER[::-1])), chunk_size=256)
    logits = model(input_ids=torch.randint(0, 256, (1, 1000), device="cuda"), logits_to_keep=1).logits
    assert logits.shape == (1, 1, 256) and torch.isfinite(logits).all()
    assert len(calls) == 2
    for q, k, v, patterns, scale, out in calls:
        want = sparse_prefill_attention(q.float(), k.float(), v.float(), patterns, scale)
        err = (out.float() - want).norm() / want.norm()
        assert err < 1e-2, err
