"""The scikit-learn estimator contract of section 2 of the design page (docs/design.md), for
all three estimators: estimator checks, clone, pickle, Pipeline, GridSearchCV (n_jobs=1 and
2, NumPy and KeOps), reproducibility, dtypes, fitted attributes, warnings."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow
from skgradflow.backends import AUTO_KEOPS_MIN_WORK
from skgradflow.metrics import make_distribution_scorer, mmd
from tests.helpers import EstimatorSpec, keops_usable, needs_keops, needs_numba, numba_usable

# fitted by every estimator, besides its atoms and its own extras
COMMON_FITTED = (
    "weights_",
    "bandwidth_",
    "step_size_",
    "n_iter_",
    "loss_curve_",
    "converged_",
    "backend_",
    "n_features_in_",
)


@dataclass(frozen=True)
class Spec(EstimatorSpec):
    """How to build and inspect one estimator class."""

    inits: tuple  # the string values of init
    extra_fitted: tuple = ()

    @property
    def fitted(self) -> tuple:
        return (self.atoms, *COMMON_FITTED, *self.extra_fitted)

    def make(self, **params):
        """A fast, deterministic estimator: NumPy backend, few atoms and iterations."""
        kw = {self.n_atoms: 20, "max_iter": 15, "backend": "numpy", "random_state": 0}
        kw.update(params)
        return self.cls(**kw)

    def grid(self) -> dict:
        bandwidths = [0.5, 1.0] if self.is_sampler else [0.3, 0.6]
        return {"bandwidth": bandwidths, "beta": [0.0, 1.0]}


IFT = Spec(IFTSampler, "n_particles", "particles_", ("gaussian", "subsample"))
WFR = Spec(WFRMMDFlow, "n_particles", "particles_", ("gaussian", "subsample"), ("total_mass_",))
KL = Spec(InclusiveKLFitter, "n_components", "means_", ("kmeans++", "subsample"))
SPECS = [IFT, WFR, KL]
SAMPLERS = [s for s in SPECS if s.is_sampler]


def each(specs=SPECS):
    return pytest.mark.parametrize("spec", specs, ids=lambda s: s.name)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(60, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]


def quietly(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with ConvergenceWarnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, **kwargs)


def quiet_fit(est, *args, **kwargs):
    return quietly(est.fit, *args, **kwargs)


def atoms_of(est) -> np.ndarray:
    return est.means_ if hasattr(est, "means_") else est.particles_


def outputs(est, Z) -> dict:
    """Everything a fitted estimator computes deterministically from ``Z``."""
    out = {"sample": est.sample(30, random_state=0), "score": est.score(Z)}
    if hasattr(est, "transform"):
        out["transform"] = quietly(est.transform, Z)
    if hasattr(est, "score_samples"):
        out["score_samples"] = est.score_samples(Z)
    return out


# --- scikit-learn's own checks --------------------------------------------------------------
def _expected_failed_checks(estimator):
    if not hasattr(estimator, "transform"):
        return {}  # InclusiveKLFitter: every check must pass
    return {
        "check_methods_subset_invariance": (
            "by design: transform computes its map from the whole set (see the "
            "docstring of transform), so a row's image depends on the other rows"
        )
    }


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    [
        IFTSampler(n_particles=20, max_iter=20),
        WFRMMDFlow(n_particles=20, max_iter=20),
        InclusiveKLFitter(n_components=5, max_iter=20),
        InclusiveKLFitter(n_components=5, covariance="data", max_iter=20),
        InclusiveKLFitter(n_components=3, covariance="full", max_iter=10),
        InclusiveKLFitter(n_components=3, covariance="tied", max_iter=10),
        # the defaults themselves (atoms adapted to the data, the annealed bandwidth, all
        # their iterations): integer weights and repeated rows are the same data once
        # repeated rows are merged, so the sample-weight check holds bit for bit
        IFTSampler(),
        WFRMMDFlow(),
        InclusiveKLFitter(),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@each(SAMPLERS)
def test_subset_invariance_really_fails_by_design(spec, data):
    """The expected failure above is real: the image of a row depends on its companions."""
    est = quiet_fit(spec.make(), data)
    Z = data[:10] + 0.5
    whole = quietly(est.transform, Z)
    part = quietly(est.transform, Z[:5])
    assert not np.allclose(whole[:5], part)


# --- clone, pickle, Pipeline ----------------------------------------------------------------
@each()
def test_constructor_stores_parameters_only(spec):
    init = np.zeros((20, 3))
    est = spec.cls(**{spec.n_atoms: 20}, bandwidth=0.7, beta=2.0, init=init, random_state=3)
    assert est.get_params()["bandwidth"] == 0.7
    assert est.get_params()[spec.n_atoms] == 20
    assert est.get_params()["init"] is init
    assert not [k for k in vars(est) if k.endswith("_")]


@each()
def test_clone_keeps_params_and_drops_fitted_state(spec, data):
    params = dict(bandwidth=0.8, beta=0.5, **({"kernel": "imq"} if spec.is_sampler else {}))
    est = quiet_fit(spec.make(**params), data)
    cl = clone(est)
    assert cl.get_params() == est.get_params()
    for name in spec.fitted:
        assert hasattr(est, name), name
        assert not hasattr(cl, name), name


@each()
def test_pickle_round_trip(spec, data):
    est = quiet_fit(spec.make(), data)
    est2 = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(atoms_of(est2), atoms_of(est))
    np.testing.assert_array_equal(est2.weights_, est.weights_)
    held_out = data[::2] + 0.1
    before, after = outputs(est, held_out), outputs(est2, held_out)
    assert before.keys() == after.keys()
    # sample, score and score_samples, and transform for the samplers
    assert len(before) == (4 if spec.is_sampler else 3)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


@each()
def test_pipeline_fit_transform_score(spec, data):
    pipe = Pipeline([("scale", StandardScaler()), ("est", spec.make())])
    quiet_fit(pipe, data)
    est = pipe.named_steps["est"]
    scaled = pipe.named_steps["scale"].transform(data)
    # the atoms live in the scaled space
    assert np.all(np.abs(atoms_of(est).mean(axis=0)) < 1.0)
    s = pipe.score(data)
    assert isinstance(s, float) and np.isfinite(s)
    # Pipeline.score scores the scaled data with the final estimator
    assert s == pytest.approx(est.score(scaled))
    if spec.is_sampler:
        assert s <= 0.0  # minus an energy distance
        Zt = quietly(pipe.transform, data[:15])
        assert Zt.shape == (15, 3)
        assert np.all(np.isfinite(Zt))
        names = pipe.get_feature_names_out(["a", "b", "c"])
        assert list(names) == ["a", "b", "c"]
    else:
        ss = pipe.score_samples(data[:15])
        assert ss.shape == (15,)
        np.testing.assert_allclose(ss, est.score_samples(scaled[:15]))
        assert s == pytest.approx(est.score_samples(scaled).mean())


# --- sample, reproducibility ----------------------------------------------------------------
@each()
@pytest.mark.parametrize("n", [1, 7, 100])
def test_sample_shape_and_reproducible(spec, data, n):
    est = quiet_fit(spec.make(), data)
    a = est.sample(n, random_state=11)
    b = est.sample(n, random_state=11)
    assert a.shape == (n, data.shape[1])
    np.testing.assert_array_equal(a, b)
    atoms = atoms_of(est)
    dist = np.linalg.norm(a[:, None, :] - atoms[None, :, :], axis=2).min(axis=1)
    if spec.is_sampler:
        # new points, not copies of the particles; the copies on request
        assert np.all(dist > 0.0)
        copies = est.sample(n, random_state=11, method="particles")
        dist = np.linalg.norm(copies[:, None, :] - atoms[None, :, :], axis=2).min(axis=1)
        assert np.all(dist == 0.0)
    else:
        # an atom plus N(0, h² I) noise: never an atom, never far from one
        assert np.all(dist > 0.0)
        assert np.all(dist < 8.0 * est.bandwidth_)


@each()
def test_sample_seeds_differ_and_default_is_one_sample(spec, data):
    est = quiet_fit(spec.make(), data)
    assert est.sample().shape == (1, data.shape[1])
    assert not np.array_equal(est.sample(50, random_state=0), est.sample(50, random_state=1))
    rs = np.random.RandomState(5)
    assert est.sample(3, random_state=rs).shape == (3, data.shape[1])


@each()
def test_sample_follows_the_weights(spec, data):
    est = quiet_fit(spec.make(), data)
    w = np.zeros(20)
    w[[3, 8]] = [0.25, 0.75]
    est.weights_ = w
    if spec.is_sampler:  # weighted copies of the particles (new points: test_sampling.py)
        draws = est.sample(4000, random_state=0, method="particles")
    else:
        est.bandwidth_ = 1e-12  # no noise to speak of: draws are (almost) atoms
        draws = est.sample(4000, random_state=0)
    atoms = atoms_of(est)
    is3 = np.all(np.abs(draws - atoms[3]) <= 1e-9, axis=1)
    is8 = np.all(np.abs(draws - atoms[8]) <= 1e-9, axis=1)
    assert np.all(is3 | is8)
    assert abs(is8.mean() - 0.75) < 0.03


def test_mixture_sample_noise_has_the_bandwidth(data):
    """InclusiveKLFitter draws from the mixture: the chosen atom plus N(0, h² I)."""
    est = quiet_fit(KL.make(), data)
    w = np.zeros(20)
    w[5] = 1.0
    est.weights_ = w
    noise = est.sample(20000, random_state=0) - est.means_[5]
    h = est.bandwidth_
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=0.05 * h)
    np.testing.assert_allclose(noise.std(axis=0), h, rtol=0.03)


SEEDED_INITS = [pytest.param(s, init, id=f"{s.name}-{init}") for s in SPECS for init in s.inits]


@pytest.mark.parametrize("spec, init", SEEDED_INITS)
def test_same_random_state_same_fit(spec, init, data):
    a = quiet_fit(spec.make(init=init, random_state=42), data)
    b = quiet_fit(spec.make(init=init, random_state=42), data)
    np.testing.assert_array_equal(atoms_of(a), atoms_of(b))
    np.testing.assert_array_equal(a.weights_, b.weights_)
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    c = quiet_fit(spec.make(init=init, random_state=43), data)
    assert not np.array_equal(atoms_of(a), atoms_of(c))


@each()
def test_random_state_instance_reproducible(spec, data):
    a = quiet_fit(spec.make(random_state=np.random.RandomState(1)), data)
    b = quiet_fit(spec.make(random_state=np.random.RandomState(1)), data)
    np.testing.assert_array_equal(atoms_of(a), atoms_of(b))
    np.testing.assert_array_equal(a.weights_, b.weights_)


# --- dtypes, weights, attributes ----------------------------------------------------------
@each()
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(spec, data, dtype):
    X = data.astype(dtype)
    est = quiet_fit(spec.make(), X)
    assert atoms_of(est).dtype == dtype
    assert est.weights_.dtype == np.float64  # documented: weights are float64
    assert est.sample(5, random_state=0).dtype == dtype
    if spec.is_sampler:
        assert quietly(est.transform, X[:10]).dtype == dtype
    else:
        ss = est.score_samples(X[:10])
        assert ss.dtype == dtype
        assert np.all(np.isfinite(ss))
    assert np.isfinite(est.score(X))


@each()
def test_float32_close_to_float64(spec, data):
    a = quiet_fit(spec.make(max_iter=5), data)
    b = quiet_fit(spec.make(max_iter=5), data.astype(np.float32))
    np.testing.assert_allclose(atoms_of(b), atoms_of(a), atol=1e-3)
    np.testing.assert_allclose(b.weights_, a.weights_, atol=1e-4)


SIMPLEX_CASES = [
    pytest.param(s, kernel, beta, id=f"{s.name}-{kernel}-beta={beta}")
    for s in SPECS
    for kernel in (["gaussian", "laplacian", "imq", "energy"] if s.is_sampler else [None])
    for beta in [0.0, 1.0, 10.0]
]


@pytest.mark.parametrize("spec, kernel, beta", SIMPLEX_CASES)
def test_weights_on_the_simplex(spec, data, kernel, beta):
    # from a draw of the rows, with equal weights (the mixture's k-means start weights its
    # atoms by their clusters: tests/mixture)
    params = {"kernel": kernel} if kernel else {}
    est = quiet_fit(spec.make(beta=beta, max_iter=10, init="subsample", **params), data)
    w = est.weights_
    assert w.shape == (20,)
    assert abs(w.sum() - 1.0) <= 1e-10
    assert np.all(w >= 0.0)
    if beta == 0.0:
        np.testing.assert_array_equal(w, np.full(20, 1 / 20))
    else:
        assert not np.allclose(w, 1 / 20)


@each()
def test_weighted_target_weights_on_simplex(spec, data):
    sw = np.random.default_rng(0).uniform(0, 3, size=data.shape[0])
    sw[:10] = 0.0
    with warnings.catch_warnings():
        # zero weights are legal: no log(0) or 0/0 warning may leak out
        warnings.simplefilter("error", RuntimeWarning)
        est = quiet_fit(spec.make(beta=5.0, max_iter=10), data, sample_weight=sw)
    assert abs(est.weights_.sum() - 1.0) <= 1e-10
    assert np.all(est.weights_ >= 0.0)


@each()
def test_fitted_attributes(spec, data):
    est = quiet_fit(spec.make(max_iter=7, tol=0.0), data)
    for name in spec.fitted:
        assert hasattr(est, name), name
    assert not hasattr(est, "feature_names_in_")
    assert atoms_of(est).shape == (20, 3)
    assert est.weights_.shape == (20,)
    assert isinstance(est.bandwidth_, float) and est.bandwidth_ > 0
    assert isinstance(est.step_size_, float) and est.step_size_ > 0
    assert est.n_iter_ == 7
    assert isinstance(est.converged_, (bool, np.bool_)) and not est.converged_
    assert est.loss_curve_.shape == (est.n_iter_ + 1,)
    assert np.all(np.isfinite(est.loss_curve_))
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    assert est.backend_ == "numpy"
    assert est.n_features_in_ == 3
    if "total_mass_" in spec.fitted:
        assert isinstance(est.total_mass_, float)
        assert est.total_mass_ == pytest.approx(1.0, abs=1e-10)


def test_wfr_total_mass_when_mass_is_not_conserved(data):
    est = quiet_fit(WFR.make(conserve_mass=False, beta=5.0, max_iter=10), data)
    assert np.all(np.isfinite(est.weights_)) and np.all(est.weights_ >= 0.0)
    assert isinstance(est.total_mass_, float)
    assert est.total_mass_ == pytest.approx(est.weights_.sum(), rel=1e-12)
    assert abs(est.total_mass_ - 1.0) > 1e-6  # the mass did evolve


@each()
def test_explicit_parameters_are_reported(spec, data):
    est = quiet_fit(spec.make(bandwidth=0.9, step_size=0.05, max_iter=3), data)
    assert est.bandwidth_ == 0.9
    assert est.step_size_ == 0.05


@each()
@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "sample_weight"])
def test_loss_curve_is_the_objective(spec, data, weighted):
    """loss_curve_[-1] is ½ MMD² between the fitted measure and the data (samplers), or
    the negative mean log-likelihood of the data under the fitted mixture."""
    sw = np.linspace(0.2, 3.0, data.shape[0]) if weighted else None
    est = quiet_fit(spec.make(bandwidth=1.3, max_iter=10), data, sample_weight=sw)
    if spec.is_sampler:
        objective = 0.5 * mmd(
            est.particles_,
            data,
            bandwidth=1.3,
            x_weights=est.weights_,
            y_weights=sw,
            backend="numpy",
        )
    else:
        objective = -est.score(data, sample_weight=sw)
        if est.covariance_mode_ in ("tied", "full"):
            # plus the learnt shapes' reg_covar term, (reg/2) Σ_i tr(Σ̂ C_i⁻¹) in the units
            # of X, Σ̂ the regularised covariance the fit whitened by (P Pᵀ = Σ̂⁻¹)
            P = est._whiten[1]
            shapes = np.reshape(est.covariances_, (-1, data.shape[1], data.shape[1]))
            sigma = np.linalg.inv(P @ P.T)
            objective += 0.5 * est.reg_covar * sum(
                np.trace(sigma @ np.linalg.inv(C)) for C in shapes)
    assert est.loss_curve_[-1] == pytest.approx(objective, rel=1e-6, abs=1e-12)


@each()
def test_feature_names_in_from_dataframe(spec, data):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(data, columns=["u", "v", "w"])
    est = quiet_fit(spec.make(), df)
    np.testing.assert_array_equal(est.feature_names_in_, ["u", "v", "w"])
    assert est.n_features_in_ == 3
    assert np.isfinite(est.score(df))
    with pytest.warns(UserWarning, match="feature names"):
        est.score(data)


@each()
def test_fit_does_not_modify_inputs(spec, data):
    X = np.asfortranarray(data.astype(np.float32))
    X0 = X.copy()
    sw = np.linspace(0.5, 2.0, X.shape[0])
    sw0 = sw.copy()
    init = np.random.default_rng(1).normal(size=(20, 3))
    init0 = init.copy()
    est = quiet_fit(spec.make(init=init, beta=2.0), X, sample_weight=sw)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(sw, sw0)
    np.testing.assert_array_equal(init, init0)
    assert not np.shares_memory(atoms_of(est), init)
    Z = X[:10].copy()
    if spec.is_sampler:
        out = quietly(est.transform, Z)
        assert not np.shares_memory(out, Z)
    else:
        est.score_samples(Z)
    np.testing.assert_array_equal(Z, X0[:10])
    est.score(Z, sample_weight=sw[:10])
    np.testing.assert_array_equal(sw, sw0)
    np.testing.assert_array_equal(Z, X0[:10])


@each()
def test_sample_weight_matters(spec, data):
    sw = np.ones(data.shape[0])
    a = quiet_fit(spec.make(), data, sample_weight=sw)
    b = quiet_fit(spec.make(), data)
    np.testing.assert_allclose(atoms_of(a), atoms_of(b))
    sw[data[:, 0] < 0] = 1e-3
    c = quiet_fit(spec.make(max_iter=30), data, sample_weight=sw)
    assert atoms_of(c)[:, 0] @ c.weights_ > atoms_of(b)[:, 0] @ b.weights_


# --- warnings -------------------------------------------------------------------------------
@each()
def test_convergence_warning_when_max_iter_too_small(spec, data):
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        est = spec.make(max_iter=3).fit(data)
    assert not est.converged_
    assert est.n_iter_ == 3


@each()
def test_no_convergence_warning_when_tol_is_met(spec, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = spec.make(max_iter=500, tol=0.5).fit(data)
    assert est.converged_
    assert est.n_iter_ < 500
    assert est.loss_curve_.shape == (est.n_iter_ + 1,)


@each()
def test_tol_zero_runs_exactly_max_iter_without_warning(spec, data):
    """tol=0 means "run exactly max_iter iterations": not converging is then no news."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = spec.make(max_iter=25, tol=0.0).fit(data)
    assert est.n_iter_ == 25
    assert not est.converged_
    assert est.loss_curve_.shape == (26,)


