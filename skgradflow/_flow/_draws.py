"""Drawing the atoms of a weighted measure."""

from __future__ import annotations

import numpy as np


def systematic_draw(weights: np.ndarray, n: int, rng) -> np.ndarray:
    """``n`` atoms drawn by weight by systematic resampling in batches of ``N``: each atom
    ⌊N w_i⌋ or ⌈N w_i⌉ times a batch, so that the draws carry the weights without the noise
    of independent draws (the mass of separated modes: 1000 independent draws on the 2-D
    mixture give an energy distance 5x that of real rows, systematic ones 0.8x), in random
    order so that a last, cut batch is a random part of a whole one."""
    N = weights.shape[0]
    cumulative = np.cumsum(weights)
    batches = []
    for _ in range(0, n, N):
        u = (rng.uniform() + np.arange(N)) / N
        batch = np.minimum(np.searchsorted(cumulative, u * cumulative[-1]), N - 1)
        batches.append(rng.permutation(batch))
    return np.concatenate(batches)[:n]
