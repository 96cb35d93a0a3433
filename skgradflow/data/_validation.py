"""The checks every placement shares: what an array of rows and an array of weights must
be, and the messages that say so.  A placement computes the facts (shape, dtype, whether
there is a NaN, the smallest weight) where its rows are and hands them here, so that a
defect gets the same message whatever the array type."""

from __future__ import annotations

import re

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data


def refuse_sparse(X, who: str) -> None:
    if sp.issparse(X):
        raise TypeError(
            f"{who} does not support sparse input: X must be a dense array; got "
            f"{type(X).__name__}. Convert it with X.toarray()."
        )


def check_rows(X, *, estimator=None, name: str = "X", dtype=np.float64, reset: bool = True,
               min_samples: int = 1, copy: bool = False) -> np.ndarray:
    """``X`` as a validated 2-D in-memory float array.  With an ``estimator``, scikit-learn's
    ``validate_data`` (which records ``n_features_in_`` and the feature names), with
    messages that name ``X`` (some of scikit-learn's say only "array")."""
    refuse_sparse(X, type(estimator).__name__ if estimator is not None else "skgradflow")
    if estimator is None:
        return check_array(X, dtype=dtype, input_name=name, ensure_min_samples=min_samples,
                           copy=copy)
    try:
        return validate_data(estimator, X, dtype=dtype, reset=reset,
                             ensure_min_samples=min_samples, copy=copy)
    except ValueError as exc:
        if re.search(rf"\b{name}\b", str(exc)):
            raise
        raise ValueError(f"Invalid {name}: {exc}") from exc


def raise_for_defect(name: str, has_nan: bool, has_inf: bool, estimator=None) -> None:
    """The message of an in-memory array with the same defect, for facts computed elsewhere."""
    if has_nan or has_inf:
        check_array(np.array([[np.nan if has_nan else np.inf]]), input_name=name,
                    estimator=estimator)


def check_weights(weights, n: int, name: str = "sample_weight") -> np.ndarray:
    """In-memory ``weights`` for ``n`` rows: float64, finite, non-negative, of positive sum;
    returned *unnormalised* (merging repeated rows sums raw weights exactly)."""
    if weights is None:
        return np.ones(n)
    if sp.issparse(weights):
        raise TypeError(f"{name} must be a dense 1-D array; got {type(weights).__name__}.")
    if np.isscalar(weights):
        weights = np.full(n, weights, dtype=np.float64)
    try:
        w = check_array(weights, ensure_2d=False, dtype=np.float64, input_name=name,
                        ensure_min_samples=0)
    except ValueError as exc:
        if name in str(exc):
            raise
        raise ValueError(f"Invalid {name}: {exc}") from exc
    check_weight_facts(name, n, w.shape, float(w.min()) if w.size else 0.0,
                       float(w.sum()) if w.size else 0.0)
    return w


def check_weight_facts(name: str, n: int, shape: tuple, lowest: float, total: float) -> None:
    """The checks on weights from their shape, minimum and sum (wherever computed)."""
    if tuple(shape) != (n,):
        raise ValueError(
            f"{name} must have shape ({n},), one weight per row; got {tuple(shape)}."
        )
    if lowest < 0:
        raise ValueError(f"{name} must be non-negative; got a minimum of {lowest:.3g}.")
    if not total > 0:
        raise ValueError(f"{name} must have a positive sum; got all zeros.")
    if not np.isfinite(total):
        raise ValueError(
            f"{name} sums to {total}: too large to normalise in float64. Divide the weights "
            "by a common factor (only their ratios matter)."
        )
