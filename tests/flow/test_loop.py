"""The stopping rule at the energy's statistical resolution (``_flow/_loop.py``)."""

import numpy as np
import pytest

from skgradflow import IFTSampler
from skgradflow._flow import _loop
from skgradflow.data import as_data


def test_the_resolution_is_the_expected_energy_of_the_rows_against_their_law():
    """ν = (k(0) - E k(y, y'))/(2M): for y, y' ~ N(0, I₂) and a Gaussian kernel of width 1,
    E k = (h²/(h² + 2))^{d/2} = 1/3 in closed form."""
    M = 4000
    X = np.random.default_rng(0).standard_normal((M, 2))
    est = IFTSampler(bandwidth=1.0, backend="numpy")
    est.bandwidth_ = 1.0
    problem = est._make_problem(as_data(X), est._kernel(), 10, np.random.default_rng(1))
    est._prepare(problem, 10)
    nu, least_energy = est._energy_resolution(problem)
    assert least_energy == 0.0
    assert nu == pytest.approx((1.0 - 1.0 / 3.0) / (2.0 * M), rel=0.03)
    # weights count through M = 1/Σb²: half the rows carrying all the mass halve M
    b = np.r_[np.ones(M // 2), np.zeros(M // 2)]
    half = est._make_problem(as_data(X, b), est._kernel(), 10, np.random.default_rng(1))
    est._prepare(half, 10)
    assert est._energy_resolution(half)[0] == pytest.approx(2.0 * nu, rel=0.05)


def test_the_rule_on_made_up_energy_curves():
    nu = 1e-3
    assert not _loop._is_resolved([1.0] * 30, 0.0)  # no resolution known: never
    assert _loop._is_resolved([1.0, 0.5 * _loop._RESOLVED * nu], nu)  # below ν/100
    # a window that falls by more than ν/100 goes on; by less, stops
    falling = list(1.0 - 2 * _loop._RESOLVED * nu / _loop._WINDOW * np.arange(21))
    assert not _loop._is_resolved(falling, nu)
    flat = list(1.0 - 0.5 * _loop._RESOLVED * nu / _loop._WINDOW * np.arange(21))
    assert _loop._is_resolved(flat, nu)
    assert not _loop._is_resolved(flat[:20], nu)  # two windows are needed


def test_a_fit_whose_particles_are_the_rows_stops_at_once_unless_tol_is_zero():
    """A particle on every row, equal weights: the energy is 0 from the start."""
    X = np.random.default_rng(2).normal(size=(200, 3))
    est = IFTSampler(bandwidth=1.0, max_iter=50, random_state=0).fit(X)
    assert est.particles_.shape == X.shape and est.converged_ and est.n_iter_ == 1
    assert IFTSampler(bandwidth=1.0, max_iter=50, tol=0, random_state=0).fit(X).n_iter_ == 50
