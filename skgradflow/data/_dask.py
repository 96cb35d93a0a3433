"""Rows held in chunks by the workers of a Dask cluster, as a dask array.

Every statistic is a Dask reduction and every draw runs on the workers: nothing of the size
of the data reaches the client.  The reductions of a run go to the Dask engine
(:class:`skgradflow.backends.DaskBackend`), whose workers run an in-memory engine on the
chunks they hold.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backends import Backend, DaskBackend, Targets, resolve_backend
from ..backends._dask import _client, _draw, _require_dask, _session_lock, worker_engine
from ..kernels import _MEDIAN_MAX_ROWS, Kernel, median_of_draws
from ._memory import _extent
from ._protocol import Data, smallest_hashes
from ._validation import check_rows, check_weight_facts, check_weights, raise_for_defect

# Rows drawn on the workers for the data-dependent defaults of a fit on a dask array: the
# "kmeans++" seeding runs on an i.i.d. draw of at least this many rows.
INIT_SAMPLE_ROWS = 10_000


def is_dask_array(obj: Any) -> bool:
    """Whether ``obj`` is a ``dask.array.Array`` (without importing Dask when it is not
    loaded: then nothing can be one)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(obj, module.Array)


@contextlib.contextmanager
def dask_session(backend: Any, *arrays: Any, arrays_only: bool = False) -> Iterator[None]:
    """A Dask client for the body, when ``backend`` is the Dask engine or any of ``arrays`` is
    a dask array: the backend's own client (made the current one, so that the Dask
    reductions of validation and initialisation run on its cluster too), else the current
    default client, else a ``LocalCluster`` of processes started here and closed on exit.
    Does nothing for other backends and in-memory arrays, nor, with ``arrays_only``, for
    in-memory arrays whatever the backend (their sums run on the client)."""
    any_dask = any(is_dask_array(a) for a in arrays)
    dask_backend = backend == "dask" or isinstance(backend, DaskBackend)
    if not (any_dask or (dask_backend and not arrays_only)):
        yield
        return
    _, distributed = _require_dask()
    if isinstance(backend, DaskBackend) and backend.client is not None:
        with _client(backend.client).as_current():
            yield
        return
    try:
        distributed.default_client()
    except ValueError:
        pass
    else:
        yield
        return
    # no client anywhere: a cluster for this call only, its workers one process per core
    with _session_lock:
        cluster = distributed.LocalCluster(processes=True, dashboard_address=":0")
        client = distributed.Client(cluster, set_as_default=True)
    try:
        yield
    finally:
        client.close()
        cluster.close()


def as_dask_engine(backend: str | Backend) -> DaskBackend:
    """The Dask engine for a run on a dask array: the instance itself, or a
    :class:`DaskBackend` whose workers use the named backend (``"auto"`` and ``"dask"``:
    each worker's own choice)."""
    if isinstance(backend, DaskBackend):
        return backend
    if isinstance(backend, Backend):
        return DaskBackend(inner=backend)
    return DaskBackend(inner="auto" if backend in ("auto", "dask") else backend)


def check_dask_rows(X, *, estimator=None, name: str = "X", dtype=np.float64,
                    reset: bool = True, min_samples: int = 1):
    """The checks of ``validate_data`` on a dask array, by Dask reductions (nothing is
    gathered): 2-D, numeric, finite, enough rows, ``n_features_in_`` and feature names.
    Returns the array in an accepted dtype (lazily cast; a dask array is never modified in
    place).  A defect gets the message of an in-memory array with it."""
    from sklearn.utils.validation import _check_feature_names, _check_n_features

    who = type(estimator).__name__ if estimator is not None else "skgradflow"
    if X.ndim != 2:
        raise ValueError(
            f"Expected a 2D array for {name}, got a {X.ndim}D dask array of shape {X.shape}."
        )
    if any(math.isnan(s) for s in X.shape):
        raise ValueError(
            f"{name} is a dask array of unknown chunk sizes; call "
            f"{name}.compute_chunk_sizes() first."
        )
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers; got a dask array of dtype {X.dtype}.")
    accepted = [np.dtype(t) for t in (dtype if isinstance(dtype, (list, tuple)) else [dtype])]
    if X.dtype not in accepted:
        X = X.astype(accepted[0])
    if X.shape[0] < min_samples:
        raise ValueError(
            f"Found array with {X.shape[0]} sample(s) (shape={X.shape}) while a minimum of "
            f"{min_samples} is required by {who}."
        )
    if X.shape[1] < 1:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is "
            f"required by {who}."
        )
    if estimator is not None:
        _check_n_features(estimator, X, reset=reset)
        _check_feature_names(estimator, X, reset=reset)
    import dask

    has_nan, has_inf = dask.compute(np.isnan(X).any(), np.isinf(X).any())
    raise_for_defect(name, bool(has_nan), bool(has_inf), estimator)
    return X.rechunk({1: -1})  # every chunk holds whole rows


