"""InclusiveKLFitter(covariance="data" | "tied" | "full") against independent computations: the
isotropic flow on whitened data, scipy's gaussian_kde, dense Gaussian densities and finite
differences of the log-likelihood."""

import pickle
import warnings

import numpy as np
import pytest
from scipy.stats import gaussian_kde, multivariate_normal
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError

from skgradflow import InclusiveKLFitter
from skgradflow.backends import NumpyBackend, resolve_backend
from skgradflow.backends._protocol import HostTargets
from skgradflow.callbacks import PathRecorder
from tests.helpers import BACKENDS
from tests.oracles import (
    dense_em_fraction_step,
    dense_log_likelihood,
    dense_tied_step,
    dense_weight_step,
)


def correlated(n, rng, rho=0.95, scale=(3.0, 0.5)):
    """A thin, tilted 2-D Gaussian cloud in two clusters."""
    cov = np.array([[1.0, rho], [rho, 1.0]]) * np.outer(scale, scale)
    centres = rng.choice([-1.0, 1.0], size=n)[:, None] * np.array([2.0, 0.0])
    return centres + rng.multivariate_normal(np.zeros(2), cov, size=n)


def whitener(X, b, reg):
    """Mean and upper triangular ``P`` (``P Pᵀ = Σ̂⁻¹``) of the regularised weighted
    covariance, computed as scipy.stats.gaussian_kde defines Σ̂."""
    cov = np.atleast_2d(np.cov(X.T, aweights=b, bias=False))
    cov = cov + reg * np.trace(cov) / X.shape[1] * np.eye(X.shape[1])
    return b @ X / b.sum(), np.linalg.inv(np.linalg.cholesky(cov)).T, cov


@pytest.fixture
def data(rng):
    X = correlated(80, rng)
    raw = rng.uniform(0.5, 1.5, size=80)
    x0 = X[rng.choice(80, 6, replace=False)] + 0.1
    return X, raw / raw.sum(), raw, x0


