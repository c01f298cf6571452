"""The CUDA kernels against the contract, through the C ABI exactly as the TensorRT plugin calls it.

Per case: fresh random inputs, the output and the workspace poisoned before the launch, then
1. scores: the GPU's column/diagonal/pooled-block scores against the reference's, within tolerance;
2. indices, exactly: the GPU's selected columns, diagonals, lags, held bitmap and blocks against the
   reference's selection functions fed the GPU's own scores (near-ties may flip against the
   reference's own float sums, never against its selection rules);
3. tiles, exactly: the attention kernel's own tile generator (minfer_debug_tiles) against
   HeadIndex.chunk_starts / block_columns;
4. output: within 1e-2 (bf16) / 5e-3 (fp16), |err| <= tol * (1 + |ref|), of a float32 reference over
   the same indices (every block up to 4097 tokens, sampled blocks beyond), no NaN anywhere.
MINFER_EXPECT_PTX=80 asserts the loaded attention kernel came from compute_80 PTX (the sm_80 path).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from minfer.patterns.indices import (
    HeadIndex,
    block_sparse_select,
    chunk_lags,
    held_lags,
    num_blocks,
    pooled_block_scores,
    top_with_forced,
    vertical_slash_counts,
    vertical_slash_scores,
)
from minfer.patterns.reference import attention_over_index
from minfer.patterns.spec import HeadPattern, Kind
from minfer.runtime import kernels

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3}
FULL_CHECK_MAX_S = 4097
SAMPLED_BLOCKS = 24


@pytest.fixture(scope="module")
def library() -> kernels.KernelLibrary:
    try:
        lib = kernels.load_library()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    expected_ptx = os.environ.get("MINFER_EXPECT_PTX")
    if expected_ptx:
        assert lib.kernel_versions()[0] == int(expected_ptx), lib.kernel_versions()
    return lib


def random_layer(rng: random.Random, heads: int, seq_len: int) -> list[HeadPattern]:
    """Every kind in one layer, budgets from tiny to larger than S."""
    kinds = [Kind.VERTICAL_SLASH, Kind.BLOCK_SPARSE, Kind.A_SHAPE, Kind.DENSE]
    layer = []
    for h in range(heads):
        kind = kinds[h % 4] if h < 4 else rng.choice(kinds[:3])
        if kind == Kind.VERTICAL_SLASH:
            layer.append(
                HeadPattern.vertical_slash(
                    rng.choice((0, 5, 100, 1000, 3500)),
                    rng.choice((0, 30, 200, 800, 6096)),
                    last_q=rng.choice((1, 17, 64, 64, 200, 256)),
                    sink=rng.choice((0, 4, 30)),
                    local=rng.choice((1, 64, 100, 700)),
                )
            )
        elif kind == Kind.BLOCK_SPARSE:
            layer.append(HeadPattern.block_sparse(rng.choice((1, 2, 8, 40, 100))))
        elif kind == Kind.A_SHAPE:
            layer.append(HeadPattern.a_shape(rng.choice((0, 1, 64, 100)), rng.choice((1, 63, 200, 2048))))
        else:
            layer.append(HeadPattern.dense())
    return layer


def _section(workspace: torch.Tensor, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    size = torch.empty((), dtype=dtype).element_size()
    return workspace[offset : offset + count * size].view(dtype)


class LayerRun:
    """One minfer_launch with poisoned output and workspace, and the indices read back from the workspace."""

    def __init__(self, library, q, k, v, layer, scale) -> None:
        self.library, self.q, self.k, self.v, self.layer, self.scale = library, q, k, v, layer, scale
        self.pattern = kernels.PatternArgs.of_heads(layer, scale)
        self.problem = kernels.Problem.of(q, k)
        self.layout = library.index_layout(self.pattern, self.problem)
        self.workspace = torch.full((max(self.layout["total_bytes"], 16),), 0xFF, dtype=torch.uint8, device="cuda")
        self.out = torch.full_like(q, float("nan"))
        self.stream = torch.cuda.current_stream().cuda_stream
        library.launch(self.pattern, q, k, v, self.out, self.workspace, self.stream)
        torch.cuda.synchronize()

    def vs_arrays(self, name: str, width: int, dtype: torch.dtype) -> torch.Tensor:
        B, L = self.problem.batch, self.layout
        return _section(self.workspace, L[name], B * L["vs_heads"] * width, dtype).view(B, L["vs_heads"], width).cpu()

    def gpu_index(self, b: int, h: int, slots: dict[int, int]) -> tuple[HeadIndex, dict]:
        """HeadIndex of (b, h) built from the GPU's indices, and the GPU's scores for the checks."""
        S, pat, L = self.problem.seq_len, self.layer[h], self.layout
        if pat.kind in (Kind.DENSE, Kind.A_SHAPE):
            return HeadIndex(pat.kind, S, sink=pat.sink, local=pat.local), {}
        slot = slots[h]
        if pat.kind == Kind.BLOCK_SPARSE:
            nb = L["num_blocks"]
            B = self.problem.batch
            blocks = _section(self.workspace, L["blocks"], B * L["bs_heads"] * nb * L["blocks_stride"], torch.int32)
            blocks = blocks.view(B, L["bs_heads"], nb, L["blocks_stride"])[b, slot, :, : min(pat.top_k, nb)]
            return HeadIndex(Kind.BLOCK_SPARSE, S, blocks=blocks.cpu().long()), {}
        nv, ns = vertical_slash_counts(pat, S)
        columns = self.vs_arrays("columns", L["columns_stride"], torch.int32)[b, slot, :nv].long()
        diagonals = self.vs_arrays("diagonals", L["diagonals_stride"], torch.int32)[b, slot, :ns].long()
        count = int(self.vs_arrays("lag_counts", 1, torch.int32)[b, slot, 0])
        lags = self.vs_arrays("lags", L["diagonals_stride"], torch.int32)[b, slot, :count].long()
        words = self.vs_arrays("held", L["held_words"], torch.int32)[b, slot].long() & 0xFFFFFFFF
        bits = (words[:, None] >> torch.arange(32)[None, :]) & 1
        held = bits.reshape(-1)[: S + 63].bool()
        scores = {
            "column": self.vs_arrays("column_scores", S, torch.float32)[b, slot],
            "diagonal": self.vs_arrays("diagonal_scores", S, torch.float32)[b, slot],
        }
        index = HeadIndex(Kind.VERTICAL_SLASH, S, columns=columns, diagonals=diagonals, lags=lags, held=held)
        return index, scores


def _slots(layer: list[HeadPattern], kind: Kind) -> dict[int, int]:
    heads = [h for h, p in enumerate(layer) if p.kind == kind]
    return {h: i for i, h in enumerate(heads)}


def check_layer(run: LayerRun, rng: random.Random) -> None:
    q, k, v, layer, scale = run.q, run.k, run.v, run.layer, run.scale
    B, Hq, S, _ = q.shape
    group = Hq // k.shape[1]
    nb = num_blocks(S)
    assert not torch.isnan(run.out).any(), "output left unwritten (poison) or NaN"
    vs_slots, bs_slots = _slots(layer, Kind.VERTICAL_SLASH), _slots(layer, Kind.BLOCK_SPARSE)
    block_scores = (
        run.library.debug_block_scores(run.pattern, run.problem, run.workspace, len(bs_slots), run.stream).cpu()
        if bs_slots
        else None
    )
    qc, kc, vc = q.float().cpu(), k.float().cpu(), v.float().cpu()
    blocks_to_check = (
        list(range(nb))
        if S <= FULL_CHECK_MAX_S
        else sorted({0, 1, nb - 2, nb - 1, *rng.sample(range(nb), SAMPLED_BLOCKS)})
    )
    tol = TOLERANCE[q.dtype]
    for b in range(B):
        for h in range(Hq):
            pat, kvh = layer[h], h // group
            index, scores = run.gpu_index(b, h, vs_slots if pat.kind == Kind.VERTICAL_SLASH else bs_slots)
            where = f"b={b} h={h} {pat}"
            if pat.kind == Kind.VERTICAL_SLASH:
                ref_col, ref_diag = vertical_slash_scores(qc[b, h], kc[b, kvh], pat.last_q, scale)
                torch.testing.assert_close(scores["column"], ref_col, rtol=2e-3, atol=2e-5, msg=where)
                torch.testing.assert_close(scores["diagonal"], ref_diag, rtol=2e-3, atol=2e-5, msg=where)
                assert torch.equal(index.columns, top_with_forced(scores["column"], pat.sink, pat.vertical_size)), where
                assert torch.equal(index.diagonals, top_with_forced(scores["diagonal"], pat.local, pat.slash_size)), (
                    where
                )
                assert torch.equal(index.lags, chunk_lags(index.diagonals)), where
                assert torch.equal(index.held, held_lags(index.lags, S)), where
            elif pat.kind == Kind.BLOCK_SPARSE:
                gpu_scores = block_scores[b, bs_slots[h]]
                ref_scores = pooled_block_scores(qc[b, h], kc[b, kvh])
                lower = torch.ones(nb, nb).tril(-1).bool()
                torch.testing.assert_close(gpu_scores[lower], ref_scores[lower], rtol=1e-4, atol=1e-4, msg=where)
                assert torch.equal(index.blocks, block_sparse_select(gpu_scores, pat.top_k)), where
            check_tiles(run, b, h, index, blocks_to_check, where)
            if S <= FULL_CHECK_MAX_S:
                ref = attention_over_index(qc[b, h], kc[b, kvh], vc[b, kvh], index, scale)
                rows = slice(0, S)
            else:
                ref, rows = block_reference(q[b, h], k[b, kvh], v[b, kvh], index, scale, blocks_to_check)
            got = run.out[b, h].float().cpu()[rows]
            err = (got - ref[rows]).abs() / (1 + ref[rows].abs())
            assert err.max() <= tol, f"{where}: max error {err.max():.3g} > {tol}"


def check_tiles(run: LayerRun, b: int, h: int, index: HeadIndex, blocks: list[int], where: str) -> None:
    """The attention kernel's own tiles equal the reference's chunks, then its columns, in groups of 64."""
    items = torch.tensor([[b, h, m] for m in blocks], dtype=torch.int32)
    max_tiles = max(index.chunk_starts(m).numel() + index.column_tiles(m) for m in blocks)
    keys, counts = run.library.debug_tiles(run.pattern, run.problem, run.workspace, items, max_tiles, run.stream)
    keys, counts = keys.cpu().long(), counts.cpu()
    for i, m in enumerate(blocks):
        starts, columns = index.chunk_starts(m), index.block_columns(m)
        chunks = starts.numel()
        assert counts[i] == chunks + -(-columns.numel() // 64), f"{where} block {m}: tile count"
        got_chunks = keys[i, :chunks]
        assert torch.equal(got_chunks - got_chunks[:, :1], torch.arange(64).expand(chunks, 64)), f"{where} block {m}"
        assert torch.equal(got_chunks[:, 0].sort().values, starts.sort().values), f"{where} block {m}: chunk starts"
        gathered = keys[i, chunks : counts[i]].reshape(-1)
        assert torch.equal(gathered[gathered >= 0], columns), f"{where} block {m}: columns"
        assert (gathered[columns.numel() :] == -1).all(), f"{where} block {m}: column padding"


def block_reference(q, k, v, index: HeadIndex, scale: float, blocks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 attention over index.block_keys for the chosen query blocks, on the GPU (large S)."""
    S = q.shape[0]
    out = torch.zeros(S, v.shape[1])
    rows_checked = []
    for m in blocks:
        rows = torch.arange(m * 64, min(m * 64 + 64, S))
        keys = index.block_keys(m)
        allowed = index.token_rule(rows[:, None], keys[None, :]).cuda()
        safe = keys.clamp(0, S - 1).cuda()
        logits = (q[rows.cuda()].float() @ k[safe].float().T) * scale
        logits = logits.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        out[rows] = (weights @ v[safe].float()).cpu()
        rows_checked.append(rows)
    return out, torch.cat(rows_checked)


