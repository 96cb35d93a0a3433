"""Distances between weighted samples: the MMD and the energy distance.

Both are the biased (V-statistic) estimates between the weighted empirical measures, so
``mmd(X, X) == 0`` exactly in exact arithmetic and the value is what the flows minimise.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from .backends import Backend, check_backend
from .data import Data, as_data, placed_together, session
from .inspection import fitted_measure, split_pipeline
from .kernels import KERNELS, Kernel


def mmd(
    X,
    Y,
    *,
    kernel: str = "gaussian",
    bandwidth: float | str = "median",
    x_weights=None,
    y_weights=None,
    backend: str | Backend = "auto",
) -> float:
    """Squared maximum mean discrepancy between two weighted samples.

    ``MMD²(μ, ν) = aᵀ K a`` over the pooled points ``[X; Y]`` with signed weights
    ``a = [x_weights; -y_weights]``: one kernel reduction, never an ``n × m`` matrix on the
    KeOps backend.  A value within the round-off of its terms (``|a|ᵀ|K||a|`` times a few
    machine epsilons of the dtype) is returned as 0: ``mmd(X, X) == 0.0`` exactly.

    Parameters
    ----------
    X : array-like of shape (n, d)
    Y : array-like of shape (m, d)
    kernel : {"gaussian", "laplacian", "imq", "energy"}, default="gaussian"
    bandwidth : float or "median", default="median"
        ``"median"``: median distance of the pooled sample (so that ``mmd`` is symmetric).
    x_weights, y_weights : array-like, optional
        Non-negative weights, normalised to sum to 1; uniform when omitted.
    backend : str or Backend, default="auto"
        A name of :func:`skgradflow.backends.backend_names` or a backend instance.

    Returns
    -------
    float

    Notes
    -----
    ``X``, ``Y`` and the weights may be dask arrays: the sum then runs as one task per pair
    of row chunks of the pooled sample on the Dask cluster (``backend`` names the engine of
    each task), and ``"median"`` uses 2000 rows drawn by weight.

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.metrics import mmd
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> mmd(X, X)
    0.0
    >>> mmd(X, X + 3.0, bandwidth=1.0) > 0.5
    True
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}.")
    check_backend(backend)
    h = _check_bandwidth(bandwidth)
    with session(backend, X, Y, x_weights, y_weights, arrays_only=True):
        first = as_data(X, x_weights, name="X", weights_name="x_weights",
                        dtype=[np.float64, np.float32])
        second = as_data(Y, y_weights, name="Y", weights_name="y_weights",
                         dtype=[np.float64, np.float32])
        return _mmd(first, second, kernel, h, backend)


def _mmd(first: Data, second: Data, kernel: str, h: float | None, backend) -> float:
    """``mmd`` between two validated samples (``h=None``: the median heuristic)."""
    if first.n_features != second.n_features:
        raise ValueError(
            f"X and Y must have the same number of features; got {first.n_features} and "
            f"{second.n_features}."
        )
    first, second = placed_together(first, second)
    pool = first.pooled_with(second)
    if h is None:
        # the median over the pooled sample (so that mmd is symmetric), rows drawn by |a|/2
        h = pool.median_distance(np.random.default_rng(0))
    # aᵀKa is a difference of terms of size |a|ᵀ|K||a| (the kernels here have entries of
    # one sign): a value within their round-off is 0, whatever its sign.
    value, size = pool.quadratic_form(Kernel(kernel, h), backend)
    if not (np.isfinite(value) and np.isfinite(size)):
        raise FloatingPointError(
            "The MMD is not finite: the points are too far apart for their dtype (overflow)."
        )
    return value if value > 64 * np.finfo(pool.dtype).eps * size else 0.0


def _energy_distance(first: Data, second: Data, backend) -> float:
    """``energy_distance`` between two validated samples."""
    return _mmd(first, second, "energy", 1.0, backend)


def _check_bandwidth(bandwidth) -> float | None:
    """A fixed bandwidth, or ``None`` for ``"median"``."""
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"bandwidth must be a positive float or 'median'; got {bandwidth!r}.")
        return None
    h = float(bandwidth) if isinstance(bandwidth, numbers.Real) else np.nan
    if not np.isfinite(h) or h <= 0:
        raise ValueError(f"bandwidth must be a positive float or 'median'; got {bandwidth!r}.")
    return h


def energy_distance(
    X, Y, *, x_weights=None, y_weights=None, backend: str | Backend = "auto"
) -> float:
    """Energy distance ``2E|X - Y| - E|X - X'| - E|Y - Y'|`` between weighted samples.

    This is the squared MMD of the kernel ``-|x - y|`` (Székely's energy distance ``D²``);
    ``scipy.stats.energy_distance`` returns its square root, in one dimension.

    Parameters
    ----------
    X : array-like of shape (n, d)
    Y : array-like of shape (m, d)
    x_weights, y_weights : array-like, optional
    backend : str or Backend, default="auto"

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.metrics import energy_distance
    >>> round(energy_distance(np.array([[0.0]]), np.array([[1.0]])), 12)
    2.0
    """
    return mmd(X, Y, kernel="energy", bandwidth=1.0, x_weights=x_weights,
               y_weights=y_weights, backend=backend)


def make_distribution_scorer(metric: str = "energy_distance", **kwargs: Any) -> Callable:
    """A scorer for ``GridSearchCV(scoring=...)``: minus ``metric`` between the fitted
    measure of a sampler and the held-out samples.

    The estimator may be a fitted ``Pipeline`` ending in one of this package's estimators:
    the held-out samples then go through the steps before it, as in ``Pipeline.score``, and
    are compared with the measure in the estimator's own space.

    Parameters
    ----------
    metric : {"energy_distance", "mmd"}, default="energy_distance"
    **kwargs
        Passed to the metric (e.g. ``kernel`` and ``bandwidth`` for ``"mmd"``).

    Returns
    -------
    callable ``scorer(estimator, X, y=None) -> float``

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import GridSearchCV
    >>> from skgradflow import IFTSampler
    >>> from skgradflow.metrics import make_distribution_scorer
    >>> X = np.random.default_rng(0).normal(size=(120, 2))
    >>> sampler = IFTSampler(n_particles=30, max_iter=20, tol=0, random_state=0)
    >>> search = GridSearchCV(sampler, {"beta": [0.0, 1.0]}, cv=2,
    ...                       scoring=make_distribution_scorer("mmd", bandwidth=1.0))
    >>> search.fit(X).best_params_["beta"] in (0.0, 1.0)
    True
    """
    funcs = {"energy_distance": energy_distance, "mmd": mmd}
    if metric not in funcs:
        raise ValueError(f"metric must be one of {tuple(funcs)}; got {metric!r}.")
    func = funcs[metric]

    def scorer(estimator, X, y=None) -> float:
        transformers, _ = split_pipeline(estimator)
        atoms, w = fitted_measure(estimator)
        if transformers is not None:
            X = transformers.transform(X)
        return -func(atoms, X, x_weights=w, **kwargs)

    scorer.__name__ = f"neg_{metric}"
    return scorer
