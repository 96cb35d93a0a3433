"""``transform`` of the MMD samplers: another point set mapped onto the fitted measure.

The maps, composed (derived on the design page, "Matching a point set"):

1. the **Gaussian optimal-transport map** ``L`` from the set's mean and covariance to those
   of the fitted measure ``ν = Σ_j b_j δ_{y_j}``: ``x ↦ m_ν + (x - m_X) A``, ``A = Σ^{-1/2}
   (Σ^{1/2} C_ν Σ^{1/2})^{1/2} Σ^{-1/2}`` (``Σ`` the rows' covariance, its inverse root a
   pseudo-inverse): the affine part of the shift;
2. the **bend** ``B`` (:mod:`._bend`): a smooth displacement field, the smoothest that lands
   the set, fitted on the fit rows (the whole set up to ``WHOLE_ROWS`` rows, else
   ``FIT_ROWS`` rows chosen by their hashes) aligned by their own moments' Gaussian map
   (:class:`_Aligned`); a set that ``L`` or the bend lands is returned as ``B(L(x))``, and
   the rest does not run;
3. the **entropic semi-discrete optimal transport** from the bent set ``μ = (1/N) Σ_i
   δ_{z_i}`` to ``ν``, cost ``½|z - y|²``: the plan ``π_j(z) ∝ b_j exp((g_j - ½|z -
   y_j|²)/ε)`` whose potentials ``g`` make every atom receive its weight (``ε`` halved from
   the data's scale down to ``κ δ²``: Sinkhorn on the coarse levels, Newton on the last),
   then the mass each atom receives moves so that its barycentre lands on the atom, keeping
   its shape but no more spread than the atom's distance to its nearest other atom ``δ_j``::

       t(z) = Σ_j π_j(z) (y_j + a_j (z - z̄_j)),   z̄_j = Σ_i π_j(z_i) z_i / Σ_i π_j(z_i),
       a_j = min(1, δ_j / s_j),   s_j² the spread of the mass atom j receives;

4. the Gaussian map from the moments of the images ``t(z_i)`` to those of ``ν`` (the cells
   leave the covariance a little wide): ``T(x) = t(z) A_t + c_t``.

Every step is a pass over the rows: one for the fit rows' hashes (and, above ``WHOLE_ROWS``
rows, one for the set's moments), one per Sinkhorn or Newton
iteration, one for the cells, one for the images' moments and one for the map, ``O(J d)`` per
row and Sinkhorn pass, ``O(J (J + d))`` per row and Newton pass for ``J`` atoms (plus the
bend's ``O(200 d)``), in chunks of at most ``_CHUNK_ENTRIES`` plan entries (memory linear in
the rows), on the machine that holds the rows (a dask array's chunks on their workers); the
bend is fitted here, on at most ``WHOLE_ROWS`` rows.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from ..backends import resolve_backend
from ..data import as_data, held_here, host_backend, session
from ._bend import _MAX_CENTRES, FIT_ROWS, HASH_SEED, WHOLE_ROWS, Bend, fit_bend
from ._sampling import _nearest_distance

# ε = _EPS_FRACTION × δ², δ² the weighted mean squared distance from an atom to its nearest
# other atom: a point's plan then spreads over a few neighbouring atoms.  On the matching
# benchmark's sets (3 seeds, this map) 0.05, 0.1, 0.2 and 0.3 land within 2-4% of each other
# (energy distance to held-out target rows) on iris, wine, breast cancer and the s-curves;
# on digits 0.05 and 0.1 at 1.06-1.07 times target-train's own distance, 0.2 at 1.09-1.12 and
# 0.3 at 1.14-1.20, while the downstream accuracy rises with ε (digits 0.88, 0.89, 0.91,
# 0.92): 0.1 lands everywhere, for 1.3-2x the passes of 0.2.
_EPS_FRACTION = 0.1
# Sinkhorn at the final ε stops when every atom receives its weight within this relative
# error; the coarser levels, which only warm-start the next, within _COARSE_TOL.
_MARGINAL_TOL = 0.05
_COARSE_TOL = 0.5
_MAX_PASSES = 2000
# Newton at the final ε up to this many atoms: a pass then accumulates a (J, J) Hessian per
# chunk and solves a J × J system
_NEWTON_MAX_ATOMS = 2000
# the first damping μ of Newton's steps, in units of the atoms' weights
_NEWTON_DAMPING = 1e-3
# Sinkhorn's update of the potentials, over-relaxed: g ← g - ω ε log(m / b), m the mass each
# atom receives.  ω = 1.8 takes 2-3.5x fewer passes than ω = 1 (497 against 939 for 300
# points onto 300 atoms, 80 against 280 for 5000 onto 500); a pass whose marginal error
# exceeds twice the level's best so far switches that level back to ω = 1.
_OVERRELAXATION = 1.8
# log π_ij below a row's largest by more than 80 counts as -80: e^-80 is far below the
# float64 resolution of the row's sum, and an exponential that underflows takes NumPy's slow
# path (7-8x slower per entry, and most entries of a sharp plan underflow)
_LOG_FLOOR = -80.0
# rows per chunk of a pass: its plan, (rows, J) float64, has at most this many entries
_CHUNK_ENTRIES = 2**20


def _roots(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``C^{1/2}`` and the pseudo-inverse ``C^{-1/2}`` (zero in directions without spread)
    of a symmetric positive semi-definite matrix."""
    val, vec = np.linalg.eigh(C)
    val = np.clip(val, 0.0, None)
    spread = val > 1e-12 * max(float(val.max(initial=0.0)), np.finfo(np.float64).tiny)
    # both roots zero where there is no spread: the square root of an eigenvalue that is 0
    # up to round-off (rank-deficient data, d > n) would turn a perturbation of 1e-16 into
    # one of 1e-8, and two fits equal to round-off would map a set 1e-8 apart
    root = np.where(spread, np.sqrt(val), 0.0)
    inv = np.zeros_like(root)
    inv[spread] = 1.0 / root[spread]
    return (vec * root) @ vec.T, (vec * inv) @ vec.T


