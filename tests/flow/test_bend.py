"""The bend of ``transform``: the smooth field after the Gaussian map, the smoothest that
lands the set.

Checked against dense computations written here: the energy distance and its gradient
(full distance matrices, central differences), the expected energy distance of draws (its
closed form), the Gaussian map (scipy's matrix square roots), and the classes of a
5-nearest-neighbour classifier.
"""

import warnings

import numpy as np
import pytest
from scipy.linalg import sqrtm
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier

from skgradflow import IFTSampler
from skgradflow._flow import _bend, _matching
from skgradflow.backends import NumpyBackend
from skgradflow.data import as_data
from tests.helpers import plan_only, recorded_bends
from tests.oracles import dense_energy_distance


def dense_gaussian_map(X, Y, b):
    """The optimal map between the Gaussians of the rows' moments and of ``Σ b_j δ_{y_j}``'s,
    from scipy's square roots."""
    S, C = np.cov(X, rowvar=False, bias=True), np.cov(Y, rowvar=False, aweights=b, bias=True)
    root = sqrtm(S).real
    inv_root = np.linalg.inv(root)
    A = inv_root @ sqrtm(root @ C @ root).real @ inv_root
    return (X - X.mean(axis=0)) @ A + b @ Y


def ratio(Z, Y, b):
    """The energy distance of the rows to the measure over that of as many draws of it
    (``E|Y - Y'| / n``)."""
    D = np.sqrt(np.sum((Y[:, None] - Y[None]) ** 2, axis=-1))
    return dense_energy_distance(Z, Y, y_weights=b) / (b @ D @ b / len(Z))


def test_energy_and_its_gradient_against_dense_distances_and_differences(rng):
    Z, Y = rng.normal(size=(30, 3)), rng.normal(size=(20, 3)) + 0.5
    b = rng.random(20)
    b /= b.sum()
    target = _bend._Target(NumpyBackend(), Y, b, 30)
    value, grad = target.energy(Z)
    assert value == pytest.approx(dense_energy_distance(Z, Y, y_weights=b), rel=1e-12)
    step = 1e-6
    numeric = np.zeros_like(Z)
    for i, k in np.ndindex(*Z.shape):
        E = np.zeros_like(Z)
        E[i, k] = step
        numeric[i, k] = (dense_energy_distance(Z + E, Y, y_weights=b)
                         - dense_energy_distance(Z - E, Y, y_weights=b)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=0, atol=1e-7)
    assert target.landing(Z) == pytest.approx(ratio(Z, Y, b), rel=1e-12)


def test_draws_of_the_measure_land_at_one_on_average(rng):
    """``E ED(n draws of ν, ν) = E|Y - Y'| / n``, the closed form of the landing ratio's
    denominator: 4000 draws of 10 rows average within 3% of 1."""
    Y = rng.normal(size=(30, 2))
    b = rng.random(30)
    b /= b.sum()
    target = _bend._Target(NumpyBackend(), Y, b, 30)
    ratios = [target.landing(Y[rng.choice(30, size=10, p=b)]) for _ in range(4000)]
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.03)


@pytest.fixture(scope="module")
def blobs():
    """10-D blobs, split as the matching benchmark does; the source shifted nonlinearly (a
    rotation of two features, then ``x + 0.3 x|x| + 0.7`` on half the features)."""
    X, y = make_blobs(1000, 10, centers=5, cluster_std=2.0, random_state=0)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    order = np.random.default_rng(0).permutation(1000)
    source, train = order[:400], order[400:800]
    Xs = X[source].copy()
    t = 0.4
    Xs[:, :2] = Xs[:, :2] @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    Xs[:, :5] = Xs[:, :5] + 0.3 * Xs[:, :5] * np.abs(Xs[:, :5]) + 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = IFTSampler(random_state=0).fit(X[train])
    return est, Xs, y[source], X[train], y[train]


