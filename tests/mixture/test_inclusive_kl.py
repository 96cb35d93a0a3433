"""InclusiveKLFitter against dense computations, kernel density estimation and EM."""

import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KernelDensity

from skgradflow import InclusiveKLFitter
from tests.helpers import BACKENDS, three_mode_mixture
from tests.oracles import dense_inclusive_kl_iterations, phi


def Isotropic(*args, **params):
    """The isotropic flow these tests check against its dense form (the default,
    covariance="auto", may choose a tied shape instead)."""
    return InclusiveKLFitter(*args, covariance="isotropic", **params)


@pytest.fixture
def problem(rng):
    y = three_mode_mixture(60, rng) / 3
    raw = rng.uniform(0.5, 1.5, size=60)
    return y[rng.choice(60, 10, replace=False)] + 0.3, y, raw / raw.sum(), raw


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_iterations_match_dense_computation(problem, backend):
    x0, y, b, raw = problem
    h, tau, alpha, beta = 0.6, 0.2, 0.7, 1.3
    est = Isotropic(n_components=10, bandwidth=h, step_size=tau, alpha=alpha,
                    beta=beta, init=x0, max_iter=3, tol=0,
                    backend=backend).fit(y, sample_weight=raw)
    x3, w3, losses = dense_inclusive_kl_iterations(x0, np.full(10, 0.1), y, b, h, tau, alpha,
                                                   beta, 3)
    np.testing.assert_allclose(est.means_, x3, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.weights_, w3, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(est.loss_curve_, losses, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_flow_with_atoms_at_the_data_is_the_kernel_density_estimate(rng, backend):
    X = three_mode_mixture(300, rng)
    X_test = three_mode_mixture(100, rng)
    h = 0.45
    kl = Isotropic(n_components=300, bandwidth=h, alpha=0.0, beta=0.0, init=X,
                   max_iter=1, tol=0, backend=backend).fit(X)
    kde = KernelDensity(bandwidth=h, kernel="gaussian").fit(X)
    np.testing.assert_allclose(kl.score_samples(X_test), kde.score_samples(X_test), rtol=1e-10)
    assert kl.score(X_test) == pytest.approx(kde.score(X_test) / len(X_test), rel=1e-10)


def test_likelihood_never_decreases_and_beats_the_initial_kde(mixture_split):
    X, X_test = mixture_split
    kl = InclusiveKLFitter(n_components=60, random_state=0).fit(X)
    curve = kl.loss_curve_
    assert np.all(np.diff(curve) <= 1e-12)  # -mean log-likelihood never goes up
    assert curve[-1] < curve[0]
    initial = InclusiveKLFitter(n_components=60, random_state=0, alpha=0.0, beta=0.0,
                                max_iter=1, tol=0).fit(X)
    np.testing.assert_allclose(initial.loss_curve_[0], curve[0])  # the same initial atoms
    # the k-means centres with equal weights (a given init): the start before the weights
    # of the clusters' masses, which both that start and the flow beat on held-out data
    equal = InclusiveKLFitter(n_components=60, init=initial.means_, bandwidth=kl.bandwidth_,
                              alpha=0.0, beta=0.0, max_iter=1, tol=0).fit(X)
    np.testing.assert_allclose(equal.weights_, 1 / 60)
    assert initial.score(X_test) > equal.score(X_test) + 0.05
    assert kl.score(X_test) > equal.score(X_test) + 0.05


def test_the_stopping_rule_knows_the_sampling_noise_of_the_log_likelihood(mixture_split,
                                                                          monkeypatch):
    """The resolution of the objective is the mean absolute deviation of log μ(y) over the
    samples at the start, over √M (M = 1/Σb²), computed here from ``score_samples``."""
    from skgradflow._flow import _loop

    X, _ = mixture_split
    raw = np.random.default_rng(1).uniform(0.5, 1.5, size=X.shape[0])
    b = raw / raw.sum()
    seen = []
    is_resolved = _loop._is_resolved

    def spy(losses, resolution, least_energy=0.0):
        seen.append((resolution, least_energy))
        return is_resolved(losses, resolution, least_energy)

    start = Isotropic(n_components=60, random_state=0, alpha=0.0, beta=0.0,
                      max_iter=1, tol=0).fit(X, sample_weight=raw)
    monkeypatch.setattr(_loop, "_is_resolved", spy)
    kl = Isotropic(n_components=60, random_state=0).fit(X, sample_weight=raw)
    log_density = start.score_samples(X)
    spread = b @ np.abs(log_density - b @ log_density)
    resolution, least_energy = seen[0]
    assert resolution == pytest.approx(spread * np.sqrt(np.sum(b**2)), rel=1e-9)
    assert least_energy is None  # a log-likelihood has no known least value
    assert all(r == resolution for r, _ in seen)
    # it stopped on that rule: the mean of its last window within a hundredth of it
    curve = kl.loss_curve_
    assert kl.n_iter_ < kl.max_iter
    assert np.mean(curve[-20:-10]) - np.mean(curve[-10:]) <= _loop._RESOLVED * resolution


def test_weight_step_is_em_to_first_order(problem):
    x0, y, b, raw = problem
    h = 0.5
    w0 = np.full(10, 0.1)
    gamma = phi(y, x0, h) * w0
    gamma /= gamma.sum(axis=1, keepdims=True)  # EM responsibilities
    em = b @ gamma  # EM's weight update

    def gap(step):
        est = Isotropic(n_components=10, bandwidth=h, alpha=0.0, beta=1.0,
                        step_size=step, init=x0, max_iter=1, tol=0).fit(
                            y, sample_weight=raw)
        return np.abs(est.weights_ - ((1 - step) * w0 + step * em)).sum()

    gaps = [gap(s) for s in (0.04, 0.02, 0.01, 0.005)]
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    assert gaps[-1] < 1e-3
    np.testing.assert_allclose(ratios, 4.0, rtol=0.1)  # halving τβ quarters the gap


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bandwidth", ["scott", 0.1])
def test_digits_in_64_dimensions_stay_finite(dtype, bandwidth):
    X = load_digits().data
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    X = X.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kl = Isotropic(n_components=50, bandwidth=bandwidth, max_iter=10,
                       random_state=0).fit(X)
    log_density = kl.score_samples(X)
    assert log_density.dtype == dtype
    assert np.all(np.isfinite(log_density))
    assert np.all(np.isfinite(kl.loss_curve_)) and np.all(np.isfinite(kl.means_))
    assert np.all(np.diff(kl.loss_curve_) <= 1e-6 * np.abs(kl.loss_curve_[0]))
    # independent check in float64 with scipy's logsumexp
    h = kl.bandwidth_
    X64, m64 = X.astype(np.float64), kl.means_.astype(np.float64)
    r2 = ((X64[:, None, :] - m64[None]) ** 2).sum(-1)
    expected = logsumexp(np.log(kl.weights_) - r2 / (2 * h * h), axis=1) - 32 * np.log(
        2 * np.pi * h * h)
    np.testing.assert_allclose(log_density, expected, rtol=1e-4 if dtype == np.float32 else 1e-10)
    if bandwidth == 0.1:
        # here most densities underflow even in float64: only the log domain works
        assert np.mean(np.exp(expected) == 0.0) > 0.5


def test_sample_draws_from_the_mixture(rng):
    X = three_mode_mixture(500, rng)
    kl = InclusiveKLFitter(n_components=30, random_state=0).fit(X)
    draws = kl.sample(40_000, random_state=1)
    assert draws.shape == (40_000, 2)
    np.testing.assert_array_equal(draws, kl.sample(40_000, random_state=1))
    # the mixture's mean and covariance: Σ w x and Σ w (x - m)(x - m)ᵀ + h² I
    mean = kl.weights_ @ kl.means_
    cov = np.cov(kl.means_.T, aweights=kl.weights_, bias=True) + kl.bandwidth_**2 * np.eye(2)
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(np.cov(draws.T), cov, rtol=0.05, atol=0.1)


def test_seeded_atoms_at_one_position_share_its_mass():
    # more components than distinct rows (each given twice): every row is an atom and some
    # rows are drawn again; the copies of a row share its weight, so that each position
    # carries its row's
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [-2.0, 1.0]])
    raw = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    est = InclusiveKLFitter(n_components=8, init="kmeans", alpha=0.0, beta=0.0, max_iter=1,
                            tol=0, random_state=0, bandwidth=0.5).fit(
                                np.r_[X, X], sample_weight=np.r_[raw, raw])
    assert len(np.unique(est.means_, axis=0)) == 5
    for row, weight in zip(X, raw / raw.sum(), strict=True):
        at_row = np.all(est.means_ == row, axis=1)
        assert at_row.any()
        np.testing.assert_allclose(est.weights_[at_row].sum(), weight, rtol=1e-12)
        np.testing.assert_allclose(est.weights_[at_row], weight / at_row.sum(), rtol=1e-12)


