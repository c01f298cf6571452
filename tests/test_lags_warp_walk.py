"""The lags kernel's warp walk (index_vertical_slash.cu, lags_kernel), ported line for line to Python: 32 lanes
look at the next 32 diagonals of a shared-memory chunk, a ballot finds the largest below the last lag. It must
give the reference's greedy cover (minfer.patterns.indices.chunk_lags) on bands, scattered sets and across
chunk boundaries; the GPU tests then check the kernel's lags against the reference exactly (CPU only here)."""

import random

import pytest
import torch

from minfer.patterns.indices import BLOCK, chunk_lags


def warp_walk(diagonals: list[int], chunk: int) -> list[int]:
    lags: list[int] = []
    last = 0
    for end in range(len(diagonals), 0, -chunk):  # diagonals [begin, end), from the largest
        begin = max(0, end - chunk)
        staged = diagonals[begin:end]
        i = end - begin - 1
        while i >= 0:
            looked = [(i - lane, staged[i - lane] if i - lane >= 0 else 0) for lane in range(32)]
            below = [j >= 0 and (not lags or d < last) for j, d in looked]
            if not any(below):
                i -= 32
                continue
            first = below.index(True)
            nxt = looked[first][1]
            last = last - BLOCK if lags and nxt > last - BLOCK else nxt
            lags.append(last)
            i -= first + 1
    return lags


def diagonal_sets(rng: random.Random):
    for _ in range(100):
        seq = rng.choice([100, 1000, 5000, 131072])
        n = rng.randint(0, min(seq, 7000))
        yield sorted(rng.sample(range(seq), n))  # scattered
        start = rng.randint(0, seq - 1)
        yield list(range(start, min(seq, start + n)))  # one band
        bands: set[int] = set()
        while len(bands) < n:
            a = rng.randint(0, seq - 1)
            bands.update(range(a, min(seq, a + rng.randint(1, 300))))
        yield sorted(bands)[:n]  # many bands


@pytest.mark.parametrize("chunk", [2048, 64, 37])  # the kernel's chunk, and boundaries inside bands
def test_warp_walk_is_the_greedy_cover(chunk):
    for diagonals in diagonal_sets(random.Random(chunk)):
        assert warp_walk(diagonals, chunk) == chunk_lags(torch.tensor(diagonals, dtype=torch.int64)).tolist()
