"""Metrics and bandwidth rules against closed forms and independent computations."""

import numpy as np
import pytest
import scipy.stats

from skgradflow.kernels import median_heuristic, resolve_bandwidth
from skgradflow.metrics import energy_distance, mmd
from tests.helpers import BACKENDS
from tests.oracles import dense_mmd2


@pytest.mark.parametrize("backend", BACKENDS)
def test_mmd_of_a_set_with_itself_is_zero(rng, backend):
    X = rng.normal(size=(300, 3))
    assert mmd(X, X, bandwidth=1.0, backend=backend) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(X, X, backend=backend) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_off_gives_exactly_zero_and_real_differences_survive(rng, backend, dtype):
    """A value within the round-off of its terms is 0 exactly, whatever its sign (the terms
    of aᵀKa are of size |a|ᵀ|K||a|); a small but real discrepancy is not."""
    X = rng.normal(size=(300, 3)).astype(dtype)
    perm = rng.permutation(300)
    for kernel in ("gaussian", "imq", "energy"):
        assert mmd(X, X, kernel=kernel, bandwidth=1.0, backend=backend) == 0.0
        assert mmd(X, X[perm], kernel=kernel, bandwidth=1.0, backend=backend) == 0.0
    assert energy_distance(X, X, backend=backend) == 0.0
    # a shift of 1e-2 standard deviations: MMD² ≈ 1e-4 · E|∇k|², far above round-off
    small = mmd(X, X + dtype(1e-2), bandwidth=1.0, backend=backend)
    expected = dense_mmd2(X.astype(float), X + 1e-2, np.full(300, 1 / 300),
                          np.full(300, 1 / 300), 1.0)
    assert small > 0.0
    assert small == pytest.approx(expected, rel=1e-6 if dtype == np.float64 else 0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mmd_matches_the_dense_formula(rng, backend):
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(55, 3)) + 0.5
    wx, wy = rng.uniform(size=40), rng.uniform(size=55)
    got = mmd(X, Y, bandwidth=0.9, x_weights=wx, y_weights=wy, backend=backend)
    expected = dense_mmd2(X, Y, wx / wx.sum(), wy / wy.sum(), 0.9)
    assert got == pytest.approx(expected, rel=1e-10)
    assert got == pytest.approx(mmd(Y, X, bandwidth=0.9, x_weights=wy, y_weights=wx), rel=1e-10)


def test_energy_distance_is_the_square_of_scipys_in_one_dimension(rng):
    u, v = rng.normal(size=200), rng.normal(size=150) * 2 + 1
    uw, vw = rng.uniform(size=200), rng.uniform(size=150)
    expected = scipy.stats.energy_distance(u, v, uw, vw) ** 2
    got = energy_distance(u[:, None], v[:, None], x_weights=uw, y_weights=vw)
    assert got == pytest.approx(expected, rel=1e-9)


def test_energy_distance_between_two_points():
    # 2|x - y| - 0 - 0 for two Dirac masses
    assert energy_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx(10.0)


def test_integer_weights_equal_repeated_rows(rng):
    X, Y = rng.normal(size=(20, 2)), rng.normal(size=(30, 2))
    counts = rng.integers(1, 4, size=20)
    weighted = mmd(X, Y, bandwidth=1.0, x_weights=counts)
    repeated = mmd(np.repeat(X, counts, axis=0), Y, bandwidth=1.0)
    assert weighted == pytest.approx(repeated, rel=1e-10)


def test_median_heuristic_is_the_median_over_all_pairs(rng):
    X = rng.normal(size=(31, 2))
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1)).ravel()  # all ordered pairs, i = j too
    assert median_heuristic(X) == pytest.approx(np.sort(D)[(D.size - 1) // 2])
    counts = rng.integers(1, 4, size=31)
    assert median_heuristic(X, counts / counts.sum()) == pytest.approx(
        median_heuristic(np.repeat(X, counts, axis=0)))


def test_median_heuristic_on_large_inputs_uses_a_subsample(rng):
    X = rng.normal(size=(20_000, 2))
    # |Y - Y'|² ~ 2χ²₂ for standard normals: the median is sqrt(2 · 2 log 2)
    assert median_heuristic(X, random_state=0) == pytest.approx(np.sqrt(4 * np.log(2)), rel=0.03)
    assert median_heuristic(X, random_state=0) == median_heuristic(X, random_state=0)


def test_median_of_duplicates_falls_back_to_a_positive_scale():
    X = np.array([[1.0, 1.0]] * 9 + [[2.0, 1.0]])
    assert median_heuristic(X) > 0
    assert median_heuristic(np.ones((5, 2))) == 1.0


def test_scott_and_silverman_rules(rng):
    X = rng.normal(size=(1000, 2)) * 3.0
    w = np.full(1000, 1e-3)
    sigma = np.sqrt(np.mean(X.var(axis=0)))
    assert resolve_bandwidth("scott", X, w) == pytest.approx(1000 ** (-1 / 6) * sigma)
    assert resolve_bandwidth("silverman", X, w) == pytest.approx((1000 * 4 / 4) ** (-1 / 6) * sigma)
    assert resolve_bandwidth(0.7, X, w) == 0.7