# --- GridSearchCV ---------------------------------------------------------------------------
@each()
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_numpy(spec, data, n_jobs):
    search = GridSearchCV(
        spec.make(max_iter=10), spec.grid(), cv=2, n_jobs=n_jobs, error_score="raise"
    )
    quiet_fit(search, data)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (4,)
    assert np.all(np.isfinite(scores))
    assert search.best_params_ in search.cv_results_["params"]
    assert search.best_estimator_.backend_ == "numpy"
    # each candidate's score is the estimator's own score on the held-out fold, the same in
    # worker processes (n_jobs=2) as here: recompute the first candidate's by hand
    folds = KFold(2).split(data)
    by_hand = []
    for train, test in folds:
        fitted = quiet_fit(spec.make(max_iter=10).set_params(**search.cv_results_["params"][0]),
                           data[train])
        by_hand.append(fitted.score(data[test]))
    np.testing.assert_allclose(scores[0], np.mean(by_hand), rtol=1e-12)


# Large enough that backend="auto" picks KeOps in every fold.  "auto" compares the work of
# a run, _reductions_per_iteration * max_iter reductions, with AUTO_KEOPS_MIN_WORK: for the
# samplers each reduction pairs n_particles with the sources [particles; targets] (1600
# targets per training fold), for the mixture n_components atoms with the targets.  tol=1
# stops every run after the first full pair of windows (about 20 iterations), so the
# searches stay fast.
KEOPS_ROWS = 3200
KEOPS_PARAMS = {
    "IFTSampler": {"n_particles": 600, "max_iter": 200, "tol": 1.0, "random_state": 0},
    "WFRMMDFlow": {"n_particles": 600, "max_iter": 200, "tol": 1.0, "random_state": 0},
    "InclusiveKLFitter": {"n_components": 300, "max_iter": 300, "tol": 1.0, "random_state": 0},
}


