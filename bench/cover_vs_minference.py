"""Chunk tiles of our vertical-slash cover against MInference's, on random diagonal sets (CPU only).

Ours: `minfer.patterns.indices.chunk_lags`, one global chain of 64-key chunks, each query block taking the
lags below its end. MInference's: `convert_vertical_slash_indexes` (microsoft/MInference
csrc/vertical_slash_index.cu, commit fb56c91), re-expressed here: per query block, from the diagonals that
touch it, chains of 64-key blocks started at the widest diagonal's window and extended by 64 while the next
window ends within one more block. Run: PYTHONPATH=<dir holding minfer> python bench/cover_vs_minference.py
"""

import random

import torch

from minfer.patterns.indices import BLOCK, chunk_lags


def ours(diagonals: list[int], blocks: int) -> int:
    lags = chunk_lags(torch.tensor(diagonals)).tolist()
    return sum(sum(1 for lag in lags if lag < m * BLOCK + BLOCK) for m in range(blocks))


def minference(diagonals: list[int], blocks: int) -> int:
    descending = sorted(diagonals, reverse=True)
    total = 0
    for m in range(blocks):
        end = (m + 1) * BLOCK
        touching = [d for d in descending if d < end]
        if not touching:
            continue
        window_end = max(end - touching[0], BLOCK)
        start, stop = window_end - BLOCK, window_end
        for d in touching[1:]:
            window_end = max(end - d, BLOCK)
            if window_end > stop + BLOCK:
                total += (stop - start) // BLOCK
                start, stop = window_end - BLOCK, window_end
            elif window_end > stop:
                stop += BLOCK
        total += (stop - start) // BLOCK
    return total


def main(seq_len: int = 16384, sets: int = 4, size: int = 1500) -> None:
    rng = random.Random(0)
    for _ in range(sets):
        diagonals = set(range(100))  # the forced local band
        for _ in range(5):  # a few bands at distances
            first = rng.randint(0, seq_len - 1)
            diagonals |= set(range(first, min(seq_len, first + rng.randint(1, 300))))
        while len(diagonals) < size:  # scattered distances, most of them short
            diagonals.add(int(rng.paretovariate(0.7)) % seq_len)
        chosen = sorted(diagonals)
        blocks = seq_len // BLOCK
        print(
            f"{len(chosen)} diagonals: ours {ours(chosen, blocks)}, MInference's {minference(chosen, blocks)} chunk tiles"
        )


if __name__ == "__main__":
    main()
