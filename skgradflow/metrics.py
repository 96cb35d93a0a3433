"""Distances between weighted samples (the MMD and the energy distance), and the quality of
synthetic samples (the distance-to-closest-record ratio and a classifier two-sample test).

The two distances are the biased (V-statistic) estimates between the weighted empirical
measures, so ``mmd(X, X) == 0`` exactly in exact arithmetic and the value is what the flows
minimise.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from ._guards import representable_range
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
    # Squared distances beyond the dtype's range (points at 1e160 overflow; at 1e-170 they
    # underflow to 0) are computed on the rows divided by a power of two, which is exact:
    # the kernels are functions of r/h, so the value is unchanged with h divided too, and
    # the energy kernel -r scales with the rows.
    factor = _rescaling(*pool.extent(), pool.dtype)
    if factor != 1.0:
        pool = pool.with_rows(pool.rows / pool.dtype.type(factor))
        if h is not None and kernel != "energy":
            h = h / factor
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
    value = value if value > 64 * np.finfo(pool.dtype).eps * size else 0.0
    return value * factor if kernel == "energy" else value


def _rescaling(largest: float, spread: float, dtype) -> float:
    """1, or the power of two that brings rows of this extent into the range where their
    squared distances are normal numbers of ``dtype``."""
    lo, hi = representable_range(dtype)
    if largest > hi and np.isfinite(largest):
        return float(2.0 ** np.floor(np.log2(largest)))
    if 0 < spread < lo and largest <= hi:
        return float(2.0 ** np.floor(np.log2(spread)))
    return 1.0


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


# --- the quality of synthetic samples ------------------------------------------------------
def _check_point_sets(named: dict[str, Any]) -> list[np.ndarray]:
    """The arrays of ``named`` (argument name -> value) as 2-D float64, with one number of
    features; a dask array is computed (these metrics look at every row)."""
    arrays = [np.asarray(as_data(value, name=name).to_host(), dtype=np.float64)
              for name, value in named.items()]
    widths = {name: A.shape[1] for name, A in zip(named, arrays, strict=True)}
    if len(set(widths.values())) > 1:
        listed = ", ".join(f"{name} has {width}" for name, width in widths.items())
        raise ValueError(f"The samples must have the same number of features; {listed}.")
    return arrays


def distance_to_closest_record_ratio(samples, X_train, X_holdout) -> float:
    """How close synthetic samples lie to the training rows, relative to new real rows.

    The median, over ``samples``, of the Euclidean distance to the nearest row of
    ``X_train``, divided by the same median over ``X_holdout`` (real rows the sampler did
    not see).  About 1: the samples are as far from the training rows as new data is;
    near 0: they are (near-)copies of training rows (memorisation); well above 1: they lie
    off the data.  Scale the features first (e.g. ``StandardScaler`` fitted on
    ``X_train``): the distance weighs every feature by its units.

    Parameters
    ----------
    samples : array-like of shape (n_samples, n_features)
        The synthetic rows.
    X_train : array-like of shape (n_train, n_features)
        The rows the sampler was fitted on.
    X_holdout : array-like of shape (n_holdout, n_features)
        Real rows from the same source, not used by the fit.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If every held-out row has a copy in ``X_train`` (the median distance is 0 and the
        ratio undefined), or on invalid arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.metrics import distance_to_closest_record_ratio
    >>> rng = np.random.default_rng(0)
    >>> X_train, X_holdout = rng.normal(size=(500, 2)), rng.normal(size=(200, 2))
    >>> distance_to_closest_record_ratio(X_train[:100], X_train, X_holdout)
    0.0
    >>> new = rng.normal(size=(300, 2))
    >>> 0.8 < distance_to_closest_record_ratio(new, X_train, X_holdout) < 1.25
    True
    """
    from sklearn.neighbors import NearestNeighbors

    samples, X_train, X_holdout = _check_point_sets(
        {"samples": samples, "X_train": X_train, "X_holdout": X_holdout}
    )
    index = NearestNeighbors(n_neighbors=1).fit(X_train)
    sample_dist = float(np.median(index.kneighbors(samples)[0][:, 0]))
    holdout_dist = float(np.median(index.kneighbors(X_holdout)[0][:, 0]))
    if not holdout_dist > 0:
        raise ValueError(
            "X_holdout must be rows the sampler did not see: at least half of them have a "
            "copy in X_train (median distance 0), so the ratio is undefined. Hold out rows "
            "that are not in X_train."
        )
    return sample_dist / holdout_dist


def classifier_two_sample_auc(
    samples, X_real, *, classifier=None, cv: int = 5, random_state: Any = 0
) -> float:
    """Classifier two-sample test: how well a classifier tells synthetic from real rows.

    The rows of ``samples`` (label 1) and ``X_real`` (label 0) are pooled, and the mean
    ROC AUC of ``classifier`` over ``cv`` stratified, shuffled folds is returned.  0.5: the
    classifier cannot tell them apart (the samples look like the real rows); 1: it always
    can.  ``X_real`` should be rows the sampler did not see: against its training rows,
    copies of them would score 0.5.

    Parameters
    ----------
    samples : array-like of shape (n_samples, n_features)
    X_real : array-like of shape (n_real, n_features)
    classifier : scikit-learn classifier or None, default=None
        Cloned for each fold; it needs ``predict_proba`` or ``decision_function``.  ``None``:
        ``HistGradientBoostingClassifier(max_iter=100, early_stopping=False)``, fast, and
        sensitive to differences in the shape of the marginals and of their interactions.
    cv : int, default=5
        Number of folds, at least 2 and at most the rows of the smaller set.
    random_state : int, RandomState instance or None, default=0
        Seeds the shuffle of the folds and the default classifier.

    Returns
    -------
    float
        The mean AUC over the folds.

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.metrics import classifier_two_sample_auc
    >>> rng = np.random.default_rng(0)
    >>> real, same = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    >>> bool(classifier_two_sample_auc(same, real) < 0.6)
    True
    >>> bool(classifier_two_sample_auc(same + 5.0, real) > 0.99)
    True
    """
    from sklearn.base import clone, is_classifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    samples, X_real = _check_point_sets({"samples": samples, "X_real": X_real})
    smaller = min(samples.shape[0], X_real.shape[0])
    if not isinstance(cv, numbers.Integral) or isinstance(cv, bool) or not 2 <= cv <= smaller:
        raise ValueError(
            f"cv must be an integer from 2 to the rows of the smaller set ({smaller}); "
            f"got {cv!r}."
        )
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    if classifier is None:
        classifier = HistGradientBoostingClassifier(
            max_iter=100, early_stopping=False, random_state=seed
        )
    elif not is_classifier(classifier):
        raise TypeError(
            f"classifier must be a scikit-learn classifier (with predict_proba or "
            f"decision_function); got {type(classifier).__name__}."
        )
    pooled = np.concatenate([samples, X_real])
    labels = np.r_[np.ones(samples.shape[0]), np.zeros(X_real.shape[0])].astype(int)
    folds = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=seed)
    scores = cross_val_score(clone(classifier), pooled, labels, scoring="roc_auc", cv=folds,
                             error_score="raise")
    return float(np.mean(scores))
