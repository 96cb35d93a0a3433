"""Rows held in this process's memory as a NumPy array."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import Backend, HostTargets, Targets, resolve_backend
from ..kernels import Kernel, median_heuristic, root_mean_variance
from ._protocol import Data, smallest_hashes


class InMemoryData(Data):
    """A weighted sample held as NumPy arrays.

    Parameters
    ----------
    rows : ndarray of shape (n_samples, n_features)
        Validated, float32 or float64.
    weights : ndarray of shape (n_samples,)
        Validated, non-negative, of positive sum (normalised here).
    held_here : bool, default=False
        Keep the rows in this process whatever the engine: a sample as small as a fitted
        measure is bound as host targets even for the Dask engine, so that no cluster is
        needed after a fit.
    """

    def __init__(self, rows: np.ndarray, weights: np.ndarray, held_here: bool = False,
                 signs: np.ndarray | None = None) -> None:
        self.rows = rows
        self._raw = np.asarray(weights, dtype=np.float64)
        self.weights = self._raw / self._raw.sum()
        self.held_here = held_here
        self.signs = signs
        self._distinct: int | None = None
        # rows of positive weight as given (merging keeps the count of the input)
        self._positive = int(np.count_nonzero(self._raw))

    def extent(self) -> tuple[float, float]:
        return _extent(self.rows.min(axis=0), self.rows.max(axis=0))

    # --- a data set like this one ------------------------------------------------------
    def with_rows(self, rows) -> InMemoryData:
        data = InMemoryData(np.asarray(rows), self.weights, self.held_here, self.signs)
        data._distinct, data._positive = self._distinct, self._positive
        return data

    def wrap(self, array: np.ndarray) -> np.ndarray:
        return array

    def to_host(self) -> np.ndarray:
        return self.rows

    def held_out(self, fraction: float, rng: np.random.Generator):
        held = _held_rows(self.n_samples, fraction, rng)
        return (InMemoryData(self.rows[~held], self._raw[~held], self.held_here),
                InMemoryData(self.rows[held], self._raw[held], self.held_here))

    def pooled_with(self, other: Data) -> InMemoryData:
        dtype = np.result_type(self.dtype, other.dtype)
        rows = np.concatenate([self.rows, other.to_host()]).astype(dtype, copy=False)
        weights = np.concatenate([self.weights, np.asarray(other.weights)])
        signs = np.concatenate([np.ones(self.n_samples), -np.ones(other.n_samples)])
        return InMemoryData(rows, weights, self.held_here, signs)

    def merged(self) -> InMemoryData:
        """The canonical form of the sample: repeated rows merged into one row whose weight
        is the sum of theirs, rows of zero weight dropped, the rows in sorted order.  Integer
        ``sample_weight`` and the rows repeated that many times then give the same arrays,
        bit for bit (raw weights are summed before they are normalised), and so the same
        fit.  A sample of distinct rows with equal weights is already canonical up to its
        order and is kept as given (no copy)."""
        raw = self._raw
        unique, inverse = np.unique(self.rows, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        if unique.shape[0] == self.n_samples and np.all(raw == raw[0]):
            self._distinct = self.n_samples
            return self
        summed = np.bincount(inverse, weights=raw, minlength=unique.shape[0])
        keep = summed > 0
        data = InMemoryData(unique[keep], summed[keep], self.held_here)
        data._distinct, data._positive = data.n_samples, self._positive
        return data

    # --- statistics --------------------------------------------------------------------
    def n_distinct(self) -> int:
        if self._distinct is None:
            self._distinct = len(np.unique(self.rows[self.weights > 0], axis=0))
        return self._distinct

    def mean_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        X, w = self.rows.astype(np.float64), self.weights
        cov = np.atleast_2d(np.cov(X, rowvar=False, aweights=w, bias=True))
        return w @ X / w.sum(), cov

    def root_mean_variance(self) -> float:
        return root_mean_variance(self.rows.astype(np.float64), self.weights)

    def effective_size(self) -> float:
        return 1.0 / float(np.sum(self.weights**2))

    def median_distance(self, rng: np.random.Generator) -> float:
        return median_heuristic(self.rows, self.weights, random_state=rng)

    # --- draws -------------------------------------------------------------------------
    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        return self.rows[rng.choice(self.n_samples, size=size, replace=True, p=self.weights)]

    def subsample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        positive = np.count_nonzero(self.weights)
        rows = rng.choice(self.n_samples, size=size, replace=size > positive, p=self.weights)
        return self.rows[rows].copy()

    def rows_by_hash(self, size: int, seed: int) -> np.ndarray:
        return smallest_hashes(self.rows, size, seed)[1]

    def clustering_sample(self, size: int, rng) -> tuple[np.ndarray, np.ndarray]:
        return self.rows, self.weights

    def n_positive(self) -> int:
        return self._positive

    # --- the engines ---------------------------------------------------------------------
    def engine(self, backend: str | Backend, n_pairs: int, n_calls: int = 1) -> Backend:
        return resolve_backend(backend, n_pairs, n_calls=n_calls, n_dims=self.n_features)

    def bind(self, engine: Backend) -> Targets:
        if self.held_here:
            return HostTargets(engine, self.rows, self.weights)
        return engine.bind(self.rows, self.weights)

    def quadratic_form(self, kernel: Kernel, backend: str | Backend) -> tuple[float, float]:
        a = 2.0 * self.signs * self.weights
        engine = resolve_backend(backend, self.n_samples**2, n_dims=self.n_features)
        V = np.stack([a, np.abs(a)], axis=1).astype(self.dtype)
        K_a = engine.matvec(kernel, self.rows, self.rows, V).astype(np.float64)
        return float(a @ K_a[:, 0]), abs(float(np.abs(a) @ K_a[:, 1]))

    def map_rows(self, fn, backend: str | Backend, width: int,
                 columns: int | None = None) -> Any:
        return fn(self.rows, resolve_backend(backend, self.n_samples * width,
                                             n_dims=self.n_features))

    def sum_rows(self, fn) -> np.ndarray:
        return np.asarray(fn(self.rows), dtype=np.float64)


def _held_rows(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``max(1, round(fraction · n))`` rows drawn uniformly, at most
    ``n - 1``."""
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[: min(n - 1, max(1, round(fraction * n)))]] = True
    return held


def _extent(lowest: np.ndarray, highest: np.ndarray) -> tuple[float, float]:
    """``extent()`` from the columns' minima and maxima (wherever computed)."""
    lowest, highest = np.asarray(lowest, np.float64), np.asarray(highest, np.float64)
    largest = float(max(np.abs(lowest).max(), np.abs(highest).max()))
    with np.errstate(over="ignore"):  # a range past the largest float is inf: too large
        return largest, float((highest - lowest).max())