def check_dask_weights(weights, X, name: str = "sample_weight"):
    """Non-negative, finite weights aligned with the dask array ``X``, unnormalised, as a
    dask array with the row chunks of ``X`` (by Dask reductions)."""
    import dask
    import dask.array as da

    n = X.shape[0]
    if weights is None:
        return da.ones((n,), chunks=(X.chunks[0],))
    if not is_dask_array(weights):
        return da.from_array(check_weights(weights, n, name), chunks=(X.chunks[0],))
    w = weights.astype(np.float64)
    if w.ndim != 1 or w.shape[0] != n:
        check_weight_facts(name, n, w.shape, 0.0, 1.0)
    has_nan, has_inf, lowest, total = dask.compute(
        da.isnan(w).any(), da.isinf(w).any(), w.min(), w.sum()
    )
    if has_nan or has_inf:
        check_weights(np.array([np.nan if has_nan else np.inf]), 1, name)
    check_weight_facts(name, n, w.shape, float(lowest), float(total))
    return w.rechunk((X.chunks[0],))


def _rows_by_weight(Y, b, size: int, seed: int) -> np.ndarray:
    return _draw((np.asarray(Y), np.asarray(b, dtype=np.float64)), size, seed)


def _signed_pair(Pi, ai, Pj, aj, kernel, inner) -> tuple[int, float, float]:
    """``a_iᵀ K(P_i, P_j) a_j`` and ``|a_i|ᵀ K(P_i, P_j) |a_j|``, float64."""
    Pi, Pj = np.asarray(Pi), np.asarray(Pj)
    if Pi.shape[0] == 0 or Pj.shape[0] == 0:
        return Pi.shape[0] * Pj.shape[0], 0.0, 0.0
    V = np.stack([aj, np.abs(aj)], axis=1).astype(Pj.dtype)
    K_a = worker_engine(inner, Pi.shape[0] * Pj.shape[0], Pi.shape[1]).matvec(kernel, Pi, Pj, V)
    K_a = K_a.astype(np.float64)
    return Pi.shape[0] * Pj.shape[0], float(ai @ K_a[:, 0]), float(np.abs(ai) @ K_a[:, 1])


def _map_block(rows, fn, inner, width: int, columns: int | None = None):
    """``fn`` on one chunk of rows, on its worker, with the worker's own engine."""
    rows = np.asarray(rows)
    if rows.shape[0] == 0:
        return np.zeros((0,) if columns is None else (0, columns), dtype=rows.dtype)
    return fn(rows, worker_engine(inner, rows.shape[0] * width, rows.shape[1]))


def _sum_block(rows, fn) -> np.ndarray:
    """``fn`` on one chunk of rows, on its worker, as float64."""
    return np.asarray(fn(np.asarray(rows)), dtype=np.float64)


