"""Bad input (design.md section 3): every public entry point fails with a ValueError or
TypeError whose message names the argument; a diverging flow never returns NaN."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from skgradflow import IFTSampler
from skgradflow.metrics import energy_distance, make_distribution_scorer, mmd

BAD = (ValueError, TypeError)


def small(**params):
    kw = dict(n_particles=10, max_iter=5, backend="numpy", random_state=0)
    kw.update(params)
    return IFTSampler(**kw)


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(3).normal(size=(40, 2))


@pytest.fixture(scope="module")
def fitted(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return small().fit(X)


def with_value(X, value, where=(0, 1)):
    out = np.array(X, dtype=float, copy=True)
    out[where] = value
    return out


# --- X ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_fit_non_finite_X(X, value):
    with pytest.raises(ValueError, match=r"\bX\b.*(NaN|infinity)"):
        small().fit(with_value(X, value))


@pytest.mark.parametrize("method", ["transform", "score"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_transform_score_non_finite_X(fitted, X, method, value):
    with pytest.raises(ValueError, match=r"\bX\b.*(NaN|infinity)"):
        getattr(fitted, method)(with_value(X[:10], value))


def test_fit_1d_X(X):
    with pytest.raises(ValueError, match=r"\bX\b.*2D array"):
        small().fit(X[:, 0])


def test_fit_3d_X(X):
    with pytest.raises(ValueError, match=r"\bX\b.*dim 3"):
        small().fit(X[:, :, None])


@pytest.mark.parametrize("method", ["transform", "score"])
def test_transform_score_wrong_ndim(fitted, X, method):
    with pytest.raises(ValueError, match=r"\bX\b.*2D array"):
        getattr(fitted, method)(X[:, 0])
    with pytest.raises(ValueError, match=r"\bX\b.*dim 3"):
        getattr(fitted, method)(X[:, :, None])


@pytest.mark.parametrize("n_rows", [0, 1])
def test_fit_fewer_than_two_samples(X, n_rows):
    with pytest.raises(ValueError, match=rf"\bX\b.*{n_rows} sample\(s\).*minimum of 2"):
        small().fit(X[:n_rows])


@pytest.mark.parametrize("method", ["transform", "score"])
@pytest.mark.parametrize("n_features", [1, 3])
def test_n_features_differs_from_fit(fitted, method, n_features):
    Z = np.zeros((5, n_features))
    with pytest.raises(ValueError, match=rf"X has {n_features} features.*expecting 2"):
        getattr(fitted, method)(Z)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_X_not_supported(X, fitted, fmt):
    S = sp.random(40, 2, density=0.5, format=fmt, random_state=0)
    match = r"(?i)sparse.*not supported|not support sparse"
    with pytest.raises(TypeError, match=match) as info:
        small().fit(S)
    assert "X" in str(info.value)
    with pytest.raises(TypeError, match=match):
        fitted.transform(S)
    with pytest.raises(TypeError, match=match):
        fitted.score(S)


def test_non_numeric_X():
    with pytest.raises(BAD):
        small().fit(np.array([["a", "b"], ["c", "d"], ["e", "f"]]))


# --- sample_weight -----------------------------------------------------------------------
def test_negative_sample_weight(X):
    sw = np.ones(len(X))
    sw[3] = -0.1
    with pytest.raises(ValueError, match="sample_weight"):
        small().fit(X, sample_weight=sw)


def test_all_zero_sample_weight(X):
    with pytest.raises(ValueError, match="sample_weight"):
        small().fit(X, sample_weight=np.zeros(len(X)))


@pytest.mark.parametrize("length", [39, 41])
def test_wrong_length_sample_weight(X, length):
    with pytest.raises(ValueError, match="sample_weight"):
        small().fit(X, sample_weight=np.ones(length))


def test_non_finite_sample_weight(X):
    with pytest.raises(ValueError, match="sample_weight"):
        small().fit(X, sample_weight=with_value(np.ones(len(X)), np.nan, where=0))


def test_bad_sample_weight_in_score(fitted, X):
    Z = X[:10]
    with pytest.raises(ValueError, match="sample_weight"):
        fitted.score(Z, sample_weight=-np.ones(10))
    with pytest.raises(ValueError, match="sample_weight"):
        fitted.score(Z, sample_weight=np.zeros(10))
    with pytest.raises(ValueError, match="sample_weight"):
        fitted.score(Z, sample_weight=np.ones(9))


# --- hyper-parameters --------------------------------------------------------------------
@pytest.mark.parametrize(
    "param, value",
    [
        ("bandwidth", 0.0),
        ("bandwidth", -1.0),
        ("bandwidth", np.nan),
        ("bandwidth", "mean"),
        ("step_size", 0.0),
        ("step_size", -0.1),
        ("step_size", "fast"),
        ("alpha", -1.0),
        ("beta", -0.5),
        ("kernel", "rbf"),
        ("kernel", None),
        ("backend", "torch"),
        ("backend", "gpu"),
        ("init", "kmeans"),
        ("n_particles", 0),
        ("n_particles", -3),
        ("n_particles", 2.5),
        ("weight_steps", 0),
        ("max_iter", 0),
        ("tol", -1e-3),
        ("batch_size", 0),
    ],
)
def test_bad_hyper_parameter(X, param, value):
    with pytest.raises(BAD, match=rf"\b{param}\b"):
        small(**{param: value}).fit(X)


@pytest.mark.parametrize("shape", [(9, 2), (11, 2), (10, 3), (10,), (10, 2, 1)])
def test_init_array_wrong_shape(X, shape):
    with pytest.raises(ValueError, match=r"init.*\(10, 2\)"):
        small(init=np.zeros(shape)).fit(X)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_init_array_not_finite(X, value):
    init = with_value(np.zeros((10, 2)), value, where=(4, 0))
    with pytest.raises(ValueError, match=r"\binit\b.*finite"):
        small(init=init).fit(X)


def test_energy_kernel_needs_conserved_mass(X):
    with pytest.raises(ValueError, match=r"kernel='energy'.*conserve_mass"):
        small(kernel="energy", conserve_mass=False).fit(X)


# --- sample and the unfitted estimator ---------------------------------------------------
@pytest.mark.parametrize("n_samples", [0, -1, 2.5, "3", None])
def test_sample_bad_n_samples(fitted, n_samples):
    with pytest.raises(BAD, match="n_samples"):
        fitted.sample(n_samples)


@pytest.mark.parametrize("method", ["sample", "transform", "score"])
def test_not_fitted(X, method):
    args = () if method == "sample" else (X,)
    with pytest.raises(NotFittedError):
        getattr(small(), method)(*args)


def test_scorer_not_fitted(X):
    with pytest.raises(NotFittedError):
        make_distribution_scorer()(small(), X)


def test_bad_scorer_metric():
    with pytest.raises(ValueError, match="metric"):
        make_distribution_scorer("wasserstein")


# --- metrics ------------------------------------------------------------------------------
METRICS = [mmd, energy_distance]


@pytest.mark.parametrize("metric", METRICS)
def test_metric_feature_mismatch(X, metric):
    with pytest.raises(ValueError, match=r"\bX\b.*\bY\b.*features"):
        metric(X, np.zeros((5, 3)))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_metric_non_finite(X, metric, value):
    with pytest.raises(ValueError, match=r"\bX\b.*(NaN|infinity)"):
        metric(with_value(X, value), X)
    with pytest.raises(ValueError, match=r"\bY\b.*(NaN|infinity)"):
        metric(X, with_value(X, value))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("name", ["x_weights", "y_weights"])
def test_metric_bad_weights(X, metric, name):
    neg = np.ones(len(X))
    neg[0] = -1.0
    for bad in (neg, np.zeros(len(X)), np.ones(len(X) - 1)):
        with pytest.raises(ValueError, match=name):
            metric(X, X, **{name: bad})


@pytest.mark.parametrize("metric", METRICS)
def test_metric_bad_backend(X, metric):
    with pytest.raises(ValueError, match="backend"):
        metric(X, X, backend="gpu")


@pytest.mark.parametrize("kernel", ["rbf", None, "Gaussian"])
def test_mmd_bad_kernel(X, kernel):
    with pytest.raises(ValueError, match="kernel"):
        mmd(X, X, kernel=kernel)


@pytest.mark.parametrize("bandwidth", [0.0, -1.0, np.nan, np.inf, "mean", None, [1.0]])
def test_mmd_bad_bandwidth(X, bandwidth):
    with pytest.raises(BAD, match="bandwidth"):
        mmd(X, X, bandwidth=bandwidth)


# --- a step size that is far too large ------------------------------------------------------
@pytest.mark.parametrize("kernel", ["gaussian", "energy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("step_size", [1e8, 1e300])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_huge_step_size_never_gives_nan(X, kernel, dtype, step_size, beta):
    """Either a clear error that names step_size, or finite particles and a warning."""
    est = small(kernel=kernel, step_size=step_size, beta=beta, max_iter=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            est.fit(X.astype(dtype))
        except (ValueError, FloatingPointError) as exc:
            assert "step_size" in str(exc)
            assert not hasattr(est, "particles_")
            return
    assert np.all(np.isfinite(est.particles_))
    assert np.all(np.isfinite(est.weights_))
    assert abs(est.weights_.sum() - 1.0) <= 1e-10 and np.all(est.weights_ >= 0)
    assert np.all(np.isfinite(est.loss_curve_))
    assert any("step_size" in str(w.message) for w in caught), [str(w.message) for w in caught]