def _keops_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(KEOPS_ROWS, 2))


@each()
def test_keops_grid_is_above_the_auto_threshold(spec):
    params = KEOPS_PARAMS[spec.name]
    n_atoms, fold = params[spec.n_atoms], KEOPS_ROWS // 2
    sources = n_atoms + fold if spec.is_sampler else fold
    work = spec.cls._reductions_per_iteration * params["max_iter"] * n_atoms * sources
    assert work >= AUTO_KEOPS_MIN_WORK


# what backend="auto" picks for large runs: KeOps, or the Numba backend where it is installed
COMPILED = ("keops-", "numba-")


def _backend_checking_scorer(estimator, X, y=None):
    # runs inside every fold: the fold's fit must have used a compiled backend
    if not estimator.backend_.startswith(COMPILED):
        raise AssertionError(f"fold fitted with backend {estimator.backend_!r}")
    return estimator.score(X)


def _search_keops(spec, n_jobs, scoring, backend="auto"):
    X = _keops_data()
    est = spec.cls(**KEOPS_PARAMS[spec.name], backend=backend)
    search = GridSearchCV(
        est, spec.grid(), cv=2, n_jobs=n_jobs, scoring=scoring, error_score="raise"
    )
    quiet_fit(search, X)
    expected = COMPILED if backend == "auto" else (f"{backend}-",)
    assert search.best_estimator_.backend_.startswith(expected)
    assert search.best_estimator_.n_iter_ < KEOPS_PARAMS[spec.name]["max_iter"]
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (4,)
    assert np.all(np.isfinite(scores))
    return scores


