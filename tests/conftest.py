import numpy as np
import pytest


def three_mode_mixture(n, rng, centers=((-4.0, 0.0), (4.0, 0.0), (0.0, 5.0)), scale=0.7):
    """Samples of an equal-weight mixture of isotropic Gaussians."""
    centers = np.asarray(centers, dtype=float)
    labels = rng.integers(len(centers), size=n)
    return centers[labels] + scale * rng.standard_normal((n, centers.shape[1]))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def mixture_split():
    """Standardised train / held-out samples of a 2-D three-component mixture."""
    rng = np.random.default_rng(0)
    X = three_mode_mixture(800, rng)
    X_test = three_mode_mixture(800, rng)
    mean, std = X.mean(axis=0), X.std(axis=0)
    return (X - mean) / std, (X_test - mean) / std


def keops_usable() -> bool:
    """Whether KeOps passed its (child-process) probe here."""
    from skgradflow.backends import keops_status

    return keops_status().usable


needs_keops = pytest.mark.skipif(not keops_usable(), reason="KeOps cannot compile here")


def numba_usable() -> bool:
    from skgradflow.backends import numba_installed

    return numba_installed()


needs_numba = pytest.mark.skipif(not numba_usable(), reason="Numba is not installed")


def backend_params():
    """Every registered in-memory backend name, as pytest parameters; the unusable ones
    skipped.

    Tests that take ``backend`` from here run the same checks on every engine.  ``"dask"``
    is not among them: each fit would start a cluster of its own; ``test_dask.py`` runs
    the oracle checks and the estimators on one shared cluster instead."""
    from skgradflow.backends import backend_names

    marks = {"keops": [needs_keops], "numba": [needs_numba]}
    return [
        pytest.param(name, marks=marks.get(name, []))
        for name in backend_names()
        if name not in ("auto", "dask")
    ]


BACKENDS = backend_params()


def assert_energy_never_increases(est, slack=1e-12):
    """``loss_curve_`` never goes up within a bandwidth phase (the curve of an annealed fit
    jumps where the bandwidth, hence the energy being measured, changes)."""
    curve = np.asarray(est.loss_curve_)
    schedule = np.asarray(est.bandwidth_schedule_)
    assert schedule.shape == (est.n_iter_,)
    # loss_curve_[k] (k >= 1) is measured at bandwidth_schedule_[k - 1], loss_curve_[0] at the
    # first bandwidth
    in_force = np.r_[schedule[:1], schedule] if schedule.size else np.ones(1)
    same = in_force[1:] == in_force[:-1]
    steps = np.diff(curve)[same]
    assert np.all(steps <= slack), steps[steps > slack]