def random_inputs(batch, hq, hkv, seq_len, head_dim, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(batch, hq, seq_len, head_dim, generator=gen, device="cuda").to(dtype)
    k = torch.randn(batch, hkv, seq_len, head_dim, generator=gen, device="cuda").to(dtype)
    v = torch.randn(batch, hkv, seq_len, head_dim, generator=gen, device="cuda").to(dtype)
    return q, k, v


SMALL = [
    (S, group, D, dtype)
    for S in (1, 63, 64, 65, 1000, 4097)
    for group in (1, 4, 8)
    for D in (64, 128)
    for dtype in (torch.bfloat16, torch.float16)
]
LARGE = [
    (32768, 4, 128, torch.bfloat16),
    (32768, 8, 64, torch.float16),
    (32768, 1, 128, torch.float16),
    (131072, 4, 128, torch.bfloat16),
    (131072, 8, 64, torch.float16),
]


def _case(library, S, group, D, dtype, batch, heads, seed):
    rng = random.Random(seed)
    layer = random_layer(rng, heads, S)
    q, k, v = random_inputs(batch, heads, heads // group, S, D, dtype, seed)
    run = LayerRun(library, q, k, v, layer, D**-0.5)
    check_layer(run, rng)


@pytest.mark.parametrize(("S", "group", "D", "dtype"), SMALL, ids=str)
def test_small_matrix(library, S, group, D, dtype) -> None:
    _case(library, S, group, D, dtype, batch=2, heads=8, seed=zlib.crc32(f"{S}-{group}-{D}-{dtype}".encode()))


@pytest.mark.parametrize(("S", "group", "D", "dtype"), LARGE, ids=str)
def test_long_sequences(library, S, group, D, dtype) -> None:
    _case(library, S, group, D, dtype, batch=1, heads=8, seed=S + group + D)


def test_op_route_is_deterministic_and_matches_the_abi(library) -> None:
    """torch.ops.minfer.sparse_prefill_attention on CUDA is the ABI launch, bit for bit, every time."""
    import minfer.runtime.torch_op as torch_op

    rng = random.Random(3)
    layer = random_layer(rng, 8, 3000)
    q, k, v = random_inputs(2, 8, 2, 3000, 128, torch.bfloat16, 11)
    run = LayerRun(library, q, k, v, layer, 0.09)
    first = torch_op.call_with_patterns(q, k, v, layer, 0.09)
    second = torch_op.call_with_patterns(q, k, v, layer, 0.09)
    assert torch.equal(first, run.out) and torch.equal(second, run.out)


def test_dense_pattern_equals_sdpa(library) -> None:
    q, k, v = random_inputs(1, 8, 2, 2000, 128, torch.bfloat16, 5)
    run = LayerRun(library, q, k, v, [HeadPattern.dense()] * 8, 128**-0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(4, 1), v.float().repeat_interleave(4, 1), is_causal=True
    )
    assert ((run.out.float() - ref).abs() / (1 + ref.abs())).max() <= 1e-2


# bench/device.sh builds it; its variants stage points MINFER_PTX80_LIB at a branch's own compute_80 build
PTX80_BUILD = Path(
    os.environ.get("MINFER_PTX80_LIB") or Path(__file__).resolve().parents[1] / "build-ptx80" / kernels.LIBRARY_NAME
)


@pytest.mark.skipif(bool(os.environ.get("MINFER_EXPECT_PTX")), reason="already on the PTX path")
def test_sm80_path_from_ptx() -> None:
    """The A100 (sm_80) code, JIT-compiled on this GPU from a build holding only compute_80 PTX, passes a
    slice of the matrix. bench/device.sh builds it into build-ptx80/."""
    if not PTX80_BUILD.is_file():
        pytest.skip(
            f"no compute_80-only build at {PTX80_BUILD}: cmake -S . -B build-ptx80 "
            "-DMINFER_CUDA_GENCODE=-gencode=arch=compute_80,code=compute_80 && cmake --build build-ptx80 -j"
        )
    env = dict(os.environ, MINFER_KERNELS_LIB=str(PTX80_BUILD), MINFER_EXPECT_PTX="80")
    selection = "small_matrix and (4097 or 65-) or long_sequences and 32768-4 or op_route"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", __file__, "-k", selection],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    print(result.stdout.strip().splitlines()[-1])
