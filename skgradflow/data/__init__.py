"""The data layer: where a sample's rows live, and everything computed from them.

``X`` (and its weights) is resolved once, by :func:`as_data`, into a :class:`Data` of the
right placement (in memory, or on a Dask cluster), which owns validation, the weights,
repeated rows, moments, draws, the bandwidth statistics and the binding of the rows to an
engine.  The estimators, the metrics and the kernels never test an array's type: that
question is asked here, and only here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backends import Backend, DaskBackend
from ._dask import DaskData, as_dask_data, dask_session, is_dask_array
from ._memory import InMemoryData
from ._protocol import Data
from ._validation import check_rows, check_weights

__all__ = ["Data", "DaskData", "InMemoryData", "as_data", "held_here", "host_backend",
           "placed_together", "session"]


def _on_cluster(*arrays: Any) -> bool:
    return any(is_dask_array(a) for a in arrays)


@contextlib.contextmanager
def session(backend: str | Backend, *arrays: Any, arrays_only: bool = False) -> Iterator[None]:
    """What the arrays' placement needs for the body: for dask arrays (or the Dask engine,
    unless ``arrays_only``), a Dask client, started here and closed on exit when there is
    none (see :func:`skgradflow.data._dask.dask_session`); nothing for in-memory arrays."""
    with dask_session(backend, *arrays, arrays_only=arrays_only):
        yield


def as_data(X, weights=None, *, estimator=None, name: str = "X",
            weights_name: str = "sample_weight", dtype=np.float64, reset: bool = True,
            min_samples: int = 1, copy: bool = False) -> Data:
    """``X`` and its ``weights``, validated, as a :class:`Data` of their placement.

    With an ``estimator``, ``X`` is checked as scikit-learn's ``validate_data`` does
    (``n_features_in_`` and the feature names are recorded or, with ``reset=False``,
    compared).  Every message names the argument (``name``, ``weights_name``)."""
    if _on_cluster(X, weights):
        if is_dask_array(weights) and not is_dask_array(X):
            raise ValueError(
                f"{weights_name} is a dask array but {name} is not: pass {name} as a dask "
                f"array too, or {weights_name} as a NumPy array."
            )
        return as_dask_data(X, weights, estimator=estimator, name=name,
                            weights_name=weights_name, dtype=dtype, reset=reset,
                            min_samples=min_samples)
    rows = check_rows(X, estimator=estimator, name=name, dtype=dtype, reset=reset,
                      min_samples=min_samples, copy=copy)
    return InMemoryData(rows, check_weights(weights, rows.shape[0], weights_name))


def held_here(rows: np.ndarray, weights: np.ndarray) -> InMemoryData:
    """A small in-memory sample (a fitted measure) that stays in this process whatever the
    engine: its reductions run here, so no cluster is needed after a fit."""
    return InMemoryData(rows, weights, held_here=True)


def host_backend(backend: str | Backend) -> str | Backend:
    """The backend for reductions over rows held in this process: ``backend`` itself, or,
    for the Dask engine, this process's own choice (``"auto"``: the engine its workers run,
    a GPU's KeOps say, may not run here)."""
    if backend == "dask" or isinstance(backend, DaskBackend):
        return "auto"
    return backend


def placed_together(first: Data, second: Data) -> tuple[Data, Data]:
    """Two samples in one placement: in memory, unless either is on a cluster."""
    if isinstance(first, DaskData) or isinstance(second, DaskData):
        return (_to_dask(first), _to_dask(second))
    return first, second


def _to_dask(data: Data) -> Data:
    if isinstance(data, DaskData):
        return data
    import dask.array as da

    rows = da.from_array(data.rows, chunks=data.rows.shape)
    return DaskData(rows, da.from_array(data.weights, chunks=data.weights.shape))