@pytest.mark.skipif(not (keops_usable() or numba_usable()), reason="no compiled backend here")
@pytest.mark.parametrize(
    "n_jobs, scoring",
    [
        (1, None),
        (1, _backend_checking_scorer),
        (2, make_distribution_scorer("mmd", bandwidth=1.0)),
    ],
    ids=["n_jobs=1", "n_jobs=1-backend-checking-scorer", "n_jobs=2-mmd-scorer"],
)
def test_grid_search_keops(n_jobs, scoring):
    """backend="auto" on a large run: KeOps or Numba, in one process or two."""
    scores = _search_keops(IFT, n_jobs, scoring)
    assert np.all(scores <= 0.0)


@needs_keops
@each([WFR, KL])
def test_grid_search_keops_n_jobs_2(spec):
    """The other two estimators on KeOps in two worker processes, every fold checked."""
    scores = _search_keops(spec, 2, _backend_checking_scorer, backend="keops")
    if spec.is_sampler:
        assert np.all(scores <= 0.0)  # minus an energy distance


_COLD_SEARCH = textwrap.dedent(
    """
    import json, os, sys, warnings
    import numpy as np
    import pykeops
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, KFold
    from skgradflow import IFTSampler
    from skgradflow.metrics import energy_distance

    warnings.simplefilter("ignore", ConvergenceWarning)
    pid_file, rows, params, grid = sys.argv[1], *map(json.loads, sys.argv[2:])

    def scorer(estimator, X, y=None):
        with open(pid_file, "a") as fh:
            fh.write(f"{os.getpid()} {estimator.backend_} {pykeops.get_build_folder()}\\n")
        atoms, w = estimator._fitted_measure()
        return -energy_distance(atoms, X, x_weights=w)

    X = np.random.default_rng(0).normal(size=(rows, 2))
    search = GridSearchCV(
        IFTSampler(**params, backend="keops"),
        grid, cv=2, n_jobs=2, scoring=scorer, error_score="raise",
    ).fit(X)
    print(json.dumps({
        "backend": search.best_estimator_.backend_,
        "scores": search.cv_results_["mean_test_score"].tolist(),
        "build_folder": pykeops.get_build_folder(),
    }))
    """
)


