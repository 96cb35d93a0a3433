"""``transform`` of the MMD samplers: optimal transport of a point set onto the fitted measure.

Every figure is checked against an independent computation: a dense NumPy energy distance,
the exact optimal transport cost of a linear programme (scipy's HiGHS), the closed-form W₂
between Gaussians, and the map computed in one chunk or in many.
"""

import warnings

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.optimize import linprog, minimize
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from skgradflow import IFTSampler, WFRMMDFlow
from skgradflow._flow import _matching
from tests.helpers import needs_numba, plan_only, recorded_bends
from tests.oracles import dense_energy_distance


def exact_ot_cost(X, Y, b) -> float:
    """min over plans with marginals (1/N, b) of Σ P_ij |x_i - y_j|², by linear programming."""
    n, m = len(X), len(Y)
    C = np.sum((X[:, None, :] - Y[None, :, :]) ** 2, axis=-1)
    rows = np.kron(np.eye(n), np.ones(m))
    cols = np.kron(np.ones(n), np.eye(m))
    res = linprog(C.ravel(), A_eq=np.vstack([rows, cols]),
                  b_eq=np.concatenate([np.full(n, 1 / n), b]), bounds=(0, None), method="highs")
    assert res.status == 0
    return float(res.fun)


def bent(X):
    """A nonlinear shift: ``x + 0.3 x|x| + 0.7`` on the first feature, a rotation."""
    Z = X.copy()
    Z[:, 0] = Z[:, 0] + 0.3 * Z[:, 0] * np.abs(Z[:, 0]) + 0.7
    t = 0.4
    return Z @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


@pytest.fixture
def without_bend(monkeypatch):
    plan_only(monkeypatch)


@pytest.fixture(scope="module")
def fitted(mixture_split):
    X, _ = mixture_split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return IFTSampler(n_particles=80, max_iter=200, random_state=0).fit(X)


