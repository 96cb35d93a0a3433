"""Bad input (section 3 of the design page, docs/design.md), for all three estimators:
every public entry point fails with a ValueError or TypeError whose message names the
argument; a diverging flow never returns NaN."""

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow
from skgradflow.metrics import energy_distance, make_distribution_scorer, mmd
from tests.helpers import EstimatorSpec

BAD = (ValueError, TypeError)


@dataclass(frozen=True)
class Spec(EstimatorSpec):
    """How to build one estimator class, and which methods take data once fitted."""

    methods: tuple  # the fitted methods that take X

    def make(self, **params):
        kw = {self.n_atoms: 10, "max_iter": 5, "backend": "numpy", "random_state": 0}
        kw.update(params)
        return self.cls(**kw)


IFT = Spec(IFTSampler, "n_particles", "particles_", ("transform", "score"))
WFR = Spec(WFRMMDFlow, "n_particles", "particles_", ("transform", "score"))
KL = Spec(InclusiveKLFitter, "n_components", "means_", ("score_samples", "score"))
SPECS = [IFT, WFR, KL]
SAMPLERS = [s for s in SPECS if s.is_sampler]


def each(specs=SPECS):
    return pytest.mark.parametrize("spec", specs, ids=lambda s: s.name)


# every (estimator, fitted method that takes X)
SPEC_METHODS = [pytest.param(s, m, id=f"{s.name}.{m}") for s in SPECS for m in s.methods]


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(3).normal(size=(40, 2))