class DaskData(Data):
    """A weighted sample held as dask arrays (rows chunked by rows only).

    Parameters
    ----------
    rows : dask array of shape (n_samples, n_features)
        Validated, float32 or float64.
    weights : dask array of shape (n_samples,)
        Validated, non-negative, of positive sum (normalised here), with the row chunks of
        ``rows``.
    """

    def __init__(self, rows, weights, signs=None) -> None:
        self.rows = rows
        self.weights = (weights / weights.sum()).rechunk((rows.chunks[0],))
        self.signs = signs
        self._positive: int | None = None

    def extent(self) -> tuple[float, float]:
        import dask

        return _extent(*dask.compute(self.rows.min(axis=0), self.rows.max(axis=0)))

    # --- a data set like this one ------------------------------------------------------
    def with_rows(self, rows) -> DaskData:
        data = DaskData(rows, self.weights, self.signs)
        data._positive = self._positive
        return data

    def wrap(self, array: np.ndarray):
        import dask.array as da

        return da.from_array(array, chunks=(self.rows.chunks[0],) + array.shape[1:])

    def to_host(self) -> np.ndarray:
        return np.asarray(self.rows.compute())

    def held_out(self, fraction: float, rng: np.random.Generator):
        # the rows stay where they are: each row is held out with probability `fraction`,
        # drawn on its worker, and each part keeps every row, with weight zero where it
        # belongs to the other part (a weight of zero removes a row from every statistic)
        import dask.array as da

        draw = da.random.RandomState(int(rng.integers(2**31 - 1)))
        held = draw.random_sample(self.n_samples, chunks=(self.rows.chunks[0],)) < fraction
        return (DaskData(self.rows, da.where(held, 0.0, self.weights)),
                DaskData(self.rows, da.where(held, self.weights, 0.0)))

    def pooled_with(self, other: Data) -> DaskData:
        import dask.array as da

        dtype = np.result_type(self.dtype, other.dtype)
        other_rows, other_w = other.rows, other.weights
        if not is_dask_array(other_rows):
            other_rows = da.from_array(other_rows, chunks=other_rows.shape)
            other_w = da.from_array(np.asarray(other_w), chunks=other_w.shape)
        rows = da.concatenate([self.rows.astype(dtype), other_rows.astype(dtype)])
        rows = rows.rechunk({1: -1})
        weights = da.concatenate([self.weights, other_w]).rechunk((rows.chunks[0],))
        signs = da.concatenate([da.ones(self.n_samples, chunks=self.rows.chunks[0]),
                                -da.ones(other.n_samples, chunks=other_rows.chunks[0])])
        return DaskData(rows, weights, signs.rechunk((rows.chunks[0],)))

    def merged(self) -> DaskData:
        """The sample itself: finding repeated rows would sort the whole array."""
        return self

    # --- statistics --------------------------------------------------------------------
    def n_positive(self) -> int:
        if self._positive is None:
            self._positive = int((self.weights > 0).sum().compute())
        return self._positive

    def n_distinct(self) -> int:
        # continuous data has no repeats; counting them would sort the whole array
        return self.n_positive()

    def mean_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        import dask

        X, b = self.rows.astype(np.float64), self.weights
        mean = dask.compute((b[:, None] * X).sum(axis=0) / b.sum())[0]
        C = X - mean
        cov = np.atleast_2d(dask.compute(((b[:, None] * C).T @ C) / b.sum())[0])
        return np.asarray(mean), cov

    def root_mean_variance(self) -> float:
        import dask

        X = self.rows.astype(np.float64)
        mean = dask.compute(self.weights @ X)[0]
        var = dask.compute(self.weights @ (X - mean) ** 2)[0]
        return float(np.sqrt(np.mean(var)))

    def effective_size(self) -> float:
        return 1.0 / float((self.weights**2).sum().compute())

    def median_distance(self, rng: np.random.Generator) -> float:
        # the rule of median_heuristic above 2000 rows, on rows drawn by weight
        return median_of_draws(self.draw(_MEDIAN_MAX_ROWS, rng))

    # --- draws -------------------------------------------------------------------------
    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` rows drawn i.i.d. by weight without gathering the rows: the chunk
        masses, a multinomial split of ``size`` over them, and each chunk's share drawn
        where it is."""
        import dask

        xs, bs = self.rows.to_delayed().ravel(), self.weights.to_delayed().ravel()
        mass = np.asarray(dask.compute(*[dask.delayed(np.sum)(w) for w in bs]),
                          dtype=np.float64)
        counts = rng.multinomial(size, mass / mass.sum())
        seeds = rng.integers(np.iinfo(np.int64).max, size=len(xs))
        parts = dask.compute(*[
            dask.delayed(_rows_by_weight)(x, w, int(k), int(s))
            for x, w, k, s in zip(xs, bs, counts, seeds, strict=True) if k > 0
        ])
        rows = np.concatenate(parts).astype(self.dtype, copy=False)
        # the chunks' shares come back grouped: a permutation makes the order i.i.d.
        return rows[rng.permutation(rows.shape[0])]

    def subsample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        return self.draw(size, rng)

    def rows_by_hash(self, size: int, seed: int) -> np.ndarray:
        import dask

        # each chunk's smallest, on its worker; the smallest of those here (hashed again:
        # a few times size rows)
        parts = dask.compute(*[dask.delayed(smallest_hashes)(block, size, seed)
                               for block in self.rows.to_delayed().ravel()])
        return smallest_hashes(np.concatenate([rows for _, rows in parts]), size, seed)[1]

    def clustering_sample(self, size: int, rng) -> tuple[np.ndarray, np.ndarray]:
        subset = self.draw(max(INIT_SAMPLE_ROWS, 10 * size), rng)
        return subset, np.full(subset.shape[0], 1.0 / subset.shape[0])

    # --- the engines ---------------------------------------------------------------------
    def engine(self, backend: str | Backend, n_pairs: int, n_calls: int = 1) -> Backend:
        # rows on the workers: the named backend is the engine of each chunk
        return resolve_backend(as_dask_engine(backend), n_pairs, n_calls=n_calls)

    def bind(self, engine: Backend) -> Targets:
        return as_dask_engine(engine).bind_chunks(self.rows, self.weights)

    def quadratic_form(self, kernel: Kernel, backend: str | Backend) -> tuple[float, float]:
        """One task per pair of row chunks, the results summed exactly (``math.fsum``), and
        checked to cover every pair of rows."""
        import dask

        inner = as_dask_engine(backend).inner
        a = 2.0 * self.signs * self.weights
        ps, as_ = self.rows.to_delayed().ravel(), a.to_delayed().ravel()
        tasks = [
            dask.delayed(_signed_pair)(ps[i], as_[i], ps[j], as_[j], kernel, inner)
            for i in range(len(ps)) for j in range(len(ps))
        ]
        out = dask.compute(*tasks)
        pairs = sum(o[0] for o in out)
        if pairs != self.n_samples**2:
            raise RuntimeError(
                f"the Dask reduction accounted for {pairs} of {self.n_samples**2} pairs; "
                "refusing a partial sum."
            )
        return math.fsum(o[1] for o in out), math.fsum(o[2] for o in out)

    def map_rows(self, fn, backend: str | Backend, width: int, columns: int | None = None):
        # every chunk on its worker, with the worker's own engine: a lazy dask array
        inner = as_dask_engine(backend).inner
        if columns is None:
            return self.rows.map_blocks(_map_block, fn, inner, width, drop_axis=1,
                                        dtype=self.dtype)
        return self.rows.map_blocks(_map_block, fn, inner, width, columns,
                                    chunks=(self.rows.chunks[0], (columns,)), dtype=self.dtype)

    def sum_rows(self, fn) -> np.ndarray:
        import dask

        # one task per chunk, summed here: the partial sums are as small as the statistic
        parts = dask.compute(*[dask.delayed(_sum_block)(block, fn)
                               for block in self.rows.to_delayed().ravel()])
        return np.sum(parts, axis=0)


def as_dask_data(X, weights, *, estimator=None, name="X", weights_name="sample_weight",
                 dtype=np.float64, reset=True, min_samples=1) -> DaskData:
    """A :class:`DaskData` of validated rows (a dask array, or an in-memory array in one
    chunk) and weights."""
    import dask.array as da

    if is_dask_array(X):
        X = check_dask_rows(X, estimator=estimator, name=name, dtype=dtype, reset=reset,
                            min_samples=min_samples)
    else:
        X = check_rows(X, estimator=estimator, name=name, dtype=dtype, reset=reset,
                       min_samples=min_samples)
        X = da.from_array(X, chunks=X.shape)
    return DaskData(X, check_dask_weights(weights, X, weights_name))
