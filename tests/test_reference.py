"""The PyTorch reference: index-based attention against a brute-force boolean mask built from the
pattern definitions (docs/op-spec.md) by independent code, on fresh random inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from minfer.patterns.indices import (
    HeadIndex,
    block_sparse_select,
    build_head_index,
    chunk_lags,
    dense_tiles,
    pooled_block_scores,
    top_with_forced,
    vertical_slash_counts,
    vertical_slash_scores,
)
from minfer.patterns.reference import attention_over_index, dense_causal_attention, sparse_prefill_attention
from minfer.patterns.spec import BLOCK, HeadPattern, Kind, PatternError

# ---------------------------------------------------------------- brute force, written independently


def _ranked(scores: list[float], forced: int, total: int) -> set[int]:
    n = len(scores)
    forced, total = min(forced, n), min(max(total, forced), n)
    rest = sorted(range(forced, n), key=lambda j: (-scores[j], j))
    return set(range(forced)) | set(rest[: total - forced])


def _brute_vertical_slash(q: torch.Tensor, k: torch.Tensor, p: HeadPattern, scale: float) -> torch.Tensor:
    s = q.shape[0]
    lq = min(p.last_q, s)
    col, diag = [0.0] * s, [0.0] * s
    for r in range(lq):
        i = s - lq + r
        logits = [float(q[i].double() @ k[j].double()) * scale for j in range(i + 1)]
        top = max(logits)
        w = [math.exp(x - top) for x in logits]
        z = sum(w)
        for j in range(i + 1):
            col[j] += w[j] / z
            diag[i - j] += w[j] / z
    columns = _ranked(col, p.sink, p.vertical_size)
    diagonals = _ranked(diag, p.local, p.slash_size)
    # Cover: each connected run of needed lags u (diagonal d needs u in [d-63, d]) is tiled by
    # 64-wide chunks from its top down.
    needed = sorted({u for d in diagonals for u in range(d - BLOCK + 1, d + 1)}, reverse=True)
    held: set[int] = set()
    top = None
    for u in needed:
        if top is None or u < top - BLOCK + 1:  # not yet held: a chunk whose top is u
            top = u
            held.update(range(u - BLOCK + 1, u + 1))
    mask = torch.zeros(s, s, dtype=torch.bool)
    for i in range(s):
        start = (i // BLOCK) * BLOCK
        for j in range(i + 1):
            mask[i, j] = j in columns or (start - j) in held
    return mask


def _brute_block_sparse(q: torch.Tensor, k: torch.Tensor, top_k: int) -> torch.Tensor:
    s = q.shape[0]
    nb = -(-s // BLOCK)
    qp = [q[b * BLOCK : (b + 1) * BLOCK].double().mean(0) for b in range(nb)]
    kp = [k[b * BLOCK : (b + 1) * BLOCK].double().mean(0) for b in range(nb)]
    mask = torch.zeros(s, s, dtype=torch.bool)
    for m in range(nb):
        scores = [float(qp[m] @ kp[n]) for n in range(m)]
        keep = {m} | set(sorted(range(m), key=lambda n: (-scores[n], n))[: min(top_k, m + 1) - 1])
        for i in range(m * BLOCK, min(m * BLOCK + BLOCK, s)):
            for j in range(i + 1):
                mask[i, j] = j // BLOCK in keep
    return mask


def brute_mask(q: torch.Tensor, k: torch.Tensor, p: HeadPattern, scale: float) -> torch.Tensor:
    s = q.shape[0]
    i = torch.arange(s)[:, None]
    j = torch.arange(s)[None, :]
    causal = j <= i
    if p.kind == Kind.DENSE:
        return causal
    if p.kind == Kind.A_SHAPE:
        return causal & ((j < p.sink) | (i - j < p.local))
    if p.kind == Kind.BLOCK_SPARSE:
        return _brute_block_sparse(q, k, p.top_k)
    return _brute_vertical_slash(q, k, p, scale)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    logits = (q.double() @ k.double().T * scale).masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1) @ v.double()


# ---------------------------------------------------------------- tests

PATTERNS = [
    HeadPattern.dense(),
    HeadPattern.a_shape(sink=3, local=70),
    HeadPattern.a_shape(sink=0, local=1),
    HeadPattern.vertical_slash(12, 9, last_q=64, sink=2, local=5),
    HeadPattern.vertical_slash(40, 70, last_q=17, sink=30, local=100),
    HeadPattern.block_sparse(top_k=2),
    HeadPattern.block_sparse(top_k=1),
    HeadPattern.vertical_slash(0, 0, last_q=64, sink=0, local=1),
]


@pytest.mark.parametrize("seq_len", [1, 5, 63, 64, 65, 130, 257])
@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: f"{p.kind.label}-{'-'.join(map(str, p.params().values()))}")
def test_index_attention_equals_brute_force_mask(seq_len: int, pattern: HeadPattern) -> None:
    torch.manual_seed(seq_len * 31 + len(pattern.params()))
    q, k, v = (torch.randn(seq_len, 64, dtype=torch.float64) for _ in range(3))
    scale = 0.3
    index = build_head_index(q, k, pattern, scale)
    mask = brute_mask(q, k, pattern, scale)
    got = attention_over_index(q, k, v, index, scale)
    torch.testing.assert_close(got, masked_attention(q, k, v, mask, scale), rtol=1e-10, atol=1e-12)
    # the index's own description of the selected set is that mask, each key once
    for m in range(index.num_blocks):
        keys = index.block_keys(m)
        assert keys.unique().numel() == keys.numel(), "a key is counted twice"
        starts = index.chunk_starts(m)
        assert torch.equal(starts, starts.sort().values), "chunk starts must ascend (the kernels' order)"
        rows = torch.arange(m * BLOCK, min(m * BLOCK + BLOCK, seq_len))
        selected = torch.zeros(rows.numel(), seq_len, dtype=torch.bool)
        allowed = index.token_rule(rows[:, None], keys[None, :])
        in_range = keys.clamp(0, seq_len - 1)
        selected[
            torch.arange(rows.numel())[:, None].expand_as(allowed)[allowed], in_range.expand_as(allowed)[allowed]
        ] = True
        assert torch.equal(selected, mask[rows])


@pytest.mark.parametrize(("hq", "hkv"), [(2, 2), (4, 1), (8, 1), (8, 2)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gqa_layer_matches_per_head_brute_force(hq: int, hkv: int, head_dim: int) -> None:
    torch.manual_seed(hq * 100 + hkv + head_dim)
    seq_len, scale = 150, head_dim**-0.5
    q = torch.randn(2, hq, seq_len, head_dim, dtype=torch.float64)
    k, v = (torch.randn(2, hkv, seq_len, head_dim, dtype=torch.float64) for _ in range(2))
    patterns = [PATTERNS[h % len(PATTERNS)] for h in range(hq)]
    out = sparse_prefill_attention(q, k, v, patterns, scale)
    group = hq // hkv
    for b in range(2):
        for h in range(hq):
            kh, vh = k[b, h // group], v[b, h // group]
            want = masked_attention(q[b, h], kh, vh, brute_mask(q[b, h], kh, patterns[h], scale), scale)
            torch.testing.assert_close(out[b, h], want, rtol=1e-10, atol=1e-12)


FULL_BUDGET = [
    HeadPattern.a_shape(sink=0, local=10_000),
    HeadPattern.a_shape(sink=10_000, local=1),
    HeadPattern.vertical_slash(10_000, 0),
    HeadPattern.vertical_slash(0, 10_000),
    HeadPattern.block_sparse(top_k=10_000),
    HeadPattern.dense(),
    HeadPattern.vertical_slash(1000, 6096),  # the embedded default, clipped to a short input
    HeadPattern.block_sparse(top_k=5),  # 5 blocks cover S <= 320
]


@pytest.mark.parametrize("seq_len", [1, 47, 200, 320])
def test_full_budget_equals_dense_to_float32_rounding(seq_len: int) -> None:
    torch.manual_seed(seq_len)
    hq, hkv = len(FULL_BUDGET), 2
    q = torch.randn(1, hq, seq_len, 64)
    k, v = (torch.randn(1, hkv, seq_len, 64) for _ in range(2))
    got = sparse_prefill_attention(q, k, v, FULL_BUDGET, 0.125)
    torch.testing.assert_close(got, dense_causal_attention(q, k, v, 0.125), rtol=1e-5, atol=1e-6)


def test_dense_baseline_matches_torch_sdpa() -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 8, 100, 64, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 100, 64, dtype=torch.float64) for _ in range(2))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
    torch.testing.assert_close(dense_causal_attention(q, k, v, 0.2, chunk=33), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    q = torch.randn(1, 4, 90, 128).to(dtype)
    k, v = (torch.randn(1, 1, 90, 128).to(dtype) for _ in range(2))
    patterns = [
        HeadPattern.vertical_slash(8, 8, sink=1, local=3),
        HeadPattern.a_shape(2, 20),
        HeadPattern.block_sparse(1),
        HeadPattern.dense(),
    ]
    got = sparse_prefill_attention(q, k, v, patterns, 128**-0.5)
    assert got.dtype == dtype
    want = sparse_prefill_attention(q.double(), k.double(), v.double(), patterns, 128**-0.5)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_extreme_logits_and_fully_masked_rows_give_no_nan() -> None:
    torch.manual_seed(2)
    q = torch.randn(1, 3, 140, 64) * 1e4
    k, v = torch.randn(1, 1, 140, 64) * 1e4, torch.randn(1, 1, 140, 64)
    patterns = [
        HeadPattern.vertical_slash(5, 5, sink=1, local=1),
        HeadPattern.block_sparse(1),
        HeadPattern.a_shape(1, 1),
    ]
    assert torch.isfinite(sparse_prefill_attention(q, k, v, patterns, 1.0)).all()
    # An index with no key for any row (impossible through the validator) gives zeros, not NaN.
    empty = HeadIndex(Kind.A_SHAPE, 140, sink=0, local=0)
    out = attention_over_index(q[0, 0], k[0, 0], v[0, 0], empty, 1.0)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("seq_len", [1, 5, 63, 64, 65, 130, 257])
def test_vertical_slash_counts_are_what_the_index_keeps(seq_len: int) -> None:
    """The cost model and the search size vertical-slash heads with this rule, without building an index."""
    q, k = torch.randn(seq_len, 64, dtype=torch.float64), torch.randn(seq_len, 64, dtype=torch.float64)
    for pattern in PATTERNS:
        if pattern.kind == Kind.VERTICAL_SLASH:
            index = build_head_index(q, k, pattern, 0.125)
            assert vertical_slash_counts(pattern, seq_len) == (index.columns.numel(), index.diagonals.numel())


def test_stages_follow_the_spec_on_a_hand_made_example() -> None:
    scores = torch.tensor([0.0, 5.0, 1.0, 5.0, 3.0, 9.0])
    assert top_with_forced(scores, forced=1, total=3).tolist() == [0, 1, 5]  # tie 1 vs 3 -> lower index
    assert top_with_forced(scores, forced=4, total=2).tolist() == [0, 1, 2, 3]  # forced win over budget
    assert top_with_forced(scores, forced=0, total=100).tolist() == [0, 1, 2, 3, 4, 5]
    # diagonals 0..99 (MInference's forced local band): three adjacent chunks
    assert chunk_lags(torch.arange(100)).tolist() == [99, 35, -29]
    assert chunk_lags(torch.tensor([0, 500, 1000, 1010])).tolist() == [1010, 946, 500, 0]
    # ragged pooled scores average only real rows
    q = torch.ones(70, 4)
    q[64:] = 2.0
    k = torch.ones(70, 4)
    assert pooled_block_scores(q, k)[1, 0].item() == pytest.approx(8.0)
    blocks = block_sparse_select(torch.tensor([[0.0, 0, 0], [1, 0, 0], [3, 7, 0]]), top_k=2)
    assert blocks.tolist() == [[0, -1], [0, 1], [1, 2]]


def test_vertical_slash_scores_sum_to_number_of_queries() -> None:
    torch.manual_seed(3)
    q, k = torch.randn(100, 64), torch.randn(100, 64)
    column, diagonal = vertical_slash_scores(q, k, last_q=64, scale=0.125)
    assert column.sum().item() == pytest.approx(64, rel=1e-5)
    assert diagonal.sum().item() == pytest.approx(64, rel=1e-5)
    assert (diagonal[:1] > 0).all()


def test_tiles_count_kernel_work() -> None:
    assert dense_tiles(1) == 1 and dense_tiles(65) == 3 and dense_tiles(640) == 55
    torch.manual_seed(4)
    q, k = torch.randn(640, 64), torch.randn(640, 64)
    assert build_head_index(q, k, HeadPattern.dense(), 0.1).tiles() == dense_tiles(640)
    assert build_head_index(q, k, HeadPattern.block_sparse(3), 0.1).tiles() == 1 + 2 + 3 * 8
    a_shape = build_head_index(q, k, HeadPattern.a_shape(sink=64, local=64), 0.1)
    assert a_shape.tiles() == 1 + 2 + 3 * 8  # sink block, previous block, own block


def test_invalid_inputs_are_named() -> None:
    q = torch.randn(1, 4, 10, 64)
    k = torch.randn(1, 3, 10, 64)
    with pytest.raises(PatternError, match=r"query heads \(4\) must be a positive multiple of KV heads \(3\)"):
        sparse_prefill_attention(q, k, k, [HeadPattern.dense()] * 4, 1.0)
    with pytest.raises(PatternError, match="head_dim 32 is not supported"):
        x = torch.randn(1, 1, 10, 32)
        sparse_prefill_attention(x, x, x, [HeadPattern.dense()], 1.0)
    with pytest.raises(PatternError, match=r"dtype torch\.int32 is not supported"):
        x = torch.zeros(1, 1, 10, 64, dtype=torch.int32)
        sparse_prefill_attention(x, x, x, [HeadPattern.dense()], 1.0)
    with pytest.raises(PatternError, match="pattern has 2 heads but Q has 1 query heads"):
        x = torch.randn(1, 1, 10, 64)
        sparse_prefill_attention(x, x, x, [HeadPattern.dense()] * 2, 1.0)


_LONG_RUN = """
import json, resource, time, torch
from minfer.patterns.reference import sparse_prefill_attention
from minfer.patterns.spec import HeadPattern
torch.manual_seed(0)
s = 32768
q = torch.randn(1, 2, s, 64, dtype=torch.bfloat16)
k, v = (torch.randn(1, 1, s, 64, dtype=torch.bfloat16) for _ in range(2))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = sparse_prefill_attention(q, k, v, [HeadPattern.vertical_slash(1000, 800), HeadPattern.a_shape(64, 1024)], 0.125)
print(json.dumps({"grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
                  "seconds": time.perf_counter() - t, "finite": bool(torch.isfinite(out).all())}))
"""


def test_reference_runs_at_32k_tokens_in_bounded_memory() -> None:
    """A dense 32K x 32K float32 score matrix alone is 4 GiB; the reference must stay far below."""
    result = json.loads(
        subprocess.run([sys.executable, "-c", _LONG_RUN], capture_output=True, text=True, check=True).stdout
    )
    assert result["finite"]
    assert result["grew_kib"] < 1_000_000, result
