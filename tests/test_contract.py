"""The scikit-learn estimator contract of design.md section 2: estimator checks, clone,
pickle, Pipeline, GridSearchCV (n_jobs=1 and 2, NumPy and KeOps), reproducibility, dtypes,
fitted attributes, warnings."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skgradflow import IFTSampler
from skgradflow._backends import AUTO_KEOPS_MIN_WORK, keops_available
from skgradflow.metrics import energy_distance, make_distribution_scorer

FITTED = (
    "particles_",
    "weights_",
    "bandwidth_",
    "step_size_",
    "n_iter_",
    "loss_curve_",
    "converged_",
    "backend_",
    "n_features_in_",
)


def small(**params):
    """A fast, deterministic sampler: NumPy backend, few particles and iterations."""
    kw = dict(n_particles=20, max_iter=15, backend="numpy", random_state=0)
    kw.update(params)
    return IFTSampler(**kw)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(60, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]


def quiet_fit(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kwargs)


# --- scikit-learn's own checks --------------------------------------------------------------
def _expected_failed_checks(estimator):
    return {
        "check_methods_subset_invariance": (
            "by design: transform moves the points of a set as one interacting measure "
            "(see IFTSampler.transform), so a row's image depends on the other rows"
        )
    }


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    [IFTSampler(n_particles=20, max_iter=20)],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_subset_invariance_really_fails_by_design(data):
    """The expected failure above is real: the image of a row depends on its companions."""
    est = quiet_fit(small(), data)
    Z = data[:10] + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        whole = est.transform(Z)
        part = est.transform(Z[:5])
    assert not np.allclose(whole[:5], part)


# --- clone, pickle, Pipeline ----------------------------------------------------------------
def test_constructor_stores_parameters_only():
    init = np.zeros((20, 3))
    est = IFTSampler(n_particles=20, bandwidth=0.7, beta=2.0, init=init, random_state=3)
    assert est.get_params()["bandwidth"] == 0.7
    assert est.get_params()["init"] is init
    assert not [k for k in vars(est) if k.endswith("_")]


def test_clone_keeps_params_and_drops_fitted_state(data):
    est = quiet_fit(small(bandwidth=0.8, beta=0.5, kernel="imq"), data)
    cl = clone(est)
    assert cl.get_params() == est.get_params()
    for name in FITTED:
        assert hasattr(est, name)
        assert not hasattr(cl, name), name


def test_pickle_round_trip(data):
    est = quiet_fit(small(), data)
    est2 = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(est2.particles_, est.particles_)
    np.testing.assert_array_equal(est2.weights_, est.weights_)
    np.testing.assert_array_equal(est2.sample(30, random_state=0), est.sample(30, random_state=0))
    held_out = data[::2] + 0.1
    assert est2.score(held_out) == est.score(held_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        np.testing.assert_array_equal(est2.transform(held_out), est.transform(held_out))


def test_pipeline_fit_transform_score(data):
    pipe = Pipeline([("scale", StandardScaler()), ("ift", small())])
    quiet_fit(pipe, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Zt = pipe.transform(data[:15])
    assert Zt.shape == (15, 3)
    assert np.all(np.isfinite(Zt))
    # the particles live in the scaled space
    ift = pipe.named_steps["ift"]
    assert np.all(np.abs(ift.particles_.mean(axis=0)) < 1.0)
    s = pipe.score(data)
    assert isinstance(s, float) and np.isfinite(s) and s <= 0.0
    # Pipeline.score scores the scaled data with the sampler
    assert s == pytest.approx(ift.score(pipe.named_steps["scale"].transform(data)))
    names = pipe.get_feature_names_out(["a", "b", "c"])
    assert list(names) == ["a", "b", "c"]


# --- sample, reproducibility ----------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 100])
def test_sample_shape_and_reproducible(data, n):
    est = quiet_fit(small(), data)
    a = est.sample(n, random_state=11)
    b = est.sample(n, random_state=11)
    assert a.shape == (n, data.shape[1])
    np.testing.assert_array_equal(a, b)
    # every draw is an atom of the fitted measure
    for row in a:
        assert np.any(np.all(est.particles_ == row, axis=1))


def test_sample_seeds_differ_and_default_is_one_sample(data):
    est = quiet_fit(small(), data)
    assert est.sample().shape == (1, data.shape[1])
    assert not np.array_equal(est.sample(50, random_state=0), est.sample(50, random_state=1))
    rs = np.random.RandomState(5)
    assert est.sample(3, random_state=rs).shape == (3, data.shape[1])


def test_sample_follows_the_weights(data):
    est = quiet_fit(small(), data)
    w = np.zeros(est.n_particles)
    w[[3, 8]] = [0.25, 0.75]
    est.weights_ = w
    draws = est.sample(4000, random_state=0)
    is3 = np.all(draws == est.particles_[3], axis=1)
    is8 = np.all(draws == est.particles_[8], axis=1)
    assert np.all(is3 | is8)
    assert abs(is8.mean() - 0.75) < 0.03


@pytest.mark.parametrize("init", ["gaussian", "subsample"])
def test_same_random_state_same_fit(data, init):
    a = quiet_fit(small(init=init, random_state=42), data)
    b = quiet_fit(small(init=init, random_state=42), data)
    np.testing.assert_array_equal(a.particles_, b.particles_)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    c = quiet_fit(small(init=init, random_state=43), data)
    assert not np.array_equal(a.particles_, c.particles_)


def test_random_state_instance_reproducible(data):
    a = quiet_fit(small(random_state=np.random.RandomState(1)), data)
    b = quiet_fit(small(random_state=np.random.RandomState(1)), data)
    np.testing.assert_array_equal(a.particles_, b.particles_)


# --- dtypes, weights, attributes ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(data, dtype):
    X = data.astype(dtype)
    est = quiet_fit(small(), X)
    assert est.particles_.dtype == dtype
    assert est.sample(5, random_state=0).dtype == dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Z = est.transform(X[:10])
    assert Z.dtype == dtype
    assert np.isfinite(est.score(X))


def test_float32_close_to_float64(data):
    a = quiet_fit(small(max_iter=5), data)
    b = quiet_fit(small(max_iter=5), data.astype(np.float32))
    np.testing.assert_allclose(b.particles_, a.particles_, atol=1e-3)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "imq", "energy"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 10.0])
def test_weights_on_the_simplex(data, kernel, beta):
    est = quiet_fit(small(kernel=kernel, beta=beta, max_iter=10), data)
    w = est.weights_
    assert w.shape == (20,)
    assert abs(w.sum() - 1.0) <= 1e-10
    assert np.all(w >= 0.0)
    if beta == 0.0:
        np.testing.assert_array_equal(w, np.full(20, 1 / 20))


def test_weighted_target_weights_on_simplex(data):
    sw = np.random.default_rng(0).uniform(0, 3, size=data.shape[0])
    sw[:10] = 0.0
    est = quiet_fit(small(beta=5.0, max_iter=10), data, sample_weight=sw)
    assert abs(est.weights_.sum() - 1.0) <= 1e-10
    assert np.all(est.weights_ >= 0.0)


def test_fitted_attributes(data):
    est = quiet_fit(small(max_iter=7, tol=0.0), data)
    for name in FITTED:
        assert hasattr(est, name), name
    assert not hasattr(est, "feature_names_in_")
    assert est.particles_.shape == (20, 3)
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


def test_explicit_parameters_are_reported(data):
    est = quiet_fit(small(bandwidth=0.9, step_size=0.05, max_iter=3), data)
    assert est.bandwidth_ == 0.9
    assert est.step_size_ == 0.05


def test_loss_curve_is_the_energy(data):
    """loss_curve_[-1] is ½ MMD² between the fitted measure and the data."""
    from skgradflow.metrics import mmd

    est = quiet_fit(small(bandwidth=1.3, max_iter=10), data)
    half_mmd2 = 0.5 * mmd(
        est.particles_, data, bandwidth=1.3, x_weights=est.weights_, backend="numpy"
    )
    assert est.loss_curve_[-1] == pytest.approx(half_mmd2, rel=1e-6, abs=1e-12)


def test_feature_names_in_from_dataframe(data):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(data, columns=["u", "v", "w"])
    est = quiet_fit(small(), df)
    np.testing.assert_array_equal(est.feature_names_in_, ["u", "v", "w"])
    assert est.n_features_in_ == 3
    assert np.isfinite(est.score(df))
    with pytest.warns(UserWarning, match="feature names"):
        est.score(data)


def test_fit_does_not_modify_inputs(data):
    X = np.asfortranarray(data.astype(np.float32))
    X0 = X.copy()
    sw = np.linspace(0.5, 2.0, X.shape[0])
    sw0 = sw.copy()
    init = np.random.default_rng(1).normal(size=(20, 3))
    init0 = init.copy()
    est = quiet_fit(small(init=init, beta=2.0), X, sample_weight=sw)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(sw, sw0)
    np.testing.assert_array_equal(init, init0)
    assert not np.shares_memory(est.particles_, init)
    Z = X[:10].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = est.transform(Z)
    np.testing.assert_array_equal(Z, X0[:10])
    assert not np.shares_memory(out, Z)
    est.score(Z, sample_weight=sw[:10])
    np.testing.assert_array_equal(sw, sw0)


def test_sample_weight_matters(data):
    sw = np.ones(data.shape[0])
    a = quiet_fit(small(), data, sample_weight=sw)
    b = quiet_fit(small(), data)
    np.testing.assert_allclose(a.particles_, b.particles_)
    sw[data[:, 0] < 0] = 1e-3
    c = quiet_fit(small(max_iter=30), data, sample_weight=sw)
    assert c.particles_[:, 0] @ c.weights_ > b.particles_[:, 0] @ b.weights_


# --- warnings -------------------------------------------------------------------------------
def test_convergence_warning_when_max_iter_too_small(data):
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        est = small(max_iter=3).fit(data)
    assert not est.converged_
    assert est.n_iter_ == 3


def test_no_convergence_warning_when_tol_is_met(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = small(max_iter=500, tol=0.5).fit(data)
    assert est.converged_
    assert est.n_iter_ < 500
    assert est.loss_curve_.shape == (est.n_iter_ + 1,)


# --- GridSearchCV ---------------------------------------------------------------------------
GRID = {"bandwidth": [0.5, 1.0], "beta": [0.0, 1.0]}


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_numpy(data, n_jobs):
    search = GridSearchCV(small(max_iter=10), GRID, cv=2, n_jobs=n_jobs, error_score="raise")
    quiet_fit(search, data)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (4,)
    assert np.all(np.isfinite(scores))
    assert search.best_params_ in search.cv_results_["params"]
    assert search.best_estimator_.backend_ == "numpy"


# Large enough that backend="auto" picks KeOps in every fold: "auto" estimates the work of
# a run as 2 * max_iter reductions of n_particles * (n_particles + n_targets) kernel
# entries (1600 targets per training fold).  tol=1 stops every run after the first full
# pair of energy windows (about 20 iterations), so the searches stay fast.
KEOPS_PARTICLES = 600
KEOPS_ROWS = 3200
KEOPS_PARAMS = {"n_particles": KEOPS_PARTICLES, "max_iter": 200, "tol": 1.0, "random_state": 0}
needs_keops = pytest.mark.skipif(not keops_available(), reason="KeOps cannot compile here")


def _keops_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(KEOPS_ROWS, 2))


def test_keops_grid_is_above_the_auto_threshold():
    fold = KEOPS_ROWS // 2
    work = 2 * KEOPS_PARAMS["max_iter"] * KEOPS_PARTICLES * (KEOPS_PARTICLES + fold)
    assert work >= AUTO_KEOPS_MIN_WORK


def _backend_checking_scorer(estimator, X, y=None):
    # runs inside every fold: the fold's fit must have used KeOps
    if estimator.backend_ != "keops":
        raise AssertionError(f"fold fitted with backend {estimator.backend_!r}")
    atoms, w = estimator._fitted_measure()
    return -energy_distance(atoms, X, x_weights=w)


@needs_keops
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
    X = _keops_data()
    est = IFTSampler(**KEOPS_PARAMS)
    search = GridSearchCV(est, GRID, cv=2, n_jobs=n_jobs, scoring=scoring, error_score="raise")
    quiet_fit(search, X)
    assert search.best_estimator_.backend_ == "keops"
    assert search.best_estimator_.n_iter_ < KEOPS_PARAMS["max_iter"]
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (4,)
    assert np.all(np.isfinite(scores))
    assert np.all(scores <= 0.0)


_COLD_SEARCH = textwrap.dedent(
    """
    import json, os, sys, warnings
    import numpy as np
    import pykeops
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV
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
        IFTSampler(**params),
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
        + [json.dumps(v) for v in (KEOPS_ROWS, KEOPS_PARAMS, GRID)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "keops"
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
    assert {backend for _, backend, _ in rows} == {"keops"}
    assert len({pid for pid, _, _ in rows}) == 2
    assert {folder for _, _, folder in rows} == {result["build_folder"]}