def test_without_reweighting_the_clusters_masses_stay(mixture_split):
    X, _ = mixture_split
    start = Isotropic(n_components=20, alpha=0.0, beta=0.0, max_iter=1, tol=0,
                      random_state=0).fit(X)
    moved = Isotropic(n_components=20, beta=0.0, max_iter=10, tol=0,
                      random_state=0).fit(X)
    assert not np.allclose(start.weights_, 1 / 20)
    assert np.abs(moved.means_ - start.means_).max() > 1e-3  # the atoms did move
    np.testing.assert_array_equal(moved.weights_, start.weights_)


@pytest.mark.parametrize("covariance", ["isotropic", "full"])
def test_sample_draws_the_atoms_by_systematic_resampling(covariance):
    """Five tight clusters of 3, 7, 11, 13 and 16 rows, 10 apart, one component each: in
    every draw of five samples each component appears ⌊5 w_j⌋ or ⌈5 w_j⌉ times (independent
    draws would give some draws two samples of the 3-row component, or none of the
    16-row one), and over many draws each sample is a component's with probability w_j."""
    rng = np.random.default_rng(0)
    sizes = np.array([3, 7, 11, 13, 16])
    centres = 10.0 * np.arange(5)[:, None] * np.array([[1.0, 0.5]])
    X = np.vstack([c + 0.01 * rng.standard_normal((k, 2)) for c, k in zip(centres, sizes,
                                                                          strict=True)])
    est = InclusiveKLFitter(n_components=5, covariance=covariance, bandwidth=0.05, alpha=0.0,
                            beta=0.0, max_iter=1, tol=0, random_state=0).fit(X)
    order = np.argsort(est.means_[:, 0])
    np.testing.assert_allclose(est.weights_[order], sizes / sizes.sum())
    expected = 5 * sizes / sizes.sum()
    first = np.zeros(5)
    for seed in range(400):
        draws = est.sample(5, random_state=seed)
        # the component a sample came from: the nearest centre (10 apart, spread 0.05)
        nearest = np.argmin(((draws[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        counts = np.bincount(nearest, minlength=5)
        assert np.all((counts == np.floor(expected)) | (counts == np.ceil(expected)))
        first[nearest[0]] += 1
    np.testing.assert_allclose(first / 400, sizes / sizes.sum(), atol=0.06)
