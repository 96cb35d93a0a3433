"""What the estimators, the metrics and the bandwidth rules may ask of a data set, wherever
its rows live.

A :class:`Data` is a validated, weighted sample ``π̂ = Σ_m b_m δ_{y_m}``: its rows, their
weights (float64, summing to 1) and the statistics the estimators need from them, computed
where the rows are.  An estimator asks the data layer once (:func:`skgradflow.data.as_data`)
and never tests the type of an array again; a new placement (rows already on a GPU, say) is
one new subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .._guards import representable_range
from ..backends import Backend, Targets
from ..kernels import Kernel, bandwidth_rule


class Data(ABC):
    """A weighted sample in one placement (in memory, or on a Dask cluster).

    Attributes
    ----------
    rows : array of shape (n_samples, n_features)
        In the placement's own array type (a NumPy or a dask array).
    weights : array of shape (n_samples,)
        float64, non-negative, summing to 1, in the same array type as ``rows``.
    signs : ndarray of shape (n_samples,) or None
        For a pooled signed sample (:meth:`pooled_with`): ``+1`` for the rows of the first
        sample, ``-1`` for those of the second.
    """

    rows: Any
    weights: Any
    signs: Any = None

    @property
    def n_samples(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.rows.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.rows.dtype)

    @abstractmethod
    def extent(self) -> tuple[float, float]:
        """The largest absolute value of the rows, and the largest range (maximum less
        minimum, in float64) of a feature: whether squared distances fit the dtype."""

    # --- a data set like this one ------------------------------------------------------
    @abstractmethod
    def with_rows(self, rows) -> Data:
        """The same weights over other rows of the same placement (``rows`` computed from
        ``self.rows`` by array operations, row for row)."""

    @abstractmethod
    def wrap(self, array: np.ndarray) -> Any:
        """An in-memory result with one row per row of this data set, returned in this
        placement's array type (a dask array keeps the row chunks of ``rows``)."""

    @abstractmethod
    def to_host(self) -> np.ndarray:
        """The rows as an in-memory NumPy array (for point sets small enough to gather)."""

    @abstractmethod
    def held_out(self, fraction: float, rng: np.random.Generator) -> tuple[Data, Data]:
        """``(rest, held)``: a random ``fraction`` of the rows, each row with the same chance
        whatever its weight, held out of the sample, and the other rows, each part with its
        rows' weights (renormalised), in this placement.  In memory exactly
        ``round(fraction · n)`` rows (at least one, at most ``n - 1``); rows on a cluster
        stay there, each held out with probability ``fraction`` (a part may then have no
        weight: its ``n_positive()`` is 0)."""

    @abstractmethod
    def pooled_with(self, other: Data) -> Data:
        """The signed pool ``[self; other]`` with weights ``½ [b; b']`` and signs
        ``[+1; -1]``, for ``aᵀ K a`` with ``a = 2 signs · weights``."""

    # --- statistics --------------------------------------------------------------------
    @abstractmethod
    def n_distinct(self) -> int:
        """The number of distinct rows of positive weight (for a Dask data set, the rows of
        positive weight: counting repeats would sort the whole array)."""

    @abstractmethod
    def mean_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """The weighted mean and the weighted (biased) covariance of the rows, float64,
        in memory."""

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The weighted mean and a square root ``R`` of the covariance (``R Rᵀ = Σ``, zero in
        the directions without spread), float64."""
        mean, cov = self.mean_covariance()
        eigval, eigvec = np.linalg.eigh(cov)
        return mean, eigvec * np.sqrt(np.clip(eigval, 0.0, None))

    @abstractmethod
    def root_mean_variance(self) -> float:
        """``σ``, the root of the mean weighted (biased) variance of the features."""

    @abstractmethod
    def effective_size(self) -> float:
        """The effective sample size ``1 / Σ b²``."""

    @abstractmethod
    def median_distance(self, rng: np.random.Generator) -> float:
        """The median heuristic: the median of ``|Y - Y'|`` for ``Y, Y'`` drawn from the
        weighted sample (see :func:`skgradflow.kernels.median_heuristic`)."""

    def bandwidth(self, rule: float | str, rng: np.random.Generator,
                  n_samples: float | None = None) -> float:
        """The bandwidth of a float or a rule, from this data set's statistics: the median
        heuristic, or Scott's or Silverman's rule with ``n = n_samples`` (by default the
        effective sample size) and ``σ`` the root mean weighted variance of the features.

        Rows that are all the same have no scale for a rule to measure: their bandwidth is
        their resolution, the dtype's epsilon times their largest absolute value (the
        smallest scale whose squares the dtype holds, for rows of zeros), so that the fit
        is the point they sit on rather than a spread of a size taken from nowhere."""
        if not isinstance(rule, str):
            return float(rule)
        largest, spread = self.extent()
        if spread == 0.0:
            lo, _ = representable_range(self.dtype)
            return max(float(np.finfo(self.dtype).eps) * largest, lo)
        if rule == "median":
            return self.median_distance(rng)
        sigma = self.root_mean_variance()
        n = self.effective_size() if n_samples is None else float(n_samples)
        return bandwidth_rule(rule, sigma, n, self.n_features)

    # --- draws -------------------------------------------------------------------------
    @abstractmethod
    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` rows drawn i.i.d. with probabilities ``weights``, in memory."""

    @abstractmethod
    def subsample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` rows drawn by weight for ``init="subsample"``: without replacement where
        there are enough rows of positive weight (in memory), in memory."""

    @abstractmethod
    def rows_by_hash(self, size: int, seed: int) -> np.ndarray:
        """The (at most) ``size`` rows whose hashes (:func:`row_hashes`, with ``seed``) are
        smallest, in the order of their hashes, float64, in memory: a choice of rows that
        depends on their values only, not on their order, their chunks or their weights
        (a permuted or re-chunked set gives the same rows, in the same order)."""

    @abstractmethod
    def clustering_sample(self, size: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """In-memory rows and weights for k-means seeding: all the rows, or, when they are on
        a cluster, a draw of at least ``size`` of them by weight (with uniform weights)."""

    @abstractmethod
    def n_positive(self) -> int:
        """The number of rows of positive weight, as given (before repeated rows are merged)."""

    # --- the engines ---------------------------------------------------------------------
    @abstractmethod
    def engine(self, backend: str | Backend, n_pairs: int, n_calls: int = 1) -> Backend:
        """The engine that runs reductions over these rows (for rows on a cluster, the Dask
        engine whose workers use ``backend``)."""

    @abstractmethod
    def bind(self, engine: Backend) -> Targets:
        """The rows and weights bound to ``engine`` for the reductions of one run."""

    @abstractmethod
    def quadratic_form(self, kernel: Kernel, backend: str | Backend) -> tuple[float, float]:
        """For a signed pool: ``aᵀ K a`` and ``|a|ᵀ K |a|``, ``a = 2 signs · weights``."""

    @abstractmethod
    def map_rows(self, fn, backend: str | Backend, width: int,
                 columns: int | None = None) -> Any:
        """``fn(rows_block, engine)`` on blocks of rows (each on the machine that holds it,
        with an engine sized for ``len(rows_block) · width`` pairs), concatenated into one
        value per row (``columns`` values per row, when given) in this placement's array
        type, in the dtype of the rows."""

    @abstractmethod
    def sum_rows(self, fn) -> np.ndarray:
        """``Σ fn(rows_block)`` over blocks of rows, each computed on the machine that
        holds it: an in-memory float64 array (a statistic that is a sum over the rows, such
        as the mass a transport plan sends to each atom)."""


# splitmix64's finaliser: an invertible mix of 64 bits in which every input bit reaches every
# output bit (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX[0]
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX[1]
    return h ^ (h >> np.uint64(31))


def row_hashes(rows: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit hash of each row's float64 values (``seed`` picks the hash function): equal
    rows hash alike, wherever and in whatever order they come (``0.0`` and ``-0.0`` too)."""
    bits = np.ascontiguousarray(np.asarray(rows, dtype=np.float64) + 0.0).view(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(bits.shape[0], _mix(np.array([np.uint64(seed) ^ _GOLDEN]))[0])
        for column in bits.T:
            h = _mix(h ^ column) + _GOLDEN
    return h


def smallest_hashes(rows: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, rows)`` of the (at most) ``size`` rows of smallest hash, in hash order,
    float64.  Equal hashes are equal rows, whose order does not matter, but for a collision
    of two distinct rows' 64-bit hashes (about ``n² / 2⁶⁵`` likely), whose order, and at the
    cut-off which of them is kept, then follows the rows' positions."""
    rows = np.asarray(rows, dtype=np.float64)
    h = row_hashes(rows, seed)
    keep = np.argsort(h, kind="stable")[:size]
    return h[keep], rows[keep]
