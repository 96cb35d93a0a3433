"""bandwidth="auto" of InclusiveKLFitter: the leave-one-out likelihood width, against a
brute-force computation with scipy."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from skgradflow import InclusiveKLFitter
from skgradflow.mixture._bandwidth import LOO_FACTORS

# the fits stop after one iteration: only the bandwidth chosen before it is tested
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def brute_force_loo(Z, b, h):
    """``Σ_j b_j log(Σ_{i≠j} b_i N(z_j; z_i, h² I) / Σ_{i≠j} b_i)``, by scipy's densities
    (``-inf`` where a width is so small that every density underflows: never the argmax)."""
    d = Z.shape[1]
    total = 0.0
    for j in range(len(Z)):
        others = np.arange(len(Z)) != j
        dens = b[others] @ multivariate_normal.pdf(Z[others], mean=Z[j], cov=h * h * np.eye(d))
        with np.errstate(divide="ignore"):
            total += b[j] * np.log(dens / b[others].sum())
    return total


def brute_force_choice(Z, b):
    sigma = np.sqrt(np.mean(np.average((Z - np.average(Z, axis=0, weights=b)) ** 2,
                                       axis=0, weights=b)))
    widths = sigma * LOO_FACTORS
    values = [brute_force_loo(Z, b, h) for h in widths]
    return widths[int(np.argmax(values))]


def test_auto_is_the_argmax_of_the_leave_one_out_likelihood(rng):
    X = np.vstack([rng.normal(size=(25, 2)), rng.normal(4.0, 0.5, size=(15, 2))])
    b = rng.uniform(0.5, 1.5, size=40)
    b /= b.sum()
    kl = InclusiveKLFitter(bandwidth="auto", max_iter=1, random_state=0).fit(X, sample_weight=b)
    assert kl.bandwidth_ == pytest.approx(brute_force_choice(X, b), rel=1e-12)
    assert InclusiveKLFitter().bandwidth == "auto"  # the default


def test_auto_with_the_data_shape_is_chosen_in_whitened_coordinates(rng):
    A = np.array([[2.0, 0.0, 0.0], [1.5, 0.3, 0.0], [0.0, 0.2, 0.5]])
    X = rng.normal(size=(50, 3)) @ A.T
    b = np.full(50, 1 / 50)
    # any W with W Σ̂ Wᵀ = I gives the same distances; Σ̂ as scipy's gaussian_kde (unbiased),
    # with the default reg_covar on its diagonal
    cov = np.cov(X.T)
    cov += 1e-6 * np.trace(cov) / 3 * np.eye(3)
    Z = np.linalg.solve(np.linalg.cholesky(cov), (X - X.mean(axis=0)).T).T
    kl = InclusiveKLFitter(covariance="data", max_iter=1, random_state=0).fit(X)
    assert kl.bandwidth_ == pytest.approx(brute_force_choice(Z, b), rel=1e-9)
    np.testing.assert_allclose(kl.covariances_, kl.bandwidth_**2 * cov, rtol=1e-9)


def test_auto_sees_repeated_rows_as_their_weight(rng):
    # repeated rows count once per repeat in the weights, and never as each other's
    # neighbours, so integer sample_weight is the same fit as the repeated rows
    X = rng.normal(size=(30, 2))
    counts = rng.integers(1, 4, size=30)
    # isotropic: the width below is chosen in the units of X (a tied fit's, in whitened ones)
    weighted = InclusiveKLFitter(max_iter=1, covariance="isotropic", random_state=0).fit(
        X, sample_weight=counts)
    repeated = InclusiveKLFitter(max_iter=1, covariance="isotropic", random_state=0).fit(
        np.repeat(X, counts, axis=0))
    assert weighted.bandwidth_ == pytest.approx(repeated.bandwidth_, rel=1e-12)
    Z = X
    assert weighted.bandwidth_ == pytest.approx(brute_force_choice(Z, counts / counts.sum()),
                                                rel=1e-12)


def test_auto_of_rows_that_are_all_the_same_is_their_resolution():
    X = np.full((5, 2), 3.0)
    kl = InclusiveKLFitter(n_components=1, max_iter=1).fit(X)
    assert kl.bandwidth_ == pytest.approx(np.finfo(np.float64).eps * 3.0)