@pytest.mark.parametrize("plan", [False, True])
def test_transform_lands_on_the_fitted_measure(fitted, mixture_split, monkeypatch, plan):
    """The moved set is closer to the fitted measure than draws of that measure itself;
    the plan lands it to a small fraction of the unmoved set's distance."""
    _, X_test = mixture_split
    source = bent(X_test[:400])
    atoms, w = fitted._fitted_measure()
    if plan:
        plan_only(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of any kind with the defaults
        moved = fitted.transform(source)
    rng = np.random.default_rng(0)
    draws = [atoms[rng.choice(len(atoms), 400, p=w)] for _ in range(5)]
    noise = np.mean([dense_energy_distance(d, atoms, y_weights=w) for d in draws])
    landed = dense_energy_distance(moved, atoms, y_weights=w)
    assert landed < noise
    if plan:
        assert landed < 0.02 * dense_energy_distance(source, atoms, y_weights=w)


@pytest.mark.parametrize("cls", [IFTSampler, WFRMMDFlow])
def test_displacement_is_that_of_exact_optimal_transport(cls, rng):
    """Small case: the mean squared displacement against the optimal cost of the linear
    programme from the source to the fitted weighted measure."""
    target = rng.normal(size=(60, 2)) @ np.array([[1.0, 0.4], [0.0, 0.6]]) + [2.0, -1.0]
    source = bent(rng.normal(size=(50, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(n_particles=40, max_iter=100, random_state=0).fit(target)
    atoms, w = est._fitted_measure()
    moved = est.transform(source)
    displacement = np.mean(np.sum((moved - source) ** 2, axis=1))
    optimal = exact_ot_cost(source, atoms, w)
    assert 0.8 * optimal < displacement < 1.2 * optimal


def test_displacement_between_gaussians_is_the_closed_form_w2(rng):
    """Gaussian source onto a fit of a Gaussian target: ``|m₁ - m₂|² + tr(S₁ + S₂ -
    2 (S₂^½ S₁ S₂^½)^½)``."""
    m1, S1 = np.zeros(3), np.diag([1.0, 2.0, 0.5])
    m2 = np.array([1.0, -1.0, 0.5])
    S2 = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.7]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = IFTSampler(n_particles=200, max_iter=200, random_state=0).fit(
            rng.multivariate_normal(m2, S2, 2000))
    source = rng.multivariate_normal(m1, S1, 2000)
    moved = est.transform(source)
    root = sqrtm(S2).real
    w2 = np.sum((m1 - m2) ** 2) + np.trace(S1 + S2 - 2 * sqrtm(root @ S1 @ root).real)
    assert abs(np.mean(np.sum((moved - source) ** 2, axis=1)) / w2 - 1) < 0.1


def test_gaussian_map_pushes_the_moments_forward(rng):
    """``x ↦ x A + c`` carries (m₁, S₁) to (m₂, S₂), and A is symmetric positive definite
    (what makes it the optimal map between the Gaussians)."""
    S1 = np.cov(rng.normal(size=(50, 4)), rowvar=False)
    S2 = np.cov(rng.normal(size=(50, 4)) @ rng.normal(size=(4, 4)), rowvar=False)
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    A, c = _matching.gaussian_map(m1, S1, m2, S2)
    np.testing.assert_allclose(m1 @ A + c, m2, atol=1e-12)
    np.testing.assert_allclose(A.T @ S1 @ A, S2, atol=1e-10)
    assert np.all(np.linalg.eigvalsh(A) > 0)


def test_chunked_equals_unchunked_and_rows_keep_their_order(fitted, mixture_split, monkeypatch):
    _, X_test = mixture_split
    source = bent(X_test[:300])
    bends = recorded_bends(monkeypatch)
    whole = fitted.transform(source)
    # this set is bent, and the plan lands it from there: both run in the chunks below
    assert bends[0][-1].stages and not bends[0][-1].landed
    perm = np.random.default_rng(1).permutation(len(source))
    # the map is a function of the set: permuting the rows permutes the images (the bend is
    # fitted on the same numbers in the same order; the plan's sums over the rows round
    # differently in another order, by 1e-16 relative, which the last Newton step's solve on
    # this sharp plan amplifies to about 1e-9: a bend fitted on other numbers moves rows by
    # up to 0.9 here)
    np.testing.assert_allclose(fitted.transform(source[perm]), whole[perm], rtol=0, atol=1e-8)
    # chunks of 2 rows (500 plan entries, over 200 centres of the bend) instead of one: the
    # bend's matrix products round differently by a unit in the last place for another
    # number of rows (BLAS picks its kernel by shape), amplified alike
    monkeypatch.setattr(_matching, "_CHUNK_ENTRIES", 500)
    np.testing.assert_allclose(fitted.transform(source), whole, rtol=0, atol=1e-8)


@pytest.mark.parametrize("plan", [False, True])
def test_input_is_untouched_and_dtype_kept(fitted, mixture_split, monkeypatch, plan):
    _, X_test = mixture_split
    if plan:
        plan_only(monkeypatch)
    source = bent(X_test[:100]).astype(np.float32)
    before = source.copy()
    moved = fitted.transform(source)
    np.testing.assert_array_equal(source, before)
    assert moved.dtype == np.float32 and moved.shape == source.shape
    assert np.all(np.isfinite(moved))


def test_one_row_goes_to_the_fitted_mean(fitted):
    """One row has no spread: the Gaussian map sends it to the fitted mean exactly, where it
    lands (its energy distance to the fitted measure is at most that of one draw of it)."""
    atoms, w = fitted._fitted_measure()
    moved = fitted.transform(np.array([[5.0, -3.0]]))
    np.testing.assert_allclose(moved[0], w @ atoms / w.sum(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [IFTSampler, WFRMMDFlow])
def test_image_has_the_fitted_mean_and_covariance(cls, mixture_split, without_bend):
    """Whatever the plan's tolerance, the set the plan moves has exactly the fitted
    measure's mean and covariance (weighted moments of the atoms, computed here with
    np.cov)."""
    X, X_test = mixture_split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(n_particles=60, max_iter=100, random_state=0).fit(X)
    atoms, w = est._fitted_measure()
    moved = est.transform(bent(X_test[:300]))
    np.testing.assert_allclose(moved.mean(axis=0), w @ atoms / w.sum(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.cov(moved, rowvar=False, bias=True),
                               np.cov(atoms, rowvar=False, aweights=w, bias=True),
                               rtol=0, atol=1e-10)


def test_unconverged_plan_warns(fitted, mixture_split, monkeypatch, without_bend):
    _, X_test = mixture_split
    monkeypatch.setattr(_matching, "_MAX_PASSES", 2)
    with pytest.warns(ConvergenceWarning, match="did not converge in 2 passes"):
        fitted.transform(bent(X_test[:100]))


def test_there_is_no_inverse_transform(fitted):
    # the set's own distribution is not kept: a Pipeline ending here has no inverse either
    assert not hasattr(fitted, "inverse_transform")
    with pytest.raises(AttributeError, match="inverse_transform"):
        Pipeline([("sampler", fitted)]).inverse_transform(np.zeros((3, 2)))


def test_readme_transform_line_runs_without_a_warning():
    """The quick start's ``transform`` line, on the quick start's fit."""
    from sklearn.model_selection import train_test_split

    X = np.random.default_rng(0).normal(size=(2000, 2))
    X_train, X_test = train_test_split(X, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the fit's own, not transform's
        sampler = IFTSampler(n_particles=300, random_state=0).fit(X_train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Z_matched = sampler.transform(X_test + 1.0)
    atoms, w = sampler._fitted_measure()
    # the shift of 1 is undone: the moved set has the fitted mean
    np.testing.assert_allclose(Z_matched.mean(axis=0), w @ atoms, atol=1e-10)


def dense_plan(Z, Y, b, eps):
    """The entropic optimal-transport plan between the uniform measure on the rows of ``Z``
    and ``Σ_j b_j δ_{y_j}``, cost ``½|z - y|²``, rows scaled to sum to 1: the semi-dual
    maximised by scipy's L-BFGS over the dense cost matrix (no chunks, no floor, no
    Newton), then plain fixed-point steps until every atom's mass is right to 10⁻⁹."""
    C = 0.5 * np.sum((Z[:, None, :] - Y[None, :, :]) ** 2, axis=-1)

    def log_plan(g):
        L = (g[None, :] - C) / eps + np.log(b)[None, :]
        return L - logsumexp(L, axis=1, keepdims=True), logsumexp(L, axis=1)

    def minus_semi_dual(g):
        log_P, lse = log_plan(g)
        return eps * lse.mean() - b @ g, np.exp(log_P).mean(axis=0) - b

    g = minimize(minus_semi_dual, np.zeros(len(Y)), jac=True, method="L-BFGS-B",
                 options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10_000}).x
    for _ in range(10_000):  # then plain fixed-point steps, to the last digits
        P = np.exp(log_plan(g)[0])
        if np.max(np.abs(P.mean(axis=0) / b - 1)) < 1e-9:
            return P
        g = g - eps * np.log(P.mean(axis=0) / b)
    raise AssertionError("the reference plan did not converge")


def reference_transform(est, X):
    """``transform`` from its definition on the design page, every step dense: the Gaussian
    map (scipy's matrix square roots), ε from the atoms' nearest distances, the plan of
    :func:`dense_plan`, each cell's spread capped at its atom's nearest squared distance,
    the Gaussian map from the cells' images' moments to the fitted measure's."""
    Y, b = est._fitted_measure()
    b = b / b.sum()
    S, C = np.cov(X, rowvar=False, bias=True), np.cov(Y, rowvar=False, aweights=b, bias=True)
    root = sqrtm(S).real
    inv_root = np.linalg.inv(root)
    A = inv_root @ sqrtm(root @ C @ root).real @ inv_root
    Z = (X - X.mean(axis=0)) @ A + b @ Y
    D = np.sum((Y[:, None, :] - Y[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(D, np.inf)
    nearest = D.min(axis=1)
    P = dense_plan(Z, Y, b, _matching._EPS_FRACTION * (b @ nearest))
    mass = P.sum(axis=0)
    centre = P.T @ Z / mass[:, None]
    spread = P.T @ np.sum(Z * Z, axis=1) / mass - np.sum(centre**2, axis=1)
    scale = np.minimum(1.0, np.sqrt(nearest / spread))
    cells = P @ (Y - scale[:, None] * centre) + (P @ scale)[:, None] * Z
    # the last Gaussian map, from the cells' moments to the fitted measure's
    root = sqrtm(np.cov(cells, rowvar=False, bias=True)).real
    inv_root = np.linalg.inv(root)
    A = inv_root @ sqrtm(root @ C @ root).real @ inv_root
    return (cells - cells.mean(axis=0)) @ A + b @ Y, spread > nearest


@pytest.fixture(scope="module")
def reference(fitted, mixture_split):
    _, X_test = mixture_split
    source = bent(X_test[:200])
    return source, *reference_transform(fitted, source)


@pytest.mark.parametrize("newton", [True, False])
def test_transform_is_its_definition(fitted, reference, monkeypatch, newton, without_bend):
    """Newton's and Sinkhorn's potentials, chunks, the floor of the logits and the spread
    cap against the dense computation of the same map, the plan solved to 10⁻⁸ (Sinkhorn,
    slower, to 10⁻⁶)."""
    source, expected, capped = reference
    assert capped.any() and not capped.all()  # the cap acts on some cells, not all
    monkeypatch.setattr(_matching, "_MARGINAL_TOL", 1e-8 if newton else 1e-6)
    if not newton:
        monkeypatch.setattr(_matching, "_NEWTON_MAX_ATOMS", 0)
        monkeypatch.setattr(_matching, "_MAX_PASSES", 50_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = fitted.transform(source)
    scale = np.sqrt(np.mean(np.sum((expected - expected.mean(axis=0)) ** 2, axis=1)))
    np.testing.assert_allclose(moved, expected, rtol=0, atol=(1e-6 if newton else 1e-4) * scale)


def test_newton_needs_far_fewer_passes_than_sinkhorn(monkeypatch):
    """A near-assignment plan (16-D clusters whose sizes differ between the two sides, ε a
    tenth of the atoms' squared spacing), where Sinkhorn needs hundreds of passes: both
    reach the marginals (checked by a dense computation of the plan from the potentials),
    Newton in at most a tenth of Sinkhorn's passes."""
    from skgradflow.data import as_data

    rng = np.random.default_rng(0)
    centres = 3 * rng.normal(size=(8, 16))
    Y = centres[rng.integers(8, size=300)] + 0.5 * rng.normal(size=(300, 16))
    Z = centres[rng.choice(8, size=450, p=np.arange(1, 9) / 36)] + 0.5 * rng.normal(size=(450, 16))
    b = np.full(300, 1 / 300)
    eps = _matching.entropy(_matching.nearest_squared(Y), b)
    passes = {}
    for newton in (True, False):
        counted = {"n": 0}
        plan = _matching._Plan(Y, b, lambda X: X)  # the rows already aligned, no bend
        for name in ("mass", "curvature"):
            method = getattr(plan, name)

            def counting(X, g, e, method=method, counted=counted):
                counted["n"] += 1
                return method(X, g, e)

            setattr(plan, name, counting)
        monkeypatch.setattr(_matching, "_NEWTON_MAX_ATOMS", 2000 if newton else 0)
        with threadpool_limits(1, user_api="blas"):  # as transform runs it
            g = _matching._potentials(as_data(Z), plan, b, eps, "test")
        log_P = (g[None, :] - 0.5 * np.sum((Z[:, None] - Y[None]) ** 2, axis=-1)) / eps
        P = np.exp(log_P - logsumexp(log_P, axis=1, keepdims=True))
        assert np.max(np.abs(P.mean(axis=0) / b - 1)) <= _matching._MARGINAL_TOL
        passes[newton] = counted["n"]
    assert passes[True] <= 0.1 * passes[False]


def test_unconverged_newton_warns(fitted, mixture_split, monkeypatch, without_bend):
    _, X_test = mixture_split
    monkeypatch.setattr(_matching, "_MARGINAL_TOL", 0.0)  # never reached
    monkeypatch.setattr(_matching, "_MAX_PASSES", 60)
    with pytest.warns(ConvergenceWarning, match="did not converge in 60 passes"):
        moved = fitted.transform(bent(X_test[:100]))
    assert np.all(np.isfinite(moved))


def test_the_roots_of_a_rank_deficient_covariance_are_stable_to_round_off():
    # rank 3 in 6 dimensions, as the covariance of fewer rows than features: a perturbation
    # at round-off must not move the square root by its square root
    rng = np.random.default_rng(0)
    B = rng.normal(size=(6, 3))
    C = B @ B.T
    E = 1e-16 * rng.normal(size=(6, 6))
    root, inverse = _matching._roots(C)
    root_perturbed, inverse_perturbed = _matching._roots(C + E + E.T)
    np.testing.assert_allclose(root @ root, C, atol=1e-12)
    np.testing.assert_allclose(root, np.real(sqrtm(C)), atol=1e-6)  # scipy's, on a singular C
    assert np.abs(root - root_perturbed).max() < 1e-12
    assert np.abs(inverse - inverse_perturbed).max() < 1e-9
    # the pseudo-inverse root inverts the root on C's range
    np.testing.assert_allclose(inverse @ C @ inverse, B @ np.linalg.pinv(B), atol=1e-10)


@needs_numba
def test_fits_equal_to_round_off_map_a_set_equally_with_more_features_than_rows():
    # scikit-learn's sample-weight check: repeated rows and integer weights fit the same
    # particles, here on two engines (as backend="auto" may pick once Numba's loops are
    # loaded), so to round-off only; their maps of a set whose covariance is singular (15
    # rows, 30 features) must agree to round-off as well, not to its square root
    rng = np.random.RandomState(42)
    X = rng.rand(15, 30)
    rng.randint(0, 3, size=15)
    weights = rng.randint(0, 5, size=15)
    repeated = IFTSampler(random_state=0, backend="numpy").fit(X.repeat(weights, axis=0))
    weighted = IFTSampler(random_state=0, backend="numba").fit(X, sample_weight=weights)
    assert np.abs(repeated.particles_ - weighted.particles_).max() < 1e-14
    np.testing.assert_allclose(repeated.transform(X), weighted.transform(X), rtol=0, atol=1e-11)
