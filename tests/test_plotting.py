"""The plotting helpers on a headless backend."""

import warnings

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from skgradflow import IFTSampler, InclusiveKLFitter  # noqa: E402
from skgradflow.plotting import plot_loss_curve, plot_particles  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(150, 2)) - 3, rng.normal(size=(150, 2)) + 3])
    x0 = rng.normal(size=(40, 2)) * 0.3  # between the modes: IFT empties some particles
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = IFTSampler(n_particles=40, bandwidth=1.0, init=x0, max_iter=80, tol=0,
                         random_state=0).fit(X)
    return est, X


def test_particles_are_drawn_with_area_by_weight_and_hollow_when_empty(fitted):
    est, X = fitted
    relative = est.weights_ * len(est.weights_)
    full = relative >= 1e-2
    assert full.any() and (~full).any()  # the fixture has both kinds
    fig, ax = plt.subplots()
    assert plot_particles(est, ax=ax, data=X, size=10.0) is ax
    data, filled, hollow = ax.collections
    np.testing.assert_allclose(data.get_offsets(), X)
    np.testing.assert_allclose(filled.get_offsets(), est.particles_[full])
    np.testing.assert_allclose(filled.get_sizes(), 10.0 * relative[full])
    np.testing.assert_allclose(hollow.get_offsets(), est.particles_[~full])
    assert np.all(hollow.get_facecolors()[:, 3] == 0)  # transparent faces
    plt.close(fig)


def test_mixture_atoms_and_a_new_figure():
    X = np.random.default_rng(1).normal(size=(200, 3))
    kl = InclusiveKLFitter(n_components=10, max_iter=5, tol=0, random_state=0).fit(X)
    ax = plot_particles(kl, dims=(0, 2))
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(kl.means_[:, 0]))
    np.testing.assert_allclose(np.sort(offsets[:, 1]), np.sort(kl.means_[:, 2]))
    plt.close(ax.figure)


def test_loss_curve_line_and_log_scale(fitted):
    est, _ = fitted
    ax = plot_loss_curve(est)
    (line,) = ax.lines
    np.testing.assert_allclose(line.get_ydata(), est.loss_curve_)
    np.testing.assert_allclose(line.get_xdata(), np.arange(len(est.loss_curve_)))
    assert ax.get_yscale() == "log"
    plt.close(ax.figure)


def test_negative_losses_stay_on_a_linear_axis():
    X = np.random.default_rng(2).normal(size=(200, 2)) * 0.1  # a peaked density: NLL < 0
    kl = InclusiveKLFitter(n_components=10, max_iter=5, tol=0, random_state=0).fit(X)
    assert np.any(kl.loss_curve_ < 0)
    ax = plot_loss_curve(kl)
    assert ax.get_yscale() == "linear"
    plt.close(ax.figure)


def test_unfitted_estimator_is_refused():
    with pytest.raises(NotFittedError):
        plot_particles(IFTSampler())
    with pytest.raises(NotFittedError):
        plot_loss_curve(IFTSampler())