@needs_keops
def test_grid_search_keops_n_jobs_2_cold_cache(tmp_path):
    """GridSearchCV(n_jobs=2) on an empty KeOps cache: both workers compile the same new
    formulas at the same time (the race of getkeops/keops#168)."""
    cache = tmp_path / "keops-cache"
    cache.mkdir()
    pid_file = tmp_path / "pids.txt"
    env = dict(os.environ, KEOPS_CACHE_FOLDER=str(cache), PYKEOPS_VERBOSE="0")
    proc = subprocess.run(
        [sys.executable, "-c", _COLD_SEARCH, str(pid_file)]
        + [json.dumps(v) for v in (KEOPS_ROWS, KEOPS_PARAMS[IFT.name], IFT.grid())],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"].startswith("keops-")
    assert len(result["scores"]) == 4
    assert np.all(np.isfinite(result["scores"]))
    # the build folder was the fresh one, and the formulas were compiled into it
    assert result["build_folder"].startswith(str(cache))
    built = os.listdir(result["build_folder"])
    assert any(name.endswith(".so") for name in built), built
    # the compile guard took its file lock in that folder
    assert any("lock" in name for name in built), built
    # every fold ran on KeOps, in two worker processes other than the parent
    rows = [line.split() for line in pid_file.read_text().splitlines()]
    assert len(rows) == 8
    assert {backend for _, backend, _ in rows} == {result["backend"]}
    assert len({pid for pid, _, _ in rows}) == 2
    assert {folder for _, _, folder in rows} == {result["build_folder"]}


# --- numbers of atoms adapted to the data -----------------------------------------------------
@pytest.mark.parametrize(
    "cls, n_rows, zeros, expected",
    [(IFTSampler, 40, 0, 40), (IFTSampler, 40, 15, 25), (IFTSampler, 900, 0, 500),
     # the mixture under 20 distinct rows: one per three (from 20 on it is chosen on
     # held-out rows, tests/mixture/test_selection.py)
     (WFRMMDFlow, 60, 0, 60), (InclusiveKLFitter, 19, 0, 7), (InclusiveKLFitter, 30, 12, 6)],
)
def test_auto_number_of_atoms(cls, n_rows, zeros, expected):
    X = np.random.default_rng(0).normal(size=(n_rows, 2))
    sw = np.ones(n_rows)
    sw[:zeros] = 0.0
    est = cls(max_iter=3, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=sw)
    assert atoms_of(est).shape == (expected, 2)
    assert est.weights_.shape == (expected,)
    # an init array sets the number under "auto"
    init = np.random.default_rng(1).normal(size=(7, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert atoms_of(cls(init=init, max_iter=3).fit(X)).shape == (7, 2)


def test_auto_counts_distinct_rows_so_weights_equal_repetitions():
    X = np.random.default_rng(0).normal(size=(30, 2))
    sw = np.random.default_rng(1).integers(0, 3, size=30).astype(float)
    repeated = np.repeat(X, sw.astype(int), axis=0)
    for cls in (IFTSampler, InclusiveKLFitter):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            a = cls(max_iter=3, random_state=0).fit(X, sample_weight=sw)
            b = cls(max_iter=3, random_state=0).fit(repeated)
        assert atoms_of(a).shape == atoms_of(b).shape
        assert atoms_of(a).shape[0] == -(-np.count_nonzero(sw) // cls._auto_samples_per_atom)


def test_the_mixture_works_on_50_samples_with_its_defaults():
    X = np.random.default_rng(0).normal(size=(50, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = InclusiveKLFitter(random_state=0).fit(X)
    assert np.isfinite(est.score(X)) and est.loss_curve_[-1] <= est.loss_curve_[0]


_COLD_NUMBA_SEARCH = textwrap.dedent(
    """
    import json, os, sys, warnings
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, KFold
    from skgradflow import InclusiveKLFitter

    warnings.simplefilter("ignore", ConvergenceWarning)
    pid_file = sys.argv[1]

    def scorer(estimator, X, y=None):
        with open(pid_file, "a") as fh:
            fh.write(f"{os.getpid()} {estimator.backend_}\\n")
        return estimator.score(X)

    X = np.random.default_rng(0).normal(size=(400, 2))
    search = GridSearchCV(
        InclusiveKLFitter(n_components=30, max_iter=5, tol=0, random_state=0, backend="numba"),
        {"bandwidth": [0.3, 0.6], "beta": [0.0, 1.0]},
        cv=2, n_jobs=2, scoring=scorer, error_score="raise",
    ).fit(X)
    print(json.dumps({"scores": search.cv_results_["mean_test_score"].tolist()}))
    """
)


@needs_numba
def test_grid_search_numba_n_jobs_2_cold_cache(tmp_path):
    """GridSearchCV(n_jobs=2) on an empty Numba cache: both workers compile the same loops
    and write them to the same cache at the same time."""
    cache = tmp_path / "numba-cache"
    pid_file = tmp_path / "pids.txt"
    proc = subprocess.run(
        [sys.executable, "-c", _COLD_NUMBA_SEARCH, str(pid_file)],
        env=dict(os.environ, NUMBA_CACHE_DIR=str(cache)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    scores = json.loads(proc.stdout.strip().splitlines()[-1])["scores"]
    assert len(scores) == 4 and np.all(np.isfinite(scores))
    rows = [line.split() for line in pid_file.read_text().splitlines()]
    assert len(rows) == 8 and {backend for _, backend in rows} == {"numba-cpu"}
    assert len({pid for pid, _ in rows}) == 2
    assert any(cache.rglob("*.nbi"))  # the compiled loops went to the fresh cache
