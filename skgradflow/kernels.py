"""Kernel formulas, for the NumPy and KeOps backends, and bandwidth rules.

Every kernel is written in *scaled* coordinates ``u = z / h``: ``k(z, s) = κ(|u - v|²)``
and ``∇_z k(z, s) = γ(|u - v|²) (u - v) / h``.  The bandwidth therefore never enters a
KeOps formula: one compiled formula serves every bandwidth, and a grid search over
``bandwidth`` never recompiles.  The energy kernel ``-r`` has no bandwidth and is
evaluated with ``h = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist

KERNELS = ("gaussian", "laplacian", "imq", "energy")
BANDWIDTH_RULES = ("median", "scott", "silverman")

# Above this many target rows the median heuristic is computed on an i.i.d. subsample.
_MEDIAN_MAX_ROWS = 2000


@dataclass(frozen=True)
class Kernel:
    """A translation-invariant kernel with its bandwidth.

    Parameters
    ----------
    name : {"gaussian", "laplacian", "imq", "energy"}
        ``gaussian``: ``exp(-r²/(2h²))``; ``laplacian``: ``exp(-r/h)``;
        ``imq``: ``(1 + r²/h²)^(-1/2)``; ``energy``: ``-r`` (no bandwidth).
    bandwidth : float
        The length scale ``h > 0``; ignored by the energy kernel.

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.kernels import Kernel
    >>> k = Kernel("gaussian", 2.0)
    >>> r2 = np.array([1.0]) / k.scale**2  # |z - s| = 1, in scaled coordinates
    >>> round(float(k.value(r2)[0]), 12)  # exp(-1 / (2 · 2²))
    0.882496902585
    """

    name: str
    bandwidth: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.name!r}.")

    @property
    def scale(self) -> float:
        """The factor ``h`` that coordinates are divided by before the kernel is evaluated."""
        return 1.0 if self.name == "energy" else float(self.bandwidth)

    @property
    def diagonal(self) -> float:
        """``k(x, x)``."""
        return 0.0 if self.name == "energy" else 1.0

    # --- NumPy ----------------------------------------------------------------
    def value(self, r2: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``κ(r2)``: the kernel as a function of the squared *scaled* distance.

        ``out`` (which may be ``r2`` itself) receives the result without a temporary array:
        on kernel blocks, writing into memory already in use is several times faster than
        allocating fresh arrays for each intermediate."""
        if out is None:
            out = np.empty_like(r2)
        if self.name == "gaussian":
            np.multiply(r2, -0.5, out=out)
            return np.exp(out, out=out)
        np.sqrt(r2, out=out) if self.name != "imq" else np.add(r2, 1.0, out=out)
        if self.name == "laplacian":
            np.negative(out, out=out)
            return np.exp(out, out=out)
        if self.name == "imq":
            np.sqrt(out, out=out)
            return np.reciprocal(out, out=out)
        return np.negative(out, out=out)

    @property
    def grad_needs_r2(self) -> bool:
        """Whether :meth:`grad_factor` reads ``r2`` (the cusp kernels) or only ``κ``."""
        return self.name in ("laplacian", "energy")

    def grad_factor(self, r2: np.ndarray, k: np.ndarray) -> np.ndarray:
        """``γ(r2)`` with ``∇_u κ(|u - v|²) = γ (u - v)``; ``k`` is ``κ(r2)``, reused.

        The Laplacian and energy kernels have a cusp at ``r = 0``; their gradient is taken
        to be 0 there (the value KeOps' ``rsqrt(0) = 0`` gives).
        """
        if self.name == "gaussian":
            return -k
        if self.name == "imq":
            return -(k**3)
        with np.errstate(divide="ignore"):
            inv_r = np.where(r2 > 0, 1.0 / np.sqrt(np.where(r2 > 0, r2, 1.0)), 0.0)
        inv_r = inv_r.astype(r2.dtype, copy=False)
        return -k * inv_r if self.name == "laplacian" else -inv_r

    # --- KeOps ----------------------------------------------------------------
    def keops_value(self, r2: Any) -> Any:
        """``κ`` on a KeOps LazyTensor of squared scaled distances."""
        if self.name == "gaussian":
            return (-0.5 * r2).exp()
        if self.name == "laplacian":
            return (-(r2.sqrt())).exp()
        if self.name == "imq":
            return (1.0 + r2).rsqrt()
        return -(r2.sqrt())

    def keops_value_and_grad(self, r2: Any, v: Any, aD: Any) -> Any:
        """The summand ``[κ v_j, γ a_j (u_i - v_j)]`` on KeOps LazyTensors.

        KeOps does not share subexpressions between the parts of a formula, so the
        exponential is factored out and evaluated once per pair: ``κ [v_j, (γ/κ) a_j D]``.
        """
        if self.name == "gaussian":
            return self.keops_value(r2) * v.concat(-aD)
        if self.name == "laplacian":
            return self.keops_value(r2) * v.concat(-(r2.rsqrt()) * aD)
        if self.name == "imq":
            inv = 1.0 / (1.0 + r2)
            return inv.sqrt() * v.concat(-inv * aD)
        return (-(r2.sqrt()) * v).concat(-(r2.rsqrt()) * aD)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    idx = int(np.searchsorted(cum, 0.5 * cum[-1]))
    return float(values[order][min(idx, len(values) - 1)])