def test_bent_set_lands_keeps_its_clusters_and_moves_little(blobs, monkeypatch):
    """Where the Gaussian map leaves the clusters apart from the fitted ones, the bend lands
    the set (as close as draws of the fitted measure, by a dense energy distance) and keeps
    every row in its cluster, where the plan re-sorts a tenth of them; it moves the rows at
    most 1.5 times as far as the Gaussian map does."""
    est, Xs, ys, Xt, yt = blobs
    atoms, w = est._fitted_measure()
    b = w / w.sum()
    linear = dense_gaussian_map(Xs, atoms, b)
    assert ratio(linear, atoms, b) > 1.0  # the Gaussian map alone does not land
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = est.transform(Xs)
    assert ratio(moved, atoms, b) <= _bend._LANDED_BENT
    displacement = np.mean(np.sum((moved - Xs) ** 2, axis=1))
    assert displacement <= _bend._MAX_DISPLACEMENT * np.mean(np.sum((linear - Xs) ** 2, axis=1))
    classes = KNeighborsClassifier(5).fit(Xt, yt)
    assert classes.score(moved, ys) >= 0.99
    plan_only(monkeypatch)
    assert classes.score(est.transform(Xs), ys) < 0.95


def test_a_set_the_gaussian_map_lands_is_moved_by_it_alone(blobs):
    """The fitted measure's atoms, repeated by weight (closer to it than draws), scaled by
    a symmetric positive definite matrix and shifted: the Gaussian map undoes that and the
    set lands, so ``transform`` is that map (scipy's square roots here), no bend, no plan."""
    est, *_ = blobs
    atoms, w = est._fitted_measure()
    b = w / w.sum()
    rows = np.repeat(atoms, np.maximum(1, np.round(b * 600).astype(int)), axis=0)
    assert len(rows) <= _bend.WHOLE_ROWS
    rng = np.random.default_rng(1)
    M = np.eye(10) + 0.1 * (lambda B: B + B.T)(rng.normal(size=(10, 10)))
    source = rows @ M + 0.5
    expected = dense_gaussian_map(source, atoms, b)
    assert ratio(expected, atoms, b) <= _bend._LANDED_LINEAR
    np.testing.assert_allclose(est.transform(source), expected, rtol=0, atol=1e-9)


def test_a_large_set_is_bent_on_rows_chosen_by_hash_then_landed_by_the_plan(
        blobs, monkeypatch):
    """Above WHOLE_ROWS rows the bend is fitted on the FIT_ROWS rows of smallest hash (the
    same for a permuted set), within its displacement bound, and the plan lands the set
    from there: as close as draws, the fitted mean and covariance exact (the plan's last
    Gaussian map), and a permuted set maps to the permuted images."""
    est, Xs, ys, Xt, yt = blobs
    monkeypatch.setattr(_matching, "WHOLE_ROWS", 300)
    monkeypatch.setattr(_matching, "FIT_ROWS", 150)
    fitted_on = recorded_bends(monkeypatch)
    moved = est.transform(Xs)
    X, Z, whole, bend = fitted_on[0]
    np.testing.assert_array_equal(X, as_data(Xs).rows_by_hash(150, _bend.HASH_SEED))
    assert not whole and not bend.landed and bend.stages
    bound = _bend._MAX_DISPLACEMENT * np.mean(np.sum((Z - X) ** 2, axis=1))
    assert np.mean(np.sum((bend(Z) - X) ** 2, axis=1)) <= bound
    atoms, w = est._fitted_measure()
    b = w / w.sum()
    assert ratio(moved, atoms, b) <= 1.0
    np.testing.assert_allclose(moved.mean(axis=0), b @ atoms, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.cov(moved, rowvar=False, bias=True),
                               np.cov(atoms, rowvar=False, aweights=b, bias=True),
                               rtol=0, atol=1e-10)
    perm = np.random.default_rng(2).permutation(len(Xs))
    np.testing.assert_allclose(est.transform(Xs[perm]), moved[perm], rtol=0, atol=1e-10)
    np.testing.assert_array_equal(fitted_on[1][0], X)  # the same rows, in the same order


