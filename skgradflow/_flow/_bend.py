"""The bend of ``transform``: a smooth displacement field after the Gaussian map, the
smoothest that lands the set on the fitted measure (design page, "Matching a point set").

After the Gaussian map ``L`` a set is aligned to the fitted measure ``ν = Σ_j b_j δ_{y_j}``
up to its shape.  Its rows are then moved by stages ``z ↦ z + Σ_k φ_k(z) w_k`` with Gaussian
features ``φ_k(z) = exp(-|z - c_k|² / (2 h²))`` centred on some of the rows, each stage's
coefficients ``W`` minimising

    ED(moved rows, ν) / s + λ tr(Wᵀ K W) / s²,   K_kl = φ_k(c_l),

``ED`` the energy distance (the rows uniform), ``tr(Wᵀ K W)`` the squared norm of the
displacement field in the features' reproducing space, ``s`` the median distance between
the aligned rows (both terms divided by it so that ``λ`` has no unit).  ``λ`` falls along
``_PENALTIES``, each fit warm-starting the next, first with ``h = s`` and then ``h = s/2``:
the field grows from nearly rigid to finer bends, and stops at the first that lands.  A
field moves neighbouring rows alike, where a transport plan assigns each row to particles
on its own and re-sorts rows of one class among particles of another: on the matching
benchmark's digits and 10-D blobs the bent set keeps the classes that the plan loses.

**Landed** means the moved rows are as close to ``ν`` as ``n`` draws of ``ν`` itself would
be: their energy distance over ``E|Y - Y'| / n`` (the expected energy distance of ``n``
draws) at most ``_LANDED_LINEAR`` for ``L`` alone, at most ``_LANDED_BENT`` for a bend (a
field fitted to the rows it is judged on looks closer than it is).  Only a set fitted whole
(at most ``WHOLE_ROWS`` rows) can be judged so; a larger set's bend is fitted on
``FIT_ROWS`` of its rows, and the transport plan lands the rest from where it leaves them.
A bend may move the rows at most ``_MAX_DISPLACEMENT`` times as far (mean squared) as ``L``
does, a bound near the optimal cost ``W₂²`` (of which ``L``'s displacement is a lower
bound): past it the fit stops and the plan lands the set.  So does a fit that has spent its
work (``_MAX_WORK``, about 10 s on 2 cores: in hundreds of dimensions a bend costs minutes).
A shift that leaves the moments alone gives ``L`` no displacement and the bend no room: the
plan lands such a set, as it did before there was a bend.

The rows are chosen by their hashes (:meth:`Data.rows_by_hash`) and kept in that order, so
the bend, like the rest of the map, is a function of the set: a permuted, re-chunked or
distributed copy of the rows is bent alike.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.spatial.distance import pdist

from ..kernels import Kernel

# λ, largest first, by decades: the first that lands is kept.  By half decades the path
# stops nearer the landing threshold and nearer the displacement bound (measured before the
# fit ran on W / s, with a landing threshold of 0.9): over 8 seeds iris kept
# more accuracy (0.815 against 0.808), but on the benchmark's 3 seeds iris lost it (0.761
# against 0.800), digits landed less (1.104 against 1.097) and the 5000-row s-curve moved
# 1.21 times W₂² (against 1.01; benchmarks/notes/matching-research.md)
_PENALTIES = (1e1, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# the features' width h in units of s, one stage each
_WIDTHS = (1.0, 0.5)
# the first rows (in hash order) are the centres: d coefficients each
_MAX_CENTRES = 200
# L-BFGS iterations per λ (warm-started along the path); half as many for a bend the plan
# follows, which only needs the set's coarse shape (the s-curves of 5000 and 20000 rows, a
# scratch loop over these constants: 300 rows and 50 iterations land, keep the classes and
# move the rows within 0.004 of 500 rows and 100 iterations, in 0.65 s of transform against
# 1.07 s and 1.97 against 2.46; benchmarks/notes/matching-research.md)
_MAX_ITER = 100
_MAX_ITER_BEFORE_PLAN = 50
# landed: energy distance over that of n draws of ν, for L alone and for a bend
_LANDED_LINEAR = 1.0
_LANDED_BENT = 0.85
# a bend's mean squared displacement at most this many times L's
_MAX_DISPLACEMENT = 1.5
# the fit's work, in kernel entries × dimensions over the energy reductions of its L-BFGS
# evaluations (each m (m + J) d for m rows and J atoms): Numba runs 5-10·10⁹ a second on 2
# cores, so about 10 s, some 2000 evaluations of a 1000-row fit onto 500 atoms in 16
# dimensions (a bend of digits takes a few hundred; in 784 dimensions, raw pixels, 42): past
# it the fit stops where it is
_MAX_WORK = 5e10
# a set of at most this many rows is fitted whole, and may land without the plan; a larger
# one is bent on FIT_ROWS of its rows, then landed by the plan
WHOLE_ROWS = 1000
FIT_ROWS = 300
# the rows' hash function (any fixed value: the choice of rows depends on the rows only)
HASH_SEED = 0
_ENERGY = Kernel("energy")


class Bend:
    """The fitted stages ``(centres, width, W)``, applied in turn to aligned float64 rows,
    and whether the set landed without the plan."""

    def __init__(self, stages: list[tuple[np.ndarray, float, np.ndarray]], landed: bool):
        self.stages, self.landed = stages, landed

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        for centres, width, W in self.stages:
            Z = Z + features(Z, centres, width) @ W
        return Z


def features(Z: np.ndarray, centres: np.ndarray, width: float) -> np.ndarray:
    """``φ_k(z_i) = exp(-|z_i - c_k|² / (2 width²))``, shape ``(len(Z), len(centres))``.
    The squared distances expand as ``|z|² + |c|² - 2 z·c`` around the centres' mean: about
    the origin, a set far from it relative to its spread would lose them to cancellation."""
    origin = centres.mean(axis=0)
    Z, centres = Z - origin, centres - origin
    sq = (np.sum(Z * Z, axis=1)[:, None] + np.sum(centres * centres, axis=1)[None]
          - 2.0 * Z @ centres.T)
    return np.exp(-np.maximum(sq, 0.0) / (2.0 * width * width))


class _Target:
    """The fitted measure and the engine of the energy reductions against it."""

    def __init__(self, engine, Y: np.ndarray, b: np.ndarray, n_rows: int):
        self.engine, self.Y, self.b = engine, Y, b
        # E|Y - Y'| under ν
        self.spread = -float(b @ engine.matvec(_ENERGY, Y, Y, b[:, None])[:, 0])
        # the energy reductions left to the fit (_MAX_WORK), at least a few per stage
        self.left = max(10, int(_MAX_WORK / (n_rows * (n_rows + Y.shape[0]) * Y.shape[1])))

    def energy(self, Z: np.ndarray) -> tuple[float, np.ndarray]:
        """``ED(μ_Z, ν)`` and its gradient in the rows of ``Z``: one fused reduction of the
        energy kernel ``-|z - s|`` over the sources ``[Z; Y]``, ``ED = 2 E|Z - Y| - E|Z -
        Z'| - E|Y - Y'|`` (the rows' own pairs with the diagonal, a V-statistic)."""
        n = Z.shape[0]
        weights = np.concatenate([np.full(n, 1.0 / n**2), -2.0 * self.b / n])
        slopes = np.concatenate([np.full(n, 2.0 / n**2), -2.0 * self.b / n])
        value, grad = self.engine.value_grad(_ENERGY, Z, np.concatenate([Z, self.Y]),
                                             weights[:, None], slopes)
        return float(value.sum()) - self.spread, grad

    def landing(self, Z: np.ndarray, distance: float | None = None) -> float:
        """``ED(μ_Z, ν)`` (``distance``, when already known) over ``E|Y - Y'| / n``, the
        expected energy distance of ``n`` draws of ``ν`` (a V-statistic's: ``2E - (n-1)/n E
        - E = E/n``).  A measure on one point has no spread: the rows land when they are on
        it (up to round-off)."""
        if distance is None:
            distance = self.energy(Z)[0]
        if self.spread <= 0.0:
            return 0.0 if distance <= 1e-12 * max(1.0, float(np.abs(Z).max())) else np.inf
        return distance / (self.spread / Z.shape[0])


def _stage(target: _Target, X: np.ndarray, Z: np.ndarray, n_centres: int, width: float,
           scale: float, bound: float, whole: bool):
    """``(W, moved, landed, go_on)`` of one stage of width ``width`` from the rows ``Z``
    (started at ``X``): the coefficients of the first ``λ`` that lands, else of the last
    within the displacement bound (None, and ``Z`` unmoved: not even the first), the rows
    they move ``Z`` to; ``go_on`` false once the bound is crossed or the work spent."""
    centres = Z[:n_centres]
    Phi = features(Z, centres, width)
    K = features(centres, centres, width)
    shape = centres.shape
    v, kept, kept_moved = np.zeros(shape).ravel(), None, Z
    for lam in _PENALTIES:
        # in the unitless V = W / s, ED(Z + s Φ V)/s + λ tr(Vᵀ K V): L-BFGS's tolerances,
        # absolute on the gradient, then stop alike whatever the data's units
        def objective(v, lam=lam):
            V = v.reshape(shape)
            value, grad = target.energy(Z + scale * (Phi @ V))
            KV = K @ V
            return (value / scale + lam * float(np.sum(V * KV)),
                    (Phi.T @ grad + 2.0 * lam * KV).ravel())

        fit = minimize(objective, v, jac=True, method="L-BFGS-B",
                       options={"maxiter": _MAX_ITER if whole else _MAX_ITER_BEFORE_PLAN,
                                "maxfun": target.left})
        target.left -= fit.nfev
        v = fit.x
        V = v.reshape(shape)
        moved = Z + scale * (Phi @ V)
        if np.mean(np.sum((moved - X) ** 2, axis=1)) > bound:
            return kept, kept_moved, False, False
        kept, kept_moved = scale * V, moved
        # the fit's value at its last point holds the energy distance there: no reduction
        distance = scale * (float(fit.fun) - lam * float(np.sum(V * (K @ V))))
        if whole and target.landing(moved, distance) <= _LANDED_BENT:
            return kept, moved, True, True
        if target.left <= 0:  # the work is spent: the plan lands the set from here
            return kept, moved, False, False
    return kept, kept_moved, False, True


def fit_bend(X: np.ndarray, Z: np.ndarray, engine, Y: np.ndarray, b: np.ndarray,
             whole: bool) -> Bend:
    """The bend of the rows ``X`` (float64, in hash order) aligned by ``L`` as ``Z`` onto
    ``ν = Σ_j b_j δ_{y_j}``; ``whole``: ``X`` is the whole set (module docstring)."""
    target = _Target(engine, Y, b, Z.shape[0])
    if whole and target.landing(Z) <= _LANDED_LINEAR:
        return Bend([], landed=True)
    distances = pdist(Z)
    positive = distances[distances > 0]
    # fewer than 4 rows, or rows all equal, have no shape for a field to bend
    if Z.shape[0] < 4 or positive.size == 0:
        return Bend([], landed=False)
    scale = float(np.median(positive))
    bound = _MAX_DISPLACEMENT * float(np.mean(np.sum((Z - X) ** 2, axis=1)))
    n_centres = min(_MAX_CENTRES, Z.shape[0])
    stages = []
    for width in _WIDTHS:
        W, moved, landed, go_on = _stage(target, X, Z, n_centres, width * scale, scale,
                                         bound, whole)
        if W is not None:
            stages.append((Z[:n_centres], width * scale, W))
            Z = moved
        if landed or not go_on:
            return Bend(stages, landed)
    return Bend(stages, landed=False)