@pytest.fixture(scope="module")
def fitted_by_name(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {s.name: s.make().fit(X) for s in SPECS}


@pytest.fixture
def fitted(spec, fitted_by_name):
    return fitted_by_name[spec.name]


def with_value(X, value, where=(0, 1)):
    out = np.array(X, dtype=float, copy=True)
    out[where] = value
    return out


# --- X ---------------------------------------------------------------------------------
@each()
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_fit_non_finite_X(spec, X, value):
    with pytest.raises(ValueError, match=r"\bX\b.*(NaN|infinity)"):
        spec.make().fit(with_value(X, value))


@pytest.mark.parametrize("spec, method", SPEC_METHODS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_methods_non_finite_X(fitted, X, method, value):
    with pytest.raises(ValueError, match=r"\bX\b.*(NaN|infinity)"):
        getattr(fitted, method)(with_value(X[:10], value))


@each()
def test_fit_1d_X(spec, X):
    with pytest.raises(ValueError, match=r"\bX\b.*2D array"):
        spec.make().fit(X[:, 0])


@each()
def test_fit_3d_X(spec, X):
    with pytest.raises(ValueError, match=r"\bX\b.*dim 3"):
        spec.make().fit(X[:, :, None])


@pytest.mark.parametrize("spec, method", SPEC_METHODS)
def test_methods_wrong_ndim(fitted, X, method):
    with pytest.raises(ValueError, match=r"\bX\b.*2D array"):
        getattr(fitted, method)(X[:, 0])
    with pytest.raises(ValueError, match=r"\bX\b.*dim 3"):
        getattr(fitted, method)(X[:, :, None])


@each()
@pytest.mark.parametrize("n_rows", [0, 1])
def test_fit_fewer_than_two_samples(spec, X, n_rows):
    with pytest.raises(ValueError, match=rf"\bX\b.*{n_rows} sample\(s\).*minimum of 2"):
        spec.make().fit(X[:n_rows])


@pytest.mark.parametrize("spec, method", SPEC_METHODS)
@pytest.mark.parametrize("n_features", [1, 3])
def test_n_features_differs_from_fit(fitted, method, n_features):
    Z = np.zeros((5, n_features))
    with pytest.raises(ValueError, match=rf"X has {n_features} features.*expecting 2"):
        getattr(fitted, method)(Z)


@each()
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_X_not_supported(spec, X, fitted, fmt):
    S = sp.random(40, 2, density=0.5, format=fmt, random_state=0)
    match = r"(?i)sparse.*not supported|not support sparse"
    with pytest.raises(TypeError, match=match) as info:
        spec.make().fit(S)
    assert "X" in str(info.value)
    for method in spec.methods:
        with pytest.raises(TypeError, match=match):
            getattr(fitted, method)(S)


@each()
def test_non_numeric_X(spec):
    with pytest.raises(BAD):
        spec.make().fit(np.array([["a", "b"], ["c", "d"], ["e", "f"]]))


# --- sample_weight -----------------------------------------------------------------------
@each()
def test_negative_sample_weight(spec, X):
    sw = np.ones(len(X))
    sw[3] = -0.1
    with pytest.raises(ValueError, match="sample_weight"):
        spec.make().fit(X, sample_weight=sw)


@each()
def test_all_zero_sample_weight(spec, X):
    with pytest.raises(ValueError, match="sample_weight"):
        spec.make().fit(X, sample_weight=np.zeros(len(X)))


@each()
@pytest.mark.parametrize("length", [39, 41])
def test_wrong_length_sample_weight(spec, X, length):
    with pytest.raises(ValueError, match="sample_weight"):
        spec.make().fit(X, sample_weight=np.ones(length))


@each()
def test_non_finite_sample_weight(spec, X):
    with pytest.raises(ValueError, match="sample_weight"):
        spec.make().fit(X, sample_weight=with_value(np.ones(len(X)), np.nan, where=0))


@each()
def test_bad_sample_weight_in_score(spec, fitted, X):
    Z = X[:10]
    with pytest.raises(ValueError, match="sample_weight"):
        fitted.score(Z, sample_weight=-np.ones(10))
    with pytest.raises(ValueError, match="sample_weight"):
        fitted.score(Z, sample_weight=np.zeros(10))
    with pytest.raises(ValueError, match="sample_weight"):
        fitted.score(Z, sample_weight=np.ones(9))


# --- hyper-parameters --------------------------------------------------------------------
def _bad_params(spec):
    cases = [
        ("bandwidth", 0.0),
        ("bandwidth", -1.0),
        ("bandwidth", np.nan),
        ("bandwidth", "mean"),
        ("step_size", 0.0),
        ("step_size", -0.1),
        ("step_size", "fast"),
        ("alpha", -1.0),
        ("beta", -0.5),
        ("backend", "torch"),
        ("backend", "gpu"),
        ("init", "k-means"),
        (spec.n_atoms, 0),
        (spec.n_atoms, -3),
        (spec.n_atoms, 2.5),
        ("max_iter", 0),
        ("tol", -1e-3),
        ("batch_size", 0),
    ]
    if spec.is_sampler:
        cases += [("kernel", "rbf"), ("kernel", None), ("conserve_mass", "yes")]
    else:
        cases += [("init", "gaussian")]  # a sampler's init, not the mixture's
    if spec is IFT:
        cases += [("weight_steps", 0)]
    return [pytest.param(spec, p, v, id=f"{spec.name}-{p}={v!r}") for p, v in cases]


@pytest.mark.parametrize("spec, param, value", [c for s in SPECS for c in _bad_params(s)])
def test_bad_hyper_parameter(X, spec, param, value):
    with pytest.raises(BAD, match=rf"\b{param}\b"):
        spec.make(**{param: value}).fit(X)


@each()
@pytest.mark.parametrize("rule", ["median", "scott", "silverman"])
def test_bandwidth_rules_are_accepted(spec, X, rule):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = spec.make(bandwidth=rule).fit(X)
    assert isinstance(est.bandwidth_, float)
    assert np.isfinite(est.bandwidth_) and est.bandwidth_ > 0


@each()
@pytest.mark.parametrize("shape", [(9, 2), (11, 2), (10, 3), (10,), (10, 2, 1)])
def test_init_array_wrong_shape(spec, X, shape):
    with pytest.raises(ValueError, match=r"init.*\(10, 2\)") as info:
        spec.make(init=np.zeros(shape)).fit(X)
    assert spec.n_atoms in str(info.value)


@each()
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_init_array_not_finite(spec, X, value):
    init = with_value(np.zeros((10, 2)), value, where=(4, 0))
    with pytest.raises(ValueError, match=r"\binit\b.*finite"):
        spec.make(init=init).fit(X)


@each(SAMPLERS)
def test_energy_kernel_needs_conserved_mass(spec, X):
    with pytest.raises(ValueError, match=r"kernel='energy'.*conserve_mass"):
        spec.make(kernel="energy", conserve_mass=False).fit(X)


@pytest.mark.parametrize("init", ["kmeans++", "kmeans"])
def test_kmeans_init_needs_enough_samples(X, init):
    with pytest.raises(ValueError, match=rf"init='{re.escape(init)}'.*\bn_components\b.*41"):
        KL.make(n_components=41, init=init).fit(X)
    # only rows of positive weight count
    sw = np.ones(len(X))
    sw[:15] = 0.0
    with pytest.raises(ValueError, match=r"\bn_components\b.*30"):
        KL.make(n_components=30, init=init).fit(X, sample_weight=sw)
    # init="subsample" draws rows with replacement: no limit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = KL.make(n_components=41, init="subsample").fit(X)
    assert est.means_.shape == (41, 2)


# --- sample and the unfitted estimator ---------------------------------------------------
@each()
@pytest.mark.parametrize("n_samples", [0, -1, 2.5, "3", None])
def test_sample_bad_n_samples(fitted, n_samples):
    with pytest.raises(BAD, match="n_samples"):
        fitted.sample(n_samples)


NOT_FITTED = [pytest.param(s, m, id=f"{s.name}.{m}") for s in SPECS for m in ("sample", *s.methods)]


@pytest.mark.parametrize("spec, method", NOT_FITTED)
def test_not_fitted(spec, X, method):
    args = () if method == "sample" else (X,)
    with pytest.raises(NotFittedError):
        getattr(spec.make(), method)(*args)


@each()
def test_scorer_not_fitted(spec, X):
    with pytest.raises(NotFittedError):
        make_distribution_scorer()(spec.make(), X)


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
HUGE_STEP_CASES = [
    pytest.param(s, kernel, id=f"{s.name}-{kernel}" if kernel else s.name)
    for s in SPECS
    for kernel in (["gaussian", "energy"] if s.is_sampler else [None])
]


@pytest.mark.parametrize("spec, kernel", HUGE_STEP_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("step_size", [1e8, 1e300])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_huge_step_size_never_gives_nan(X, spec, kernel, dtype, step_size, beta):
    """Either a clear error that names step_size, or finite atoms and a warning."""
    params = {"kernel": kernel} if kernel else {}
    if spec is KL:
        # the isotropic step, which a huge step can break; the learnt shapes' steps are
        # implicit, an EM iteration as the step grows (tests/mixture/test_covariance.py)
        params["covariance"] = "isotropic"
    est = spec.make(step_size=step_size, beta=beta, max_iter=8, **params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            est.fit(X.astype(dtype))
        except (ValueError, FloatingPointError) as exc:
            assert "step_size" in str(exc)
            assert not hasattr(est, spec.atoms)
            return
    assert np.all(np.isfinite(getattr(est, spec.atoms)))
    assert np.all(np.isfinite(est.weights_))
    assert abs(est.weights_.sum() - 1.0) <= 1e-10 and np.all(est.weights_ >= 0)
    assert np.all(np.isfinite(est.loss_curve_))
    assert any("step_size" in str(w.message) for w in caught), [str(w.message) for w in caught]