def test_the_fit_stops_when_its_work_is_spent(blobs, monkeypatch):
    """A work cap of 30 energy reductions of the blobs' fit (400 rows, their atoms, 10-D),
    where the uncapped fit runs more than 100: the fit's reductions stop at the cap (L-BFGS
    may finish the line search of its last iteration: a few more), and the plan lands the
    set from where the bend left it."""
    est, Xs, *_ = blobs
    atoms, w = est._fitted_measure()
    counted = {"energy": 0, "landing": 0}
    energy, landing = _bend._Target.energy, _bend._Target.landing

    def counting_energy(self, Z):
        counted["energy"] += 1
        return energy(self, Z)

    def counting_landing(self, Z, distance=None):
        counted["landing"] += distance is None  # a landing check that runs a reduction
        return landing(self, Z, distance)

    monkeypatch.setattr(_bend._Target, "energy", counting_energy)
    monkeypatch.setattr(_bend._Target, "landing", counting_landing)
    est.transform(Xs)
    assert counted["energy"] - counted["landing"] > 100
    per_reduction = len(Xs) * (len(Xs) + len(np.unique(atoms, axis=0))) * Xs.shape[1]
    monkeypatch.setattr(_bend, "_MAX_WORK", 30 * per_reduction)
    counted.update(energy=0, landing=0)
    bends = recorded_bends(monkeypatch)
    moved = est.transform(Xs)
    assert not bends[0][-1].landed and bends[0][-1].stages
    assert counted["energy"] - counted["landing"] <= 30 + 20
    b = w / w.sum()
    assert ratio(moved, atoms, b) <= 1.0


def test_a_measure_on_one_point_takes_every_row_to_it():
    """One particle: no spread to compare with; the Gaussian map sends every row onto it,
    which lands (no division by the zero spread, no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the fit's, not transform's
        est = IFTSampler(n_particles=1, max_iter=5, random_state=0).fit(
            np.random.default_rng(0).normal(size=(50, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = est.transform(np.random.default_rng(1).normal(size=(20, 3)) + 4.0)
    np.testing.assert_allclose(moved, np.repeat(est.particles_, 20, axis=0), rtol=0, atol=1e-12)


def test_a_large_set_is_aligned_by_its_own_moments_whatever_the_fit_rows(monkeypatch):
    """More features than the bend's fit rows (30 against 20): the set is still aligned by
    the Gaussian map of all its rows (scipy's square roots here), not projected onto the
    span of the 20 rows, and the plan then lands it with the fitted moments exact."""
    rng = np.random.default_rng(3)
    target = rng.normal(size=(400, 30)) @ np.diag(np.linspace(0.5, 2.0, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = IFTSampler(n_particles=100, max_iter=50, random_state=0).fit(target)
    source = rng.normal(size=(200, 30)) * 1.5 + 1.0
    monkeypatch.setattr(_matching, "WHOLE_ROWS", 100)
    monkeypatch.setattr(_matching, "FIT_ROWS", 20)
    plans = []
    original = _matching._Plan

    def spy(*args):
        plans.append(original(*args))
        return plans[-1]

    monkeypatch.setattr(_matching, "_Plan", spy)
    moved = est.transform(source)
    atoms, w = est._fitted_measure()
    b = w / w.sum()
    align = plans[0].align
    np.testing.assert_allclose(source @ align.A + align.c,
                               dense_gaussian_map(source, atoms, b), rtol=0, atol=1e-8)
    assert np.linalg.matrix_rank(align.A) == 30
    np.testing.assert_allclose(np.cov(moved, rowvar=False, bias=True),
                               np.cov(atoms, rowvar=False, aweights=b, bias=True),
                               rtol=0, atol=1e-10)
