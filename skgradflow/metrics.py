"""Distances between weighted samples: the MMD and the energy distance.

Both are the biased (V-statistic) estimates between the weighted empirical measures, so
``mmd(X, X) == 0`` exactly in exact arithmetic and the value is what the flows minimise.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.utils import check_array

from .backends import Backend, check_backend, resolve_backend
from .backends._dask import dask_session, is_dask_array
from .inspection import fitted_measure, split_pipeline
from .kernels import KERNELS, Kernel, median_heuristic


def _check_weights(weights, X: np.ndarray, name: str) -> np.ndarray:
    n = X.shape[0]
    if weights is None:
        return np.full(n, 1.0 / n)
    # checked here rather than by scikit-learn's _check_sample_weight, whose messages
    # would name the argument "sample_weight"
    w = check_array(weights, ensure_2d=False, dtype=np.float64, input_name=name)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one weight per row; got {w.shape}.")
    if np.any(w < 0):
        raise ValueError(f"{name} must be non-negative; got a minimum of {w.min():.3g}.")
    if not w.sum() > 0:
        raise ValueError(f"{name} must have a positive sum; got all zeros.")
    return w / w.sum()


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
    if is_dask_array(X) or is_dask_array(Y):
        with dask_session(backend, X, Y, x_weights, y_weights, arrays_only=True):
            return _mmd_dask(X, Y, kernel, bandwidth, x_weights, y_weights, backend)
    X = check_array(X, dtype=[np.float64, np.float32], input_name="X")
    Y = check_array(Y, dtype=[np.float64, np.float32], input_name="Y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"X and Y must have the same number of features; got {X.shape[1]} and "
            f"{Y.shape[1]}."
        )
    dtype = np.result_type(X.dtype, Y.dtype)
    wx = _check_weights(x_weights, X, "x_weights")
    wy = _check_weights(y_weights, Y, "y_weights")
    P = np.concatenate([X, Y]).astype(dtype, copy=False)
    a = np.concatenate([wx, -wy])
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"bandwidth must be a positive float or 'median'; got {bandwidth!r}.")
        h = median_heuristic(P, 0.5 * np.abs(a), random_state=0)
    else:
        h = float(bandwidth) if isinstance(bandwidth, numbers.Real) else np.nan
        if not np.isfinite(h) or h <= 0:
            raise ValueError(f"bandwidth must be a positive float or 'median'; got {bandwidth!r}.")
    be = resolve_backend(backend, P.shape[0] ** 2)
    # aᵀKa is a difference of terms of size |a|ᵀ|K||a| (the kernels here have entries of
    # one sign): a value within their round-off is 0, whatever its sign.
    V = np.stack([a, np.abs(a)], axis=1).astype(dtype)
    K_a = be.matvec(Kernel(kernel, h), P, P, V).astype(np.float64)
    value, size = float(a @ K_a[:, 0]), abs(float(np.abs(a) @ K_a[:, 1]))
    if not (np.isfinite(value) and np.isfinite(size)):
        raise FloatingPointError(
            "The MMD is not finite: the points are too far apart for their dtype (overflow)."
        )
    return value if value > 64 * np.finfo(dtype).eps * size else 0.0


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


def _dask_points(X, name: str):
    """A validated 2-D float dask array of ``X`` (a NumPy ``X`` in one chunk)."""
    import dask.array as da
    from sklearn.base import BaseEstimator

    from .backends._dask import validate_X

    if not is_dask_array(X):
        X = check_array(X, dtype=[np.float64, np.float32], input_name=name)
        return da.from_array(X, chunks=X.shape)

    def check(probe):
        return check_array(probe, input_name=name)

    # a throwaway estimator: validate_X records n_features_in_ on it
    return validate_X(BaseEstimator(), X, dtype=[np.float64, np.float32], check=check)


def _dask_weights(weights, X, name: str):
    import dask
    import dask.array as da

    n = X.shape[0]
    if weights is None:
        return da.full((n,), 1.0 / n, chunks=(X.chunks[0],))
    if not is_dask_array(weights):
        return da.from_array(_check_weights(weights, np.empty((n, 0)), name),
                             chunks=(X.chunks[0],))
    if weights.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},), one weight per row; got {weights.shape}."
        )
    w = weights.astype(np.float64)
    has_nan, has_inf, lowest, total = dask.compute(
        da.isnan(w).any(), da.isinf(w).any(), w.min(), w.sum()
    )
    if has_nan or has_inf:  # the message of NumPy weights with the same defect
        check_array(np.array([np.nan if has_nan else np.inf]), ensure_2d=False, input_name=name)
    if lowest < 0:
        raise ValueError(f"{name} must be non-negative; got a minimum of {lowest:.3g}.")
    if not total > 0:
        raise ValueError(f"{name} must have a positive sum; got all zeros.")
    return (w / total).rechunk((X.chunks[0],))


def _mmd_dask(X, Y, kernel, bandwidth, x_weights, y_weights, backend) -> float:
    """``mmd`` when either sample is a dask array: one task per pair of row chunks of the
    pooled sample, on the workers (nothing gathered but two floats per task)."""
    import dask.array as da

    from .backends._dask import as_dask_engine, sample_rows, signed_quadratic_form

    h = _check_bandwidth(bandwidth)
    X, Y = _dask_points(X, "X"), _dask_points(Y, "Y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"X and Y must have the same number of features; got {X.shape[1]} and "
            f"{Y.shape[1]}."
        )
    dtype = np.result_type(X.dtype, Y.dtype)
    wx, wy = _dask_weights(x_weights, X, "x_weights"), _dask_weights(y_weights, Y, "y_weights")
    P = da.concatenate([X.astype(dtype), Y.astype(dtype)]).rechunk({1: -1})
    a = da.concatenate([wx, -wy]).rechunk((P.chunks[0],))
    if h is None:
        from scipy.spatial.distance import pdist

        from .kernels import _MEDIAN_MAX_ROWS, _weighted_median

        # the rule of median_heuristic above 2000 rows, on rows drawn by |a| / 2
        dist = pdist(sample_rows(P, 0.5 * abs(a), _MEDIAN_MAX_ROWS,
                                 np.random.default_rng(0)).astype(np.float64))
        h = _weighted_median(dist, np.ones_like(dist))
        h = h if h > 0 else (float(dist.mean()) or 1.0)
    value, size = signed_quadratic_form(P, a, Kernel(kernel, h), as_dask_engine(backend).inner)
    if not (np.isfinite(value) and np.isfinite(size)):
        raise FloatingPointError(
            "The MMD is not finite: the points are too far apart for their dtype (overflow)."
        )
    return value if value > 64 * np.finfo(dtype).eps * size else 0.0


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