def test_data_mode_is_the_isotropic_flow_on_whitened_data(data, rng):
    X, b, raw, x0 = data
    mean, P, cov = whitener(X, b, 1e-6)
    params = dict(n_components=6, bandwidth=0.4, step_size=0.05, max_iter=4, tol=0,
                  backend="numpy")
    shaped = InclusiveKLFitter(covariance="data", init=x0, **params).fit(X, sample_weight=raw)
    iso = InclusiveKLFitter(covariance="isotropic", init=(x0 - mean) @ P, **params).fit(
        (X - mean) @ P, sample_weight=raw)
    half_log_det = 0.5 * np.linalg.slogdet(cov)[1]
    np.testing.assert_allclose(shaped.means_, iso.means_ @ np.linalg.inv(P) + mean, rtol=1e-10)
    np.testing.assert_allclose(shaped.weights_, iso.weights_, rtol=1e-10)
    np.testing.assert_allclose(shaped.loss_curve_, iso.loss_curve_ + half_log_det, rtol=1e-10)
    X_test = correlated(30, rng)
    np.testing.assert_allclose(shaped.score_samples(X_test),
                               iso.score_samples((X_test - mean) @ P) - half_log_det,
                               rtol=1e-10)
    np.testing.assert_allclose(shaped.covariances_, 0.16 * cov, rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_data_mode_without_flow_is_scipy_gaussian_kde(data, rng, weighted):
    X, _, raw, _ = data
    sw = raw if weighted else None
    kde = gaussian_kde(X.T, weights=sw)
    kl = InclusiveKLFitter(n_components=len(X), covariance="data", bandwidth=kde.factor,
                           reg_covar=1e-15, alpha=0.0, beta=0.0, init=X, max_iter=1, tol=0,
                           backend="numpy").fit(X, sample_weight=sw)
    if weighted:  # the weights of the atoms are the initial uniform ones: reweight them
        kl.weights_ = raw / raw.sum()
    X_test = correlated(40, rng)
    np.testing.assert_allclose(kl.score_samples(X_test), kde.logpdf(X_test.T), rtol=1e-9)
    np.testing.assert_allclose(kl.covariances_, kde.covariance, rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shaped_reductions_match_dense_densities(rng, backend, dtype):
    d, n, m = 3, 5, 40
    # (densities, moments, moments' absolute floor)
    rtol, rtol_moments, atol = (1e-12, 1e-11, 1e-14) if dtype == np.float64 else (2e-4, 2e-4,
                                                                                1e-5)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    A = rng.normal(size=(n, d, d))
    C = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(d)
    w = rng.dirichlet(np.ones(n))
    b = rng.dirichlet(np.ones(m))
    P = np.linalg.inv(np.linalg.cholesky(C)).swapaxes(1, 2)
    log_det = np.log(np.diagonal(P, axis1=1, axis2=2)).sum(1)
    dens = np.stack([multivariate_normal(x[i], C[i]).pdf(y) for i in range(n)], axis=1)
    targets = HostTargets(resolve_backend(backend, 1), y.astype(dtype), b.astype(dtype))
    x, P, log_det = x.astype(dtype), P.astype(dtype), log_det.astype(dtype)
    L = targets.log_mixture_shaped(x, P, np.log(w).astype(dtype) + log_det)
    assert L.dtype == np.float64  # the Targets contract: log μ in float64
    np.testing.assert_allclose(L - 0.5 * d * np.log(2 * np.pi), np.log(dens @ w), rtol=rtol)
    R, F, M = targets.responsibility_moments_shaped(x, P, log_det, L)
    assert R.dtype == F.dtype == M.dtype == dtype  # the moments in the dtype of the data
    E = b[:, None] * dens / (dens @ w)[:, None]  # b_m N(y_m; x_i, C_i) / μ(y_m)
    r = y[:, None, :] - x[None, :, :].astype(np.float64)
    np.testing.assert_allclose(R, E.sum(0), rtol=rtol)
    np.testing.assert_allclose(w @ R, 1.0, rtol=rtol)  # Σ_i w_i R_i = Σ_m b_m
    np.testing.assert_allclose(F, np.einsum("mi,mid->id", E, r), rtol=rtol_moments, atol=atol)
    np.testing.assert_allclose(M, np.einsum("mi,mid,mie->ide", E, r, r), rtol=rtol_moments,
                               atol=atol)
    mass, first, none = targets.responsibility_moments_shaped(x, P, log_det, L, second=False)
    assert none is None
    np.testing.assert_allclose(mass, R, rtol=rtol)
    np.testing.assert_allclose(first, F, rtol=rtol_moments, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_shared_shape_reduces_as_the_dense_densities(rng, backend, dtype):
    """``P`` of shape ``(1, d, d)`` (a tied mixture): the engines' isotropic reductions in the
    coordinates ``P`` whitens, against dense Gaussians of that one covariance; a large
    log-determinant (``a = 200 + ...``, which ``exp`` overflows in float32) is taken out
    before any exponential; and the pooled scatter of the tied step from the first moments
    and the targets' second moment, against the dense per-component scatters."""
    from skgradflow.mixture._shaped import pooled_scatter

    d, n, m = 3, 6, 50
    rtol, atol = (1e-11, 1e-13) if dtype == np.float64 else (2e-4, 1e-5)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    A = rng.normal(size=(d, d))
    C = A @ A.T + 0.5 * np.eye(d)
    w, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    P = np.linalg.inv(np.linalg.cholesky(C)).T[None]
    log_det = float(np.log(np.diag(P[0])).sum())
    dens = np.stack([multivariate_normal(x[i], C).pdf(y) for i in range(n)], axis=1)
    engine = resolve_backend(backend, 1)
    targets = HostTargets(engine, y.astype(dtype), b)
    L = targets.log_mixture_shaped(x.astype(dtype), P.astype(dtype),
                                   (np.log(w) + log_det).astype(dtype))
    np.testing.assert_allclose(L - 0.5 * d * np.log(2 * np.pi), np.log(dens @ w), rtol=rtol)
    E = b[:, None] * dens / (dens @ w)[:, None]
    r = y[:, None, :] - x[None, :, :]
    R, F, none = targets.responsibility_moments_shaped(
        x.astype(dtype), P.astype(dtype), np.full(n, log_det, dtype=dtype), L, second=False)
    assert none is None and R.dtype == F.dtype == dtype
    np.testing.assert_allclose(R, E.sum(0), rtol=rtol)
    np.testing.assert_allclose(F, np.einsum("mi,mid->id", E, r), rtol=rtol, atol=atol)
    # a per-point offset far past float32's exponent range, moved into c and back out
    offset = 200.0 + rng.normal(size=n)
    c = (np.log(b) - L - 200.0).astype(dtype)
    mass, first, _ = engine.shaped_moments(x.astype(dtype), P.astype(dtype),
                                           (log_det + offset).astype(dtype), y.astype(dtype),
                                           c, second=False)
    scale = np.exp(offset - 200.0)
    np.testing.assert_allclose(mass, scale * E.sum(0), rtol=10 * rtol)
    np.testing.assert_allclose(first, scale[:, None] * np.einsum("mi,mid->id", E, r),
                               rtol=10 * rtol, atol=atol)
    np.testing.assert_allclose(targets.second_moment(), y.T @ (b[:, None] * y), rtol=rtol)
    pooled = pooled_scatter(targets.second_moment(), x, w, R.astype(np.float64),
                            F.astype(np.float64))
    np.testing.assert_allclose(pooled, np.einsum("i,mi,mid,mie->de", w, E, r, r), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_pooled_scatter_of_a_thin_shape_keeps_its_thin_direction_in_float32(rng, backend):
    """A feature that takes two values (diabetes' sex): the shared shape is a thousand times
    thinner along it than the data, and the pooled scatter, formed by differences about the
    origin from the first moments, keeps that direction from float32 rows, with the atoms
    in float64 as the tied step passes them (with float32 atoms: about 1.2 times the thin
    variance)."""
    from skgradflow.mixture._shaped import pooled_scatter

    m, n = 2000, 8
    y = np.column_stack([rng.normal(size=(m, 2)),
                         rng.integers(0, 2, size=m) + 1e-3 * rng.normal(size=m)])
    x = y[rng.choice(m, n, replace=False)]
    C = np.diag([0.3, 0.3, 1e-6])
    w, b = np.full(n, 1 / n), np.full(m, 1 / m)
    P = np.linalg.inv(np.linalg.cholesky(C)).T[None]
    log_det = float(np.log(np.diag(P[0])).sum())
    log_dens = np.stack([multivariate_normal(x[i], C).logpdf(y) for i in range(n)], axis=1)
    gamma = np.exp(log_dens - np.logaddexp.reduce(log_dens, axis=1)[:, None])  # w uniform
    r = y[:, None, :] - x[None, :, :]
    dense = np.einsum("m,mi,mid,mie->de", b, gamma, r, r)
    targets = HostTargets(resolve_backend(backend, 1), y.astype(np.float32), b)
    L = targets.log_mixture_shaped(x, P, np.log(w) + log_det)
    R, F, _ = targets.responsibility_moments_shaped(x, P, np.full(n, log_det), L,
                                                    second=False)
    assert R.dtype == F.dtype == np.float64
    pooled = pooled_scatter(targets.second_moment(), x, w, R, F)
    thin = np.linalg.eigvalsh(dense)[0]
    assert thin < 1e-5 * np.linalg.eigvalsh(dense)[-1]  # the thin direction is there
    assert np.linalg.eigvalsh(pooled)[0] == pytest.approx(thin, rel=0.05)


def test_keops_leaves_the_shaped_reductions_to_numpy_above_its_dimension_limit(rng):
    """Past ``SHAPED_MAX_DIM`` the KeOps engine runs the base class's blocked NumPy (no
    compile, so this runs without KeOps too)."""
    from skgradflow.backends import KeOpsBackend
    from skgradflow.backends._keops import SHAPED_MAX_DIM

    d, n, m = SHAPED_MAX_DIM + 1, 3, 50
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    P = np.broadcast_to(np.eye(d), (n, d, d)) * rng.uniform(0.5, 1.5, size=(n, 1, 1))
    a, c, logv = rng.normal(size=n), rng.normal(size=m), rng.normal(size=n)
    keops, numpy = KeOpsBackend(device="cpu"), NumpyBackend()
    np.testing.assert_array_equal(keops.shaped_logsumexp(y, x, P, logv),
                                  numpy.shaped_logsumexp(y, x, P, logv))
    for got, expected in zip(keops.shaped_moments(x, P, a, y, c),
                             numpy.shaped_moments(x, P, a, y, c), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_full_gradients_match_finite_differences_of_the_log_likelihood(rng):
    """∂ℓ/∂x_i = w_i C_i⁻¹ F_i and ∂ℓ/∂C_i = ½ w_i G_i, the two halves of the step."""
    d, n, m = 2, 3, 30
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    C = np.stack([np.array([[1.0, 0.3], [0.3, 0.5]]) * s for s in (0.5, 1.0, 2.0)])
    w, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    P = np.linalg.inv(np.linalg.cholesky(C)).swapaxes(1, 2)
    log_det = np.log(np.diagonal(P, axis1=1, axis2=2)).sum(1)
    targets = HostTargets(NumpyBackend(), y, b)
    L = targets.log_mixture_shaped(x, P, np.log(w) + log_det)
    R, F, M = targets.responsibility_moments_shaped(x, P, log_det, L)
    C_inv = np.linalg.inv(C)
    eps = 1e-6
    for i in range(n):
        grad_x = w[i] * C_inv[i] @ F[i]
        G = C_inv[i] @ M[i] @ C_inv[i] - R[i] * C_inv[i]
        for k in range(d):
            xp, xm = x.copy(), x.copy()
            xp[i, k] += eps
            xm[i, k] -= eps
            fd = (dense_log_likelihood(y, b, xp, C, w) - dense_log_likelihood(y, b, xm, C, w))
            assert grad_x[k] == pytest.approx(fd / (2 * eps), rel=1e-6, abs=1e-9)
        # a symmetric perturbation E of C_i: dℓ = tr(∂ℓ/∂C_i E) = ½ w_i tr(G E)
        Sym = np.array([[0.7, -0.2], [-0.2, 0.4]])
        Cp, Cm = C.copy(), C.copy()
        Cp[i] += eps * Sym
        Cm[i] -= eps * Sym
        fd = (dense_log_likelihood(y, b, x, Cp, w) - dense_log_likelihood(y, b, x, Cm, w))
        assert 0.5 * w[i] * np.trace(G @ Sym) == pytest.approx(fd / (2 * eps), rel=1e-6)


def penalty(C, reg, tied=False):
    """The ``reg`` term of the objective, ``(reg/2) Σ_i tr(C_i⁻¹)`` (one shape if tied)."""
    return 0.5 * reg * np.trace(np.linalg.inv(C[:1] if tied else C), axis1=1, axis2=2).sum()


def test_full_transport_is_the_natural_gradient_of_the_likelihood_to_first_order(data):
    """For small t the move of ``(x_i, C_i)`` is ``t/w_i`` times the natural gradient of ``ℓ``
    in the Fisher metric of ``N(x_i, C_i)``: ``C_i ∂ℓ/∂x_i`` and ``2 C_i (∂ℓ/∂C_i) C_i``,
    both from finite differences of the dense log-likelihood (plus ``reg`` on the scatter)."""
    X, b, raw, x0 = data
    h, t, reg = 0.6, 1e-6, 1e-6
    est = InclusiveKLFitter(n_components=6, covariance="full", bandwidth=h, step_size=t,
                            beta=0.0, init=x0, max_iter=1, tol=0, reg_covar=reg,
                            backend="numpy").fit(X, sample_weight=raw)
    mean, P, _ = whitener(X, b, reg)
    y, x = (X - mean) @ P, (x0 - mean) @ P
    C, w = np.repeat(h * h * np.eye(2)[None], 6, axis=0), np.full(6, 1 / 6)
    moved_x = (est.means_ - mean) @ P
    moved_C = P.T @ est.covariances_ @ P
    eps = 1e-6
    for i in range(6):
        grad_x = np.zeros(2)
        for k in range(2):
            xp, xm = x.copy(), x.copy()
            xp[i, k] += eps
            xm[i, k] -= eps
            grad_x[k] = (dense_log_likelihood(y, b, xp, C, w)
                         - dense_log_likelihood(y, b, xm, C, w)) / (2 * eps)
        np.testing.assert_allclose((moved_x[i] - x[i]) / t, C[i] @ grad_x / w[i], rtol=1e-4,
                                   atol=1e-8)
        grad_C = np.zeros((2, 2))
        for j, k in [(0, 0), (1, 1), (0, 1)]:
            Sym = np.zeros((2, 2))
            Sym[j, k] = Sym[k, j] = 1.0
            Cp, Cm = C.copy(), C.copy()
            Cp[i] += eps * Sym
            Cm[i] -= eps * Sym
            # dℓ along Sym = tr(∂ℓ/∂C Sym): the entries of the symmetric gradient
            grad_C[j, k] = grad_C[k, j] = ((dense_log_likelihood(y, b, x, Cp, w)
                                            - dense_log_likelihood(y, b, x, Cm, w))
                                           / (2 * eps) / Sym.sum())
        natural = 2 * C[i] @ grad_C @ C[i] / w[i]
        np.testing.assert_allclose((moved_C[i] - C[i]) / t, natural + reg / w[i] * np.eye(2),
                                   rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("covariance", ["full", "tied"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_learnt_shapes_iterate_towards_their_em_updates(data, backend, covariance):
    """Two iterations against the dense steps above, then the weights' Fisher–Rao step."""
    X, b, raw, x0 = data
    h, tau, alpha, beta, reg = 0.5, 0.7, 1.5, 0.8, 1e-3
    est = InclusiveKLFitter(n_components=6, covariance=covariance, bandwidth=h,
                            step_size=tau, alpha=alpha, beta=beta, init=x0, max_iter=2, tol=0,
                            reg_covar=reg, backend=backend).fit(X, sample_weight=raw)
    dense_step = dense_em_fraction_step if covariance == "full" else dense_tied_step
    mean, P, cov = whitener(X, b, reg)
    y, x = (X - mean) @ P, (x0 - mean) @ P
    C, w = np.repeat(h * h * np.eye(2)[None], 6, axis=0), np.full(6, 1 / 6)
    # the objective: -ℓ plus (reg/2) Σ_i tr(C_i⁻¹), in whitened units
    tied = covariance == "tied"
    losses = [-dense_log_likelihood(y, b, x, C, w) + penalty(C, reg, tied)]
    for _ in range(2):
        x, C = dense_step(y, b, x, C, w, tau * alpha, reg)
        w = dense_weight_step(y, b, x, C, w, tau * beta)
        losses.append(-dense_log_likelihood(y, b, x, C, w) + penalty(C, reg, tied))
    P_inv = np.linalg.inv(P)
    covariances = P_inv.T @ C @ P_inv
    if covariance == "tied":
        assert est.covariances_.shape == (2, 2)
        covariances = covariances[0]
    np.testing.assert_allclose(est.means_, x @ P_inv + mean, rtol=1e-10)
    np.testing.assert_allclose(est.covariances_, covariances, rtol=1e-9)
    np.testing.assert_allclose(est.weights_, w, rtol=1e-10)
    np.testing.assert_allclose(est.loss_curve_, np.array(losses) + 0.5 * np.linalg.slogdet(
        cov)[1], rtol=1e-10)
    # the fitted density, against dense Gaussians in the units of X
    shapes = np.broadcast_to(est.covariances_, (6, 2, 2))
    dens = np.stack([multivariate_normal(est.means_[i], shapes[i]).pdf(X) for i in range(6)],
                    axis=1)
    np.testing.assert_allclose(est.score_samples(X), np.log(dens @ est.weights_), rtol=1e-10)


@pytest.mark.parametrize("covariance", ["full", "tied"])
def test_learnt_shapes_at_a_long_step_are_the_em_m_step(data, covariance):
    """``τα → ∞``: one transport is the M-step of ``GaussianMixture`` of that covariance type
    from the responsibilities of the start (its ``reg_covar`` term below)."""
    X, b, raw, x0 = data
    h, reg = 0.5, 1e-3
    est = InclusiveKLFitter(n_components=6, covariance=covariance, bandwidth=h, alpha=1e12,
                            step_size=1.0, beta=0.0, init=x0, max_iter=1, tol=0,
                            reg_covar=reg, backend="numpy").fit(X, sample_weight=raw)
    _, _, cov = whitener(X, b, reg)
    # EM in the units of X: the start is N(x0_i, h² Σ̂) with weights 1/6
    dens = np.stack([multivariate_normal(x0[i], h * h * cov).pdf(X) for i in range(6)], axis=1)
    gamma = b[:, None] * dens / dens.sum(1)[:, None]
    nk = gamma.sum(0)
    means = gamma.T @ X / nk[:, None]
    r = X[:, None, :] - means[None]
    # reg_covar is relative to Σ̂ (reg I in whitened units); in component i's M-step it
    # weighs reg / nk_i, nk_i = w_i R_i its mass (GaussianMixture adds reg_covar itself)
    if covariance == "full":
        covs = np.einsum("mi,mid,mie->ide", gamma, r, r) / nk[:, None, None]
        covs = covs + (reg / nk)[:, None, None] * cov
    else:
        covs = np.einsum("mi,mid,mie->de", gamma, r, r) / nk.sum() + reg * cov
    np.testing.assert_allclose(est.means_, means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.covariances_, covs, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("covariance", ["tied", "full"])
@pytest.mark.parametrize("step_size", [1.0, 30.0, 1e4])
def test_learnt_shapes_raise_the_likelihood_at_any_step(data, step_size, covariance):
    """The transport is an implicit step: with ``beta=0`` and a fixed step, however long, the
    likelihood never falls (no safeguard acts on a fixed step)."""
    X, _, raw, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "the energy went up" would be a ConvergenceWarning
        est = InclusiveKLFitter(n_components=5, covariance=covariance, bandwidth=0.8,
                                beta=0.0, step_size=step_size, max_iter=25, tol=0, random_state=0,
                                backend="numpy").fit(X, sample_weight=raw)
    assert np.all(np.diff(est.loss_curve_) <= 1e-12)
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    assert np.all(np.linalg.eigvalsh(est.covariances_) > 0)


@pytest.mark.parametrize("covariance", ["data", "full"])
def test_weight_step_is_em_to_first_order(data, covariance):
    X, b, raw, x0 = data
    tau = 1e-5
    est = InclusiveKLFitter(n_components=6, covariance=covariance, bandwidth=0.5, alpha=0.0,
                            step_size=tau, init=x0, max_iter=1, tol=0,
                            backend="numpy").fit(X, sample_weight=raw)
    _, _, cov = whitener(X, b, 1e-6)
    w = np.full(6, 1 / 6)
    dens = np.stack([multivariate_normal(x0[i], 0.25 * cov).pdf(X) for i in range(6)], axis=1)
    em = (b[:, None] * dens * w / (dens @ w)[:, None]).sum(0)  # Σ_m b_m γ_mi
    np.testing.assert_allclose((est.weights_ - w) / tau, em - w, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("covariance", ["data", "tied", "full"])
def test_likelihood_never_decreases_and_weights_stay_on_the_simplex(data, covariance):
    X, _, raw, _ = data
    est = InclusiveKLFitter(n_components=10, covariance=covariance, max_iter=60,
                            random_state=0, backend="numpy").fit(X, sample_weight=raw)
    assert np.all(np.diff(est.loss_curve_) <= 1e-12)
    assert est.loss_curve_[-1] < est.loss_curve_[0]
    assert est.weights_.min() >= 0 and est.weights_.sum() == pytest.approx(1.0)
    cov = est.covariances_
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    objective = -est.score(X, sample_weight=raw)
    if covariance != "data":  # the learnt shapes' objective has the reg_covar term
        _, _, shape = whitener(X, raw / raw.sum(), est.reg_covar)
        inverse = np.linalg.inv(cov if cov.ndim == 3 else cov[None])
        objective += 0.5 * est.reg_covar * np.trace(shape @ inverse, axis1=1, axis2=2).sum()
    assert objective == pytest.approx(est.loss_curve_[-1], rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("covariance", ["data", "tied", "full"])
def test_finite_in_dimension_64(rng, dtype, covariance):
    X = (rng.normal(size=(150, 64)) @ rng.normal(size=(64, 64))).astype(dtype)
    est = InclusiveKLFitter(n_components=5, covariance=covariance, max_iter=4, tol=0,
                            random_state=0, backend="numpy").fit(X)
    assert est.means_.dtype == dtype
    assert np.all(np.isfinite(est.loss_curve_))
    assert np.all(np.isfinite(est.score_samples(X[:10])))
    assert np.all(np.diff(est.loss_curve_) <= 1e-4 * abs(est.loss_curve_[0]))


@pytest.mark.parametrize("covariance", ["data", "tied", "full"])
def test_rank_deficient_data_and_more_features_than_samples(rng, covariance):
    base = rng.normal(size=(30, 3))
    flat = np.hstack([base, base[:, :1] * 2.0, np.zeros((30, 1))])  # rank 3 of 5
    wide = rng.normal(size=(12, 40))  # d > n
    for X in (flat, wide):
        est = InclusiveKLFitter(n_components=3, covariance=covariance, max_iter=5,
                                random_state=0, backend="numpy").fit(X)
        assert np.all(np.isfinite(est.score_samples(X)))
        assert np.all(np.isfinite(est.covariances_))
        assert np.all(np.isfinite(est.sample(5, random_state=0)))


@pytest.mark.parametrize("covariance", ["data", "tied", "full"])
def test_sample_draws_from_the_shaped_components(data, covariance):
    X = data[0]
    est = InclusiveKLFitter(n_components=1, covariance=covariance, max_iter=3,
                            random_state=0, backend="numpy").fit(X)
    draws = est.sample(20000, random_state=0)
    cov = est.covariances_ if covariance != "full" else est.covariances_[0]
    np.testing.assert_allclose(draws.mean(0), est.means_[0], atol=0.05 * np.sqrt(cov.max()))
    np.testing.assert_allclose(np.cov(draws.T), cov, rtol=0.05, atol=0.03 * cov.max())


def test_fitted_attributes_follow_gaussian_mixture_conventions(data):
    X = data[0]
    for covariance, shape in [("isotropic", (4,)), ("data", (2, 2)), ("tied", (2, 2)),
                              ("full", (4, 2, 2))]:
        est = InclusiveKLFitter(n_components=4, covariance=covariance, max_iter=5,
                                random_state=0, backend="numpy").fit(X)
        assert est.covariances_.shape == shape == est.precisions_cholesky_.shape
        if covariance == "isotropic":
            np.testing.assert_allclose(est.covariances_ * est.precisions_cholesky_**2, 1.0)
        else:
            prec = est.precisions_cholesky_ @ np.swapaxes(est.precisions_cholesky_, -1, -2)
            np.testing.assert_allclose(prec @ est.covariances_, np.broadcast_to(np.eye(2),
                                       prec.shape), atol=1e-8)


def test_warm_start_clone_pickle_and_callback_units(data):
    X = data[0]
    seen = []
    est = InclusiveKLFitter(n_components=4, covariance="full", max_iter=5, tol=0,
                            random_state=0, backend="numpy",
                            callback=lambda s: seen.append(s.means.copy())).fit(X)
    np.testing.assert_allclose(seen[-1], est.means_, rtol=1e-12)  # original units
    est.set_params(callback=None)
    restored = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(restored.score_samples(X), est.score_samples(X), rtol=1e-13)
    assert clone(est).get_params()["covariance"] == "full"
    last = est.loss_curve_[-1]
    est.set_params(warm_start=True, callback=None).fit(X)
    assert est.loss_curve_[0] == pytest.approx(last, rel=1e-9)  # resumed, not restarted
    with pytest.raises(ValueError, match="warm_start"):
        est.set_params(covariance="data").fit(X)


def test_grid_search_chooses_covariance_and_bandwidth(rng):
    X = correlated(200, rng, rho=0.98)
    search = GridSearchCV(
        InclusiveKLFitter(n_components=20, max_iter=40, random_state=0, backend="numpy"),
        {"covariance": ["isotropic", "data", "full"], "bandwidth": [0.2, 0.5]}, cv=3,
    ).fit(X)
    assert search.best_params_["covariance"] in ("data", "full")  # the shape matters here
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))


@pytest.mark.parametrize("params, match", [
    ({"covariance": "diag"}, "covariance"),
    ({"reg_covar": 0.0}, "reg_covar"),
    ({"reg_covar": -1.0}, "reg_covar"),
    ({"n_init": 0}, "n_init"),
    ({"init": "lloyd"}, "init"),
])
def test_bad_covariance_parameters_name_the_argument(data, params, match):
    with pytest.raises(InvalidParameterError, match=match):
        InclusiveKLFitter(**params).fit(data[0])


@pytest.mark.parametrize("covariance", ["data", "tied", "full"])
def test_minibatches_keep_the_likelihood_of_the_full_batch_fit_close(data, covariance):
    X = data[0]
    full_batch = InclusiveKLFitter(n_components=4, covariance=covariance, max_iter=40, tol=0,
                                   random_state=0, backend="numpy").fit(X)
    mini = InclusiveKLFitter(n_components=4, covariance=covariance, max_iter=40, tol=0,
                             batch_size=40, random_state=0, backend="numpy").fit(X)
    assert np.isfinite(mini.score(X))
    # the minibatch flow improves on its start, and ends near the full-batch likelihood
    start = InclusiveKLFitter(n_components=4, covariance=covariance, max_iter=1, tol=0,
                              alpha=0.0, beta=0.0, random_state=0, backend="numpy").fit(X)
    assert mini.score(X) > start.score(X)
    assert mini.score(X) > full_batch.score(X) - 0.2


def test_n_init_keeps_the_run_with_the_highest_likelihood(rng):
    X = np.r_[correlated(60, rng), rng.normal(size=(30, 2)) * 0.3 + [6.0, 3.0]]
    params = dict(n_components=5, covariance="full", init="kmeans++", max_iter=30, tol=0,
                  backend="numpy")
    best = InclusiveKLFitter(n_init=4, random_state=7, **params).fit(X)
    seeds = np.random.RandomState(7).randint(np.iinfo(np.int32).max, size=4)
    runs = [InclusiveKLFitter(random_state=int(seed), **params).fit(X) for seed in seeds]
    finals = [run.loss_curve_[-1] for run in runs]
    assert len(set(np.round(finals, 8))) > 1  # the starts end in different maxima
    chosen = runs[int(np.argmin(finals))]
    np.testing.assert_array_equal(best.loss_curve_, chosen.loss_curve_)
    np.testing.assert_array_equal(best.means_, chosen.means_)
    np.testing.assert_array_equal(best.covariances_, chosen.covariances_)
    assert best.get_params()["n_init"] == 4 and best.get_params()["random_state"] == 7
    # a given init array starts every run in the same place: it runs once
    once = InclusiveKLFitter(n_init=3, random_state=0, **{**params, "init": best.means_})
    seen = []
    once.set_params(callback=lambda state: seen.append(state.n_iter)).fit(X)
    assert seen == list(range(1, 31))
    # minibatch runs end on the loss of their last batch: they are compared on all samples
    # (at this seed the two rules choose different runs)
    batched = {**params, "batch_size": 30}
    best = InclusiveKLFitter(n_init=4, random_state=2, **batched).fit(X)
    seeds = np.random.RandomState(2).randint(np.iinfo(np.int32).max, size=4)
    runs = [InclusiveKLFitter(random_state=int(seed), **batched).fit(X) for seed in seeds]
    scores = [run.score(X) for run in runs]
    assert np.argmax(scores) != np.argmin([run.loss_curve_[-1] for run in runs])
    np.testing.assert_array_equal(best.means_, runs[int(np.argmax(scores))].means_)


def test_n_init_keeps_the_callback_object_and_no_attribute_of_an_earlier_fit(rng):
    pd = pytest.importorskip("pandas")
    X = correlated(80, rng)
    recorder = PathRecorder()
    est = InclusiveKLFitter(n_components=3, covariance="full", n_init=3, max_iter=5, tol=0,
                            random_state=0, backend="numpy", callback=recorder)
    est.fit(pd.DataFrame(X, columns=["a", "b"]))
    assert len(recorder.n_iter) == 15  # the object itself saw the three runs, not copies
    assert list(est.feature_names_in_) == ["a", "b"]
    est.set_params(callback=None).fit(X)
    assert not hasattr(est, "feature_names_in_")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.set_params(tol=1e-12).fit(X)
    # only the kept run's ConvergenceWarning reaches the caller
    assert sum("did not converge" in str(w.message) for w in caught) == 1
    # inside a GridSearchCV, whose callback context lives on the estimator during fit
    search = GridSearchCV(InclusiveKLFitter(n_components=2, covariance="tied", max_iter=5,
                                            tol=0, random_state=0, backend="numpy"),
                          {"n_init": [1, 2]}, cv=2, error_score="raise").fit(X)
    assert search.best_estimator_.n_init in (1, 2)


@pytest.mark.parametrize("covariance", ["isotropic", "data", "tied", "full"])
def test_kmeans_init_is_a_lloyd_fixed_point_in_the_units_of_x(data, covariance):
    """Without flow (alpha = beta = 0) the atoms are the k-means centres of X as given:
    each is the weighted mean of the samples nearest to it in the Euclidean metric of X."""
    X, b, raw, _ = data
    est = InclusiveKLFitter(n_components=4, covariance=covariance, init="kmeans", alpha=0.0,
                            beta=0.0, max_iter=1, tol=0, random_state=0,
                            backend="numpy").fit(X, sample_weight=raw)
    centres = est.means_
    nearest = np.argmin(((X[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    for j in range(4):
        cell = nearest == j
        np.testing.assert_allclose(centres[j], b[cell] @ X[cell] / b[cell].sum(), rtol=1e-6,
                                   atol=1e-9)
        # and each starts with the weight of its cell, as GaussianMixture's clusters do
        np.testing.assert_allclose(est.weights_[j], b[cell].sum() / b.sum(), rtol=1e-6)