def gaussian_map(mean_x, cov_x, mean_y, cov_y) -> tuple[np.ndarray, np.ndarray]:
    """``(A, c)``: ``x ↦ x A + c`` is the optimal-transport map from ``N(mean_x, cov_x)`` to
    ``N(mean_y, cov_y)`` (on the span of ``cov_x``; the rest goes to ``mean_y``)."""
    half, inv_half = _roots(cov_x)
    middle = _roots(half @ cov_y @ half)[0]
    A = inv_half @ middle @ inv_half
    A = 0.5 * (A + A.T)
    return A, mean_y - mean_x @ A


def _atoms(atoms: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The atoms of positive weight with repeated positions merged, float64; weights sum to 1
    (an atom of zero weight receives nothing: its potential would run off to -inf)."""
    keep = weights > 0
    Y, inverse = np.unique(np.asarray(atoms[keep], dtype=np.float64), axis=0,
                           return_inverse=True)
    b = np.bincount(inverse.ravel(), weights=weights[keep], minlength=Y.shape[0])
    return Y, b / b.sum()


def nearest_squared(Y: np.ndarray) -> np.ndarray:
    """The squared distance from every atom to its nearest other atom (``inf`` for a single
    atom)."""
    return _nearest_distance(Y, Y, skip_self=True) ** 2


def entropy(nearest: np.ndarray, b: np.ndarray) -> float:
    """The final ε: ``_EPS_FRACTION`` × the weighted mean squared distance from an atom to
    its nearest other atom (1 for a single atom, where the plan is trivial)."""
    if nearest.shape[0] < 2:
        return 1.0
    return _EPS_FRACTION * float(b @ nearest)


class _Aligned:
    """``x ↦ x A + c``, the whole set's Gaussian map, plus the bend's displacement of the row
    aligned as the bend's fit rows were (``x A_fit + c_fit``, the map of their own moments):
    for a set fitted whole the two maps are one, and the row is bent where it is aligned."""

    def __init__(self, A: np.ndarray, c: np.ndarray, bend: Bend, A_fit: np.ndarray,
                 c_fit: np.ndarray):
        self.A, self.c, self.bend, self.A_fit, self.c_fit = A, c, bend, A_fit, c_fit

    def __call__(self, X: np.ndarray) -> np.ndarray:
        Z = X @ self.A + self.c
        if not self.bend.stages:
            return Z
        if self.A_fit is self.A:
            return self.bend(Z)
        F = X @ self.A_fit + self.c_fit
        return Z + (self.bend(F) - F)


class _Plan:
    """The entropic plan from the aligned and bent rows ``z`` (:class:`_Aligned`) to the
    atoms, by chunks of rows: ``π_j(z) ∝ exp(g_j/ε + log b_j - |y_j|²/(2ε) + z·y_j/ε)`` (the
    ``|z|²/(2ε)`` of the cost is the same for every atom of a row and cancels)."""

    def __init__(self, Y: np.ndarray, b: np.ndarray, align: _Aligned):
        self.Y, self.align = Y, align
        self.log_b = np.log(b)
        self.half_sq = 0.5 * np.sum(Y * Y, axis=1)

    def _chunks(self, X: np.ndarray):
        step = max(1, _CHUNK_ENTRIES // max(self.Y.shape[0], X.shape[1], _MAX_CENTRES))
        for s in range(0, X.shape[0], step):
            yield s, self.align(np.asarray(X[s : s + step], dtype=np.float64))

    def _logits(self, Z: np.ndarray, g: np.ndarray, eps: float):
        """``log π_j(z_i)`` up to a constant of each row, shifted so that a row's largest
        is 0 and floored at ``_LOG_FLOOR``, and the shift of each row: the ``1/ε`` is folded
        into the atoms and the bias, so that a pass touches the (rows, J) array as few times
        as it can."""
        L = Z @ (self.Y.T / eps)
        L += (g - self.half_sq) / eps + self.log_b
        top = L.max(axis=1)
        L -= top[:, None]
        np.maximum(L, _LOG_FLOOR, out=L)
        return L, top

    def _rows(self, Z: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
        E, _ = self._logits(Z, g, eps)
        np.exp(E, out=E)
        E /= E.sum(axis=1, keepdims=True)
        return E

    def mass(self, X: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
        """``Σ_i π_j(x_i)`` for every atom ``j``, over the rows ``X``."""
        total = np.zeros(self.Y.shape[0])
        for _, Z in self._chunks(X):
            E, _ = self._logits(Z, g, eps)
            np.exp(E, out=E)
            total += (1.0 / E.sum(axis=1)) @ E
        return total

    def curvature(self, X: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
        """``[Σ_i π_i π_iᵀ | Σ_i π_i | Σ_i log Σ_j e^{L_ij}]`` over the rows ``X``, shape
        ``(J, J + 2)`` (the last column's first entry only), ``L_ij = log b_j + (g_j -
        ½|z_i - y_j|²)/ε`` less ``|z_i|²/(2ε)``: what a Newton step on the semi-dual needs,
        its Hessian, gradient and value, in one pass."""
        J = self.Y.shape[0]
        total = np.zeros((J, J + 2))
        for _, Z in self._chunks(X):
            L, top = self._logits(Z, g, eps)
            np.exp(L, out=L)
            row_sum = L.sum(axis=1)
            total[0, J + 1] += float(np.sum(top + np.log(row_sum)))
            L /= row_sum[:, None]
            total[:, :J] += L.T @ L
            total[:, J] += L.sum(axis=0)
        return total

    def moments(self, X: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
        """``[Σ_i π_j(x_i), Σ_i π_j(x_i) z_i, Σ_i π_j(x_i) |z_i|²]`` for every atom, shape
        ``(J, 2 + d)``."""
        d = self.Y.shape[1]
        total = np.zeros((self.Y.shape[0], 2 + d))
        for _, Z in self._chunks(X):
            P = self._rows(Z, g, eps)
            total[:, 0] += P.sum(axis=0)
            total[:, 1 : 1 + d] += P.T @ Z
            total[:, 1 + d] += P.T @ np.sum(Z * Z, axis=1)
        return total

    def _cells(self, Z: np.ndarray, g: np.ndarray, eps: float, offset: np.ndarray,
               scale: np.ndarray) -> np.ndarray:
        """``Σ_j π_j(z) (offset_j + scale_j z)`` for the aligned rows ``Z``."""
        P = self._rows(Z, g, eps)
        return P @ offset + (P @ scale)[:, None] * Z

    def image_moments(self, X: np.ndarray, g: np.ndarray, eps: float, offset: np.ndarray,
                      scale: np.ndarray) -> np.ndarray:
        """``[Σ_i t_i; Σ_i t_i t_iᵀ]`` of the cells' images ``t_i``, shape ``(1 + d, d)``."""
        d = self.Y.shape[1]
        total = np.zeros((1 + d, d))
        for _, Z in self._chunks(X):
            T = self._cells(Z, g, eps, offset, scale)
            total[0] += T.sum(axis=0)
            total[1:] += T.T @ T
        return total

    def apply(self, X: np.ndarray, g: np.ndarray, eps: float, offset: np.ndarray,
              scale: np.ndarray, A: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The cells' images mapped by ``t ↦ t A + c``, for every row, in the dtype of
        ``X``."""
        out = np.empty(X.shape, dtype=X.dtype)
        for s, Z in self._chunks(X):
            out[s : s + Z.shape[0]] = self._cells(Z, g, eps, offset, scale) @ A + c
        return out


def _not_converged(desc: str, error: float) -> None:
    warnings.warn(
        f"{desc}: the transport plan onto the fitted measure did not converge in "
        f"{_MAX_PASSES} passes (the largest relative error of an atom's mass is "
        f"{error:.2g}); the result lands on the fitted measure only approximately.",
        ConvergenceWarning, stacklevel=4)


def _newton(points, plan: _Plan, b: np.ndarray, eps: float, g: np.ndarray, passes: int,
            desc: str) -> np.ndarray:
    """Newton's method on the semi-dual ``F(g) = bᵀg - (ε/N) Σ_i log Σ_j b_j e^{(g_j -
    ½|z_i - y_j|²)/ε}`` at the final ``eps``, from ``g``: gradient ``r = b - m``, Hessian
    ``-H/ε`` with ``H = diag m - (1/N) Σ_i π_i π_iᵀ``, damped as Levenberg and Marquardt do:
    the step ``ε (H + μ diag b)⁻¹ r`` is taken when ``F`` rises by at least a tenth of what
    its quadratic model promises, ``μ`` shrinking after a good step and growing after a
    refused one.  Sinkhorn needs hundreds of passes where the plan is nearly an assignment
    (each row on one or two atoms: 16-D digits, 719 rows onto 500 atoms); this a few tens."""
    n, J = points.n_samples, b.shape[0]
    damping, base, promised = _NEWTON_DAMPING, None, 0.0
    while True:
        stats = points.sum_rows(lambda X, g=g: plan.curvature(X, g, eps)) / n
        passes += 1
        m = stats[:, J]
        F = float(b @ g) - eps * float(stats[0, J + 1])
        error = float(np.max(np.abs(m / b - 1.0)))
        if error <= _MARGINAL_TOL:
            return g
        if passes >= _MAX_PASSES:
            _not_converged(desc, error)
            return g
        if base is None or F - base[0] >= 0.1 * promised:
            if base is not None:
                ratio = (F - base[0]) / promised
                damping *= 1.0 / 3.0 if ratio > 0.75 else (1.0 if ratio > 0.25 else 2.0)
            # H is positive semi-definite with 1 in its kernel (a common shift of g changes
            # nothing): the constant along 1 makes it invertible there
            base = (F, g, np.diag(m) - stats[:, :J] + np.full((J, J), 1.0 / J), b - m)
        else:
            damping *= 4.0  # refused: back to the last good point, a shorter step
        _, g0, H, r = base
        step = eps * np.linalg.solve(H + np.diag(damping * b), r)
        promised = float(r @ step - 0.5 * step @ (H @ step) / eps)
        g = g0 + step


def _potentials(points, plan: _Plan, b: np.ndarray, eps: float, desc: str) -> np.ndarray:
    """The atoms' potentials: Sinkhorn, ε halved from the scale of the whole cloud (where
    the plan is nearly ``b`` for every row) down to twice ``eps``, each level warm-starting
    the next, then Newton at ``eps`` (Sinkhorn there for more than ``_NEWTON_MAX_ATOMS``
    atoms); every pass is one :meth:`Data.sum_rows` over the points."""
    g = np.zeros(b.shape[0])
    if b.shape[0] < 2:
        return g
    cov = (plan.Y - b @ plan.Y).T @ ((plan.Y - b @ plan.Y) * b[:, None])
    start = 2.0 * float(np.trace(cov)) + eps
    levels = np.geomspace(start, eps, max(1, int(np.ceil(np.log2(start / eps))) + 1))
    newton = b.shape[0] <= _NEWTON_MAX_ATOMS
    n, passes = points.n_samples, 0
    for level, e in enumerate(levels):
        final = level == len(levels) - 1
        if final and newton:
            return _newton(points, plan, b, e, g, passes, desc)
        tol = _MARGINAL_TOL if final else _COARSE_TOL
        omega, best = _OVERRELAXATION, np.inf
        while True:
            m = points.sum_rows(lambda X, g=g, e=e: plan.mass(X, g, e)) / n
            passes += 1
            error = float(np.max(np.abs(m / b - 1.0)))
            if error <= tol:
                break
            if passes >= _MAX_PASSES:
                _not_converged(desc, error)
                return g
            if error > 2.0 * best:
                omega = 1.0
            best = min(best, error)
            g = g - omega * e * (np.log(np.maximum(m, np.finfo(np.float64).tiny)) - plan.log_b)
    return g


def _bent(points, align: _Aligned, backend):
    """The rows aligned and bent: a set that lands without the plan.  (No last Gaussian
    map here: the bend leaves the covariance near ν's but for the set's outlying rows, which
    a map to ν's covariance would pull in by moving every row; on the matching benchmark's
    digits that map takes the energy distance from 1.08 to 1.18 times target-train's.)"""
    def moved(rows, engine):
        return align(np.asarray(rows, dtype=np.float64)).astype(rows.dtype, copy=False)

    return points.map_rows(moved, backend, _MAX_CENTRES, columns=points.n_features)


class _MMDMatching:
    """``transform`` (the map onto the fitted measure) and the transport flow ``_move`` that
    ``sample`` runs (mixed into the MMD flow base)."""

    def transform(self, X):
        """Map the points of ``X`` onto the fitted distribution and return them.

        The map moves the uniform measure on the rows of ``X`` onto the fitted particle
        measure, each point about as little as optimal transport allows, and neighbouring
        points alike wherever the set allows it: first the affine map between their means
        and covariances; then a smooth displacement field, the smoothest that lands the set
        on the particles (as close to them as as many draws of the fitted measure would
        be), within 1.5 times the affine map's displacement; and where that does not land
        the set (or for more than 1000 rows, whose field is fitted on 300 of them), an
        entropic transport plan to the particles, each point moving by the displacement
        that brings the barycentre of the mass each particle receives onto that particle
        (that mass keeping its shape, with at most the spread of the particle's
        neighbourhood), then the affine map that gives the moved set the fitted mean and
        covariance exactly (see the design page).  The map is computed from the whole set,
        so a row's image depends on the other rows: distribution matching of the set.  It
        depends on the rows' values, not their order: a permuted set maps to the permuted
        images.

        Cost: the field's fit, on at most 1000 rows; then ``O(J d)`` per row and pass for
        ``J`` particles, over some tens of passes (the plan's iterations; the last few,
        Newton's, ``O(J (J + d))`` per row), or a single pass where the field lands the
        set; memory linear in the rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A NumPy or a dask array.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            New array, one row per row of ``X``, in its order and dtype; ``X`` is not
            modified.  For a dask array, a lazy dask array with its row chunks, each mapped
            on its worker.
        """
        check_is_fitted(self)
        desc = f"{type(self).__name__}.transform"
        # one BLAS thread: the passes are thin matrix products (d columns) whose threads only
        # wait on each other, 3x slower on a busy 2-core machine (17 against 5 ms a product of
        # 10^6 entries, 14 against 0.15 ms a matrix-vector product); the exponentials, which
        # dominate, run on one thread in NumPy anyway
        with session(self.backend, X, arrays_only=True), threadpool_limits(1, user_api="blas"):
            # X is only read: every pass computes in float64 chunks, the map into a new array
            points = as_data(X, estimator=self, dtype=[np.float64, np.float32], reset=False)
            Y, b = _atoms(*self._fitted_measure())
            mean_y = b @ Y
            cov_y = (Y - mean_y).T @ ((Y - mean_y) * b[:, None])
            # the rows the bend is fitted on: the whole set, or FIT_ROWS of a larger one,
            # chosen by their values and in an order set by them, aligned by their own
            # moments, so that the fit (L-BFGS, whose path round-off can turn) sees the same
            # numbers however the rows come: the map is a function of the set
            whole = points.n_samples <= WHOLE_ROWS
            rows = points.rows_by_hash(WHOLE_ROWS if whole else FIT_ROWS, HASH_SEED)
            A_fit, c_fit = gaussian_map(
                *held_here(rows, np.ones(rows.shape[0])).mean_covariance(), mean_y, cov_y)
            engine = resolve_backend(host_backend(self.backend),
                                     rows.shape[0] * (rows.shape[0] + Y.shape[0]),
                                     n_calls=1000, n_dims=Y.shape[1])
            bend = fit_bend(rows, rows @ A_fit + c_fit, engine, Y, b, whole)
            # a larger set is aligned by its own moments (a subset's covariance loses its
            # smallest directions, all of them past FIT_ROWS dimensions), the bend's
            # displacement added: round-off in those moments moves the map by round-off only
            A, c = ((A_fit, c_fit) if whole
                    else gaussian_map(*points.mean_covariance(), mean_y, cov_y))
            align = _Aligned(A, c, bend, A_fit, c_fit)
            if bend.landed:
                return _bent(points, align, self.backend)
            plan = _Plan(Y, b, align)
            nearest = nearest_squared(Y)
            eps = entropy(nearest, b)
            g = _potentials(points, plan, b, eps, desc)
            received = points.sum_rows(lambda X: plan.moments(X, g, eps))
            mass = received[:, 0]
            # an atom that receives (next to) nothing has no barycentre, and moves nothing
            filled = mass > 1e-12 * points.n_samples * b
            centre = np.zeros_like(Y)
            centre[filled] = received[filled, 1:-1] / mass[filled, None]
            spread = np.zeros(Y.shape[0])
            spread[filled] = np.maximum(
                received[filled, -1] / mass[filled] - np.sum(centre[filled] ** 2, axis=1), 0.0)
            # the spread each cell keeps around its atom, at most the squared distance from
            # the atom to its nearest other one: the spread of the fitted measure around
            # an atom at the resolution of its atoms (design page)
            scale = np.ones(Y.shape[0])
            wide = spread > nearest
            scale[wide] = np.sqrt(nearest[wide] / spread[wide])
            offset = np.where(filled[:, None], Y - scale[:, None] * centre, 0.0)
            scale[~filled] = 1.0
            # the cells' images have ν's mean (up to the plan's tolerance) but not quite its
            # covariance (the spread the cells keep, the points shared between cells): the
            # Gaussian map from their moments to ν's makes both exact
            image = points.sum_rows(lambda X: plan.image_moments(X, g, eps, offset, scale))
            mean_t = image[0] / points.n_samples
            cov_t = image[1:] / points.n_samples - np.outer(mean_t, mean_t)
            A_t, c_t = gaussian_map(mean_t, 0.5 * (cov_t + cov_t.T), mean_y, cov_y)
            return points.map_rows(
                lambda rows, engine: plan.apply(rows, g, eps, offset, scale, A_t, c_t),
                self.backend, Y.shape[0], columns=points.n_features)