def median_heuristic(
    X: np.ndarray, weights: np.ndarray | None = None, random_state: Any = None
) -> float:
    """Median of ``|Y - Y'|`` for ``Y, Y'`` drawn independently from the weighted sample.

    Exact (a weighted median over all pairs, self-pairs included) for at most
    2000 rows; above that, the plain median over the pairs of 2000 rows drawn i.i.d.
    with probabilities ``weights`` (an unbiased draw of the same law).  When more than
    half of the pairs coincide, the mean distance is used instead, and 1.0 when every
    row is the same point, so that the result is always a usable bandwidth.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    weights : ndarray of shape (n_samples,), optional
        Non-negative, summing to 1; uniform when omitted.
    random_state : int, RandomState or Generator, optional
        Seeds the subsample for large inputs.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.kernels import median_heuristic
    >>> median_heuristic(np.array([[0.0], [1.0], [3.0]]))
    1.0
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    if n > _MEDIAN_MAX_ROWS:
        rng = np.random.default_rng(_seed_from(random_state))
        rows = rng.choice(n, size=_MEDIAN_MAX_ROWS, replace=True, p=w / w.sum())
        return median_of_draws(X[rows])
    else:
        iu = np.triu_indices(n, k=1)
        dist = np.concatenate([pdist(X), np.zeros(n)])
        # off-diagonal pairs count twice (i, j) and (j, i); self-pairs once
        pair_w = np.concatenate([2.0 * w[iu[0]] * w[iu[1]], w**2])
    return _usable_median(dist, pair_w)


def median_of_draws(rows: np.ndarray) -> float:
    """The median heuristic from rows drawn i.i.d. from the weighted sample: the plain
    median of their pairwise distances (the rule of :func:`median_heuristic` above 2000
    rows, wherever the rows were drawn)."""
    dist = pdist(np.asarray(rows, dtype=np.float64))
    return _usable_median(dist, np.ones_like(dist))


def _usable_median(dist: np.ndarray, pair_w: np.ndarray) -> float:
    """The weighted median of the distances; their mean when more than half of the pairs
    coincide, and 1.0 when all do."""
    med = _weighted_median(dist, pair_w)
    if med <= 0.0:
        med = float(np.average(dist, weights=pair_w))
    return med if med > 0.0 else 1.0


def resolve_bandwidth(
    bandwidth: float | str,
    X: np.ndarray,
    weights: np.ndarray | None = None,
    random_state: Any = None,
    n_samples: float | None = None,
) -> float:
    """The bandwidth ``h`` for a float or a rule.

    ``"median"``: :func:`median_heuristic`.  ``"scott"``: ``n^(-1/(d+4)) σ`` and
    ``"silverman"``: ``(n (d+2) / 4)^(-1/(d+4)) σ``, with ``n = 1 / Σ w²`` the effective
    sample size and ``σ`` the root mean (weighted) variance of the features.  The rules of
    scikit-learn's ``KernelDensity`` omit ``σ`` (they assume standardised data): on
    standardised data the two agree.

    Parameters
    ----------
    bandwidth : float or {"median", "scott", "silverman"}
    X : ndarray of shape (n_samples, n_features)
    weights : ndarray of shape (n_samples,), optional
        Non-negative, summing to 1; uniform when omitted.
    random_state : int, RandomState or Generator, optional
    n_samples : float, optional
        The sample size ``n`` of the Scott and Silverman rules, instead of the effective
        sample size ``1 / Σ w²``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.kernels import resolve_bandwidth
    >>> X = np.random.default_rng(0).normal(size=(1000, 2))
    >>> round(resolve_bandwidth("scott", X), 2)
    0.32
    """
    if not isinstance(bandwidth, str):
        return float(bandwidth)
    X = np.asarray(X)
    if weights is None:
        weights = np.full(X.shape[0], 1.0 / X.shape[0])
    if bandwidth == "median":
        return median_heuristic(X, weights, random_state=random_state)
    if bandwidth not in BANDWIDTH_RULES:
        raise ValueError(f"bandwidth must be a positive float or one of {BANDWIDTH_RULES}.")
    Xd = np.asarray(X, dtype=np.float64)
    n = 1.0 / float(np.sum(weights**2)) if n_samples is None else float(n_samples)
    return bandwidth_rule(bandwidth, root_mean_variance(Xd, weights), n, Xd.shape[1])


def root_mean_variance(X: np.ndarray, weights: np.ndarray) -> float:
    """``σ``: the root of the mean weighted (biased) variance of the features of ``X``
    (float64 rows, weights summing to 1)."""
    mean = weights @ X
    return float(np.sqrt(np.mean(weights @ (X - mean) ** 2)))


def bandwidth_rule(rule: str, sigma: float, n: float, d: int) -> float:
    """Scott's rule ``n^(-1/(d+4)) σ`` or Silverman's ``(n (d+2) / 4)^(-1/(d+4)) σ``;
    data without spread (``σ = 0``) count as ``σ = 1``, so that the result is always a
    usable bandwidth."""
    if rule not in ("scott", "silverman"):
        raise ValueError(f"bandwidth must be a positive float or one of {BANDWIDTH_RULES}.")
    sigma = sigma if sigma > 0.0 else 1.0
    factor = n ** (-1.0 / (d + 4)) if rule == "scott" else (n * (d + 2) / 4.0) ** (
        -1.0 / (d + 4)
    )
    return factor * sigma


def _seed_from(random_state: Any) -> Any:
    """A seed for ``np.random.default_rng`` from any scikit-learn ``random_state``."""
    if isinstance(random_state, np.random.RandomState):
        return random_state.randint(np.iinfo(np.int32).max)
    return random_state
