"""``bandwidth="auto"``: the width of the kernel density estimate of the samples with the
highest leave-one-out log-likelihood, chosen once at the start of ``fit``."""

from __future__ import annotations

import numpy as np

from ..data import Data

# The candidates, as multiples of the root mean variance of the features (in the coordinates
# the flow runs in: whitened for the shaped modes).  0.02 is below the leave-one-out width
# of any of the benchmark sets (0.1-0.8 after standardising); 2 is wider than Scott's
# factor in one dimension with 2 samples (0.89), so a rule's answer is always inside.
LOO_FACTORS = np.geomspace(0.02, 2.0, 48)
# At most this many rows (drawn by weight, without replacement) enter the leave-one-out sums:
# the pairwise distances are held at once (32 MB in float64).
LOO_MAX_ROWS = 2000


def leave_one_out_bandwidth(data: Data, rng: np.random.Generator) -> float:
    """The ``h`` of ``σ · LOO_FACTORS`` that maximises the leave-one-out log-likelihood

    ``Σ_j b_j log( Σ_{i≠j} b_i φ_h(y_j - y_i) / Σ_{i≠j} b_i )``

    of the weighted samples ``(y_j, b_j)`` under ``φ_h``, the ``N(0, h² I)`` density: the
    bandwidth of the kernel density estimate with the best likelihood of each sample under
    the others.  Pairs of equal rows are left out with the row itself (a repeated row would
    make any width near 0 infinitely likely); rows without a distinct neighbour are left out
    of the sum.  Data without two distinct rows get Scott's rule (whose answer for rows that
    are all the same is their resolution)."""
    sigma = data.root_mean_variance()
    if data.n_distinct() < 2 or not sigma > 0.0:
        return data.bandwidth("scott", rng)
    if data.n_samples > LOO_MAX_ROWS:
        rows = np.asarray(data.subsample(LOO_MAX_ROWS, rng), dtype=np.float64)
        weights = np.full(LOO_MAX_ROWS, 1.0 / LOO_MAX_ROWS)
    else:
        rows = np.asarray(data.to_host(), dtype=np.float64)
        weights = np.asarray(data.weights, dtype=np.float64)
    positive = weights > 0
    rows, weights = rows[positive], weights[positive] / weights[positive].sum()
    return float(sigma * LOO_FACTORS[np.argmax(leave_one_out_log_likelihoods(
        rows, weights, sigma * LOO_FACTORS))])


def leave_one_out_log_likelihoods(rows: np.ndarray, weights: np.ndarray,
                                  widths: np.ndarray) -> np.ndarray:
    """The leave-one-out log-likelihood (see ``leave_one_out_bandwidth``) at each width."""
    sq_norms = np.einsum("nd,nd->n", rows, rows)
    sq = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * rows @ rows.T, 0.0)
    d = rows.shape[1]
    # exact zeros of the expansion above are not guaranteed for equal rows: compare rows
    same = sq <= 1e-12 * max(float(sq_norms.max()), np.finfo(np.float64).tiny)
    np.fill_diagonal(same, True)
    others = np.where(same, 0.0, weights[None, :]).sum(axis=1)
    counted = others > 0
    if not counted.any():
        return np.zeros(len(widths))
    sq, same, others = sq[counted], same[counted], others[counted]
    # -|y_j - y_i|²/2, with the pairs left out at -inf; the width only scales it
    half_sq = np.where(same, -np.inf, -0.5 * sq)
    log_w = np.log(weights)
    d = rows.shape[1]
    values = np.empty(len(widths))
    for k, h in enumerate(widths):
        L = half_sq * (1.0 / (h * h)) + log_w[None, :]
        top = L.max(axis=1)
        log_density = top + np.log(np.exp(L - top[:, None]).sum(axis=1))
        values[k] = weights[counted] @ (log_density - np.log(others) - d * np.log(h))
    return values / weights[counted].sum()
