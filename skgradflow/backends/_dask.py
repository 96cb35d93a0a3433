"""The Dask engine: targets held in chunks on the workers of a Dask cluster.

Every reduction over the targets is a sum over blocks of target rows, so each one runs on
every chunk, on the worker that holds it, with an *inner* backend chosen there (NumPy for
small chunks, else the Numba backend where installed, else KeOps where its probe passes);
only the ``O(N·(d + p))`` partial results come back, and the client sums them in float64,
in chunk order, so that a run is reproducible whatever the scheduling.  The particles go to
the workers once per reduction (one task that every worker copies), the target rows never
come back.

Dask is an optional dependency: ``pip install "skgradflow[dask]"`` installs
``dask[distributed]``.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import threading
from typing import Any

import numpy as np

from ..kernels import Kernel
from ._protocol import Backend, Targets, second_moment

NOT_INSTALLED_HINT = 'pip install "skgradflow[dask]" (or pip install "dask[distributed]")'

# Rows per chunk when NumPy targets are split for the workers: large enough that a task's
# overhead (about a millisecond) is small against its reduction, small enough that a
# chunk's block of the reductions stays in a worker's cache-friendly range.
DEFAULT_CHUNK_ROWS = 1_000_000
# A reduction that loses a worker under it is run again at most this many times in all,
# each after waiting this long for a worker.
_ATTEMPTS = 3
_WORKER_WAIT_S = 60
# A worker resolves inner="auto" as for a run of this many reductions of its chunk: a fit
# that goes to a cluster is a long run, and the worker processes keep compiled code.
_WORKER_CALLS = 100


class DaskUnavailableError(ImportError):
    """Dask (with ``distributed``) is not installed; the message names the extra."""


def dask_installed() -> bool:
    """Whether ``dask.array`` and ``distributed`` can be imported here.

    Examples
    --------
    >>> from skgradflow.backends import dask_installed
    >>> isinstance(dask_installed(), bool)
    True
    """
    return all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))


def _require_dask():
    """``(dask.array, distributed)``, or a clear error naming the extra."""
    try:
        import dask.array as da
        import distributed
    except ImportError as exc:
        raise DaskUnavailableError(
            f"backend='dask' and dask arrays need dask[distributed], which cannot be imported "
            f"here ({exc}). Fix: {NOT_INSTALLED_HINT}."
        ) from exc
    return da, distributed


# --- the cluster -----------------------------------------------------------------------------
_session_lock = threading.Lock()


def _client(spec: Any):
    """The client of a backend's ``client`` setting: a ``Client``, a scheduler address, or
    ``None`` (the default client)."""
    _, distributed = _require_dask()
    if isinstance(spec, distributed.Client):
        return spec
    if isinstance(spec, str):
        return _client_for_address(spec)
    try:
        return distributed.default_client()
    except ValueError:
        raise ValueError(
            "backend='dask' found no Dask client: pass DaskBackend(client=Client(...)) or a "
            "scheduler address, create a distributed.Client() first, or let an estimator's "
            "fit start a LocalCluster for you."
        ) from None


_by_address: dict[str, Any] = {}


def _client_for_address(address: str):
    _, distributed = _require_dask()
    with _session_lock:
        client = _by_address.get(address)
        if client is None or client.status in ("closed", "closing"):
            client = distributed.Client(address, set_as_default=False)
            _by_address[address] = client
    return client


# --- what runs on the workers --------------------------------------------------------------
_engines: dict[tuple, Backend] = {}


def worker_engine(inner: Any, n_pairs: int, n_dims: int) -> Backend:
    """The inner backend on this worker for reductions of about ``n_pairs`` kernel entries
    on ``n_dims`` coordinates: resolved here (``"auto"`` probes this machine), once per kind
    of work (whether it is large enough for KeOps, and its dimension, on which the time Numba
    saves over NumPy depends)."""
    from ._registry import AUTO_KEOPS_MIN_WORK, resolve_backend

    if isinstance(inner, Backend):
        return inner
    key = (inner, inner == "auto" and n_pairs * _WORKER_CALLS >= AUTO_KEOPS_MIN_WORK,
           n_dims if inner == "auto" else None)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = _fit_to_worker(
            resolve_backend(inner, n_pairs, n_calls=_WORKER_CALLS, n_dims=n_dims)
        )
    return engine


def _fit_to_worker(engine: Backend) -> Backend:
    """A Numba backend left to use every core gets the worker's threads instead: several
    worker processes on one machine would otherwise each start a thread per core."""
    from ._numba import NumbaBackend

    if not isinstance(engine, NumbaBackend) or engine.n_threads is not None:
        return engine
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not on a worker
        return engine
    threads = getattr(getattr(worker, "state", None), "nthreads", None) or worker.nthreads
    return NumbaBackend(n_threads=int(threads))


def _identity(array: np.ndarray) -> np.ndarray:
    return array


def _pack(Y: np.ndarray, b: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A chunk as the reductions take it: rows in the run's dtype, weights float64."""
    Y = np.ascontiguousarray(Y, dtype=dtype)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if Y.ndim != 2 or b.shape[0] != Y.shape[0]:
        raise ValueError(f"a chunk of shape {Y.shape} got {b.shape[0]} weights")
    return Y, b


def _chunk_mass(chunk) -> tuple[int, float, float]:
    Y, b = chunk
    return Y.shape[0], float(b.sum()), float(b @ b)


def _kernel_mean(chunk, Z, kernel, inner):
    Y, b = chunk
    if Y.shape[0] == 0:
        return 0, np.zeros(Z.shape[0]), np.zeros(Z.shape, dtype=np.float64)
    bb = b.astype(Y.dtype)
    engine = worker_engine(inner, Z.shape[0] * Y.shape[0], Z.shape[1])
    val, grad = engine.value_grad(kernel, Z, Y, bb[:, None], bb)
    return Y.shape[0], val[:, 0].astype(np.float64), grad.astype(np.float64)


def _pair_sum(chunk_i, chunk_j, kernel, inner):
    """``b_iᵀ K(Y_i, Y_j) b_j`` in float64."""
    (Yi, bi), (Yj, bj) = chunk_i, chunk_j
    if Yi.shape[0] == 0 or Yj.shape[0] == 0:
        return Yi.shape[0] * Yj.shape[0], 0.0
    Kb = worker_engine(inner, Yi.shape[0] * Yj.shape[0], Yi.shape[1]).matvec(
        kernel, Yi, Yj, bj.astype(Yj.dtype)[:, None]
    )
    return Yi.shape[0] * Yj.shape[0], float(bi @ Kb[:, 0].astype(np.float64))


def _draw(chunk, size: int, seed: int) -> np.ndarray:
    """``size`` rows of the chunk drawn i.i.d. with probabilities proportional to ``b``."""
    Y, b = chunk
    rng = np.random.default_rng(seed)
    return Y[rng.choice(Y.shape[0], size=size, replace=True, p=b / b.sum())]


def _uniform(rows: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    return rows, np.full(rows.shape[0], weight)


def _log_mixture(chunk, X, logw, kernel, inner) -> np.ndarray:
    Y, _ = chunk
    if Y.shape[0] == 0:
        return np.zeros(0)
    engine = worker_engine(inner, X.shape[0] * Y.shape[0], X.shape[1])
    return engine.logsumexp(kernel, Y, X, logw).astype(np.float64)


def _average(chunk, L, shift) -> tuple[int, float, float]:
    _, b = chunk
    centred = L - shift
    return b.shape[0], float(b @ centred), float(b @ np.abs(centred))


def _responsibility_moments(chunk, X, L, kernel, inner):
    Y, b = chunk
    if Y.shape[0] == 0:
        return 0, np.zeros(X.shape[0]), np.zeros(X.shape)
    with np.errstate(divide="ignore"):  # a zero weight: exp(-inf) = 0 exactly
        c = (np.log(b) - L).astype(X.dtype)
    engine = worker_engine(inner, X.shape[0] * Y.shape[0], X.shape[1])
    mass, first = engine.softmax_moments(kernel, X, Y, c)
    return Y.shape[0], mass.astype(np.float64), first.astype(np.float64)


def _second_moment(chunk) -> tuple[int, np.ndarray]:
    Y, b = chunk
    return Y.shape[0], second_moment(Y, b)


def _log_mixture_shaped(chunk, X, P, logw, inner) -> np.ndarray:
    Y, _ = chunk
    if Y.shape[0] == 0:
        return np.zeros(0)
    engine = worker_engine(inner, X.shape[0] * Y.shape[0], X.shape[1])
    dt = X.dtype
    return engine.shaped_logsumexp(Y, X, P.astype(dt), logw.astype(dt)).astype(np.float64)


def _responsibility_moments_shaped(chunk, X, P, log_norm, L, second, inner):
    Y, b = chunk
    n, d = X.shape
    if Y.shape[0] == 0:
        return 0, np.zeros(n), np.zeros((n, d)), np.zeros((n, d, d)) if second else None
    with np.errstate(divide="ignore"):  # a zero weight: exp(-inf) = 0 exactly
        c = np.log(b) - L
    dt = X.dtype
    mass, first, moment2 = worker_engine(inner, n * Y.shape[0], d).shaped_moments(
        X, P.astype(dt), log_norm.astype(dt), Y, c.astype(dt), second
    )
    return (Y.shape[0], mass.astype(np.float64), first.astype(np.float64),
            None if moment2 is None else moment2.astype(np.float64))


# --- the backend ---------------------------------------------------------------------------
class DaskBackend(Backend):
    """Targets in chunks on the workers of a Dask cluster; each reduction over them runs
    per chunk with an inner backend chosen on the worker, and the client sums the partial
    results.

    Reductions over explicit arrays (the particles against themselves) run on the client
    with the inner backend: they are ``O(N²)`` in the number of particles, small next to
    the targets.

    Parameters
    ----------
    client : distributed.Client, str or None, default=None
        The cluster: a client, or the address of a scheduler (``"tcp://host:8786"``).
        ``None``: the current default client, else a ``LocalCluster`` of processes that
        each fit starts and closes.
    inner : str or Backend, default="auto"
        The backend each worker runs its chunks with (a registered name or an instance);
        ``"auto"`` is resolved on each worker, for its own hardware and the size and
        dimension of its chunk's reductions.
    chunk_rows : int or None, default=None
        Rows per chunk when the targets are a NumPy array (at most ``1_000_000``, and at
        least one chunk per worker thread when ``None``).  A dask array keeps its own row
        chunks.

    Examples
    --------
    >>> from skgradflow.backends import DaskBackend
    >>> DaskBackend(inner="numpy")
    DaskBackend(client=None, inner='numpy', chunk_rows=None)
    """

    name = "dask"

    def __init__(self, client: Any = None, inner: str | Backend = "auto",
                 chunk_rows: int | None = None) -> None:
        self.client = client
        self.inner = inner
        self.chunk_rows = chunk_rows

    def __repr__(self) -> str:
        return (f"DaskBackend(client={self.client!r}, inner={self.inner!r}, "
                f"chunk_rows={self.chunk_rows!r})")

    def __hash__(self) -> int:
        return hash((type(self), self.inner if isinstance(self.inner, str) else None))

    def __deepcopy__(self, memo: dict) -> DaskBackend:
        # a client is a connection, not data: copies (clone, GridSearchCV) share it
        return type(self)(self.client, copy.deepcopy(self.inner, memo), self.chunk_rows)

    def __getstate__(self) -> dict:
        # a client cannot be pickled: another process reconnects by the scheduler's address
        state = dict(vars(self))
        if self.client is not None and not isinstance(self.client, str):
            state["client"] = self.client.scheduler.address
        return state

    def ensure_ready(self) -> None:
        _require_dask()
        from ._registry import check_backend

        if self.inner == "dask" or isinstance(self.inner, DaskBackend):
            raise ValueError("DaskBackend(inner=...) must be an in-memory backend, not 'dask'.")
        check_backend(self.inner, "inner")
        if self.chunk_rows is not None and not (
            isinstance(self.chunk_rows, (int, np.integer)) and self.chunk_rows >= 1
        ):
            raise ValueError(f"chunk_rows must be a positive integer or None; "
                             f"got {self.chunk_rows!r}.")

    def _local(self, n_pairs: int) -> Backend:
        from ._registry import resolve_backend

        return resolve_backend(self.inner, n_pairs)

    # the particles against themselves: on the client
    def matvec(self, kernel, Z, S, V):
        return self._local(Z.shape[0] * S.shape[0]).matvec(kernel, Z, S, V)

    def value_grad(self, kernel, Z, S, V, a):
        return self._local(Z.shape[0] * S.shape[0]).value_grad(kernel, Z, S, V, a)

    def logsumexp(self, kernel, Z, S, logv):
        return self._local(Z.shape[0] * S.shape[0]).logsumexp(kernel, Z, S, logv)

    def softmax_moments(self, kernel, Z, S, c):
        return self._local(Z.shape[0] * S.shape[0]).softmax_moments(kernel, Z, S, c)

    def bind(self, Y: np.ndarray, b: np.ndarray) -> DaskTargets:
        """Persist in-memory targets on the workers, one future per chunk of rows.

        ``Y`` of shape ``(m, d)``, ``b`` of shape ``(m,)`` (float64, summing to 1)."""
        self.ensure_ready()
        da, _ = _require_dask()
        client = _client(self.client)
        Y = np.asarray(Y)
        rows = self.chunk_rows or min(
            DEFAULT_CHUNK_ROWS,
            max(1, -(-Y.shape[0] // max(1, sum(client.nthreads().values())))),
        )
        return self.bind_chunks(da.from_array(Y, chunks=(rows, Y.shape[1])),
                                da.from_array(np.asarray(b, dtype=np.float64)))

    def bind_chunks(self, Y: Any, b: Any) -> DaskTargets:
        """Persist targets given as dask arrays (``Y`` of shape ``(m, d)``, ``b`` of shape
        ``(m,)``) on the workers, one future per row chunk of ``Y``."""
        self.ensure_ready()
        client = _client(self.client)
        dtype = np.dtype(Y.dtype)
        Y = Y.rechunk({1: -1})  # every chunk holds whole rows
        b = b.rechunk((Y.chunks[0],))
        parts = [
            _delayed(_pack)(y, w, dtype.str)
            for y, w in zip(Y.to_delayed().ravel(), b.to_delayed().ravel(), strict=True)
        ]
        chunks = client.compute(parts)
        return DaskTargets(self, client, chunks, Y.shape[0], Y.shape[1], dtype)


def _delayed(fn):
    import dask

    return dask.delayed(fn, pure=True)


class DaskTargets(Targets):
    """Targets as futures of ``(rows, weights)`` chunks held by the workers.

    Each reduction submits one task per chunk, gathers the partial results in chunk order
    and sums them in float64; a result that does not account for every chunk and every row
    raises, so no partial sum is ever dropped.  A lost worker's chunks are recomputed by
    Dask from their graph (the dask array, or the scattered NumPy chunk).

    Parameters
    ----------
    backend : DaskBackend
    client : distributed.Client
    chunks : list of distributed.Future
        Each holds ``(Y_k, b_k)``: rows of shape ``(m_k, d)`` and their float64 weights.
    n_samples, n_features : int
    dtype : numpy.dtype
    """

    def __init__(self, backend: DaskBackend, client, chunks: list, n_samples: int,
                 n_features: int, dtype) -> None:
        self.backend = backend
        self.client = client
        self.chunks = list(chunks)
        self.n_samples, self.n_features, self.dtype = int(n_samples), int(n_features), dtype
        self._masses: np.ndarray | None = None
        self._second: np.ndarray | None = None

    # --- plumbing ----------------------------------------------------------------------------
    def _retrying(self, reduction):
        """``reduction()``, run again (with its particles scattered afresh) when a worker is
        lost under it: the scheduler recomputes the lost chunks from their graph, and a
        broadcast that reached a dying worker is the only step it does not retry itself."""
        from distributed.client import FutureCancelledError
        from distributed.comm import CommClosedError

        for attempt in range(_ATTEMPTS):
            try:
                return reduction()
            except (CommClosedError, FutureCancelledError, OSError):
                if attempt == _ATTEMPTS - 1:
                    raise
                self.client.wait_for_workers(1, timeout=_WORKER_WAIT_S)

    def _map(self, fn, *args, scatter=()) -> list:
        """``fn(chunk, *scattered, *args)`` on every chunk, on the worker that holds it; the
        results in chunk order.  ``scatter`` arrays go to every worker once."""

        def reduction():
            sent = [self._scatter(a) for a in scatter]
            futures = [self.client.submit(fn, c, *sent, *args, pure=False) for c in self.chunks]
            return self.client.gather(futures)

        return self._retrying(reduction)

    def _scatter(self, array: np.ndarray):
        """``array`` as one task of the graph: sent once to the scheduler, held by one worker
        and copied once to each worker whose chunks need it (not once per task), and, unlike
        scattered data, recomputed from its task if that worker dies."""
        return self.client.submit(_identity, array, pure=False)

    def _check_rows(self, counts, what: str) -> None:
        total = int(sum(counts))
        if len(counts) != len(self.chunks) or total != self.n_samples:
            raise RuntimeError(
                f"the Dask reduction {what} accounted for {len(counts)} of {len(self.chunks)} "
                f"chunks and {total} of {self.n_samples} target rows; refusing a partial sum."
            )

    @staticmethod
    def _sum(parts) -> np.ndarray:
        """Partial results summed in float64, in chunk order (reproducible)."""
        total = np.zeros_like(np.asarray(parts[0], dtype=np.float64))
        for part in parts:
            total += part
        return total

    def masses(self) -> np.ndarray:
        """``(rows, Σ b, Σ b²)`` of every chunk, float64, shape ``(n_chunks, 3)``."""
        if self._masses is None:
            self._masses = np.asarray(self._map(_chunk_mass), dtype=np.float64)
            self._check_rows(self._masses[:, 0], "of the chunk masses")
        return self._masses

    # --- MMD flows -----------------------------------------------------------------------------
    def kernel_mean(self, kernel: Kernel, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._map(_kernel_mean, kernel, self.backend.inner, scatter=(Z,))
        self._check_rows([o[0] for o in out], "kernel_mean")
        return self._sum([o[1] for o in out]), self._sum([o[2] for o in out]).astype(Z.dtype)

    def energy(self, kernel: Kernel) -> float:
        def reduction():
            futures = [
                self.client.submit(_pair_sum, ci, cj, kernel, self.backend.inner, pure=False)
                for ci in self.chunks for cj in self.chunks
            ]
            return self.client.gather(futures)

        out = self._retrying(reduction)
        pairs = int(sum(o[0] for o in out))
        if len(out) != len(self.chunks) ** 2 or pairs != self.n_samples**2:
            raise RuntimeError(
                f"the Dask reduction energy accounted for {pairs} of {self.n_samples**2} "
                "target pairs; refusing a partial sum."
            )
        return 0.5 * math.fsum(o[1] for o in out)

    def _draw_futures(self, size: int, rng: np.random.Generator) -> list:
        """Futures of rows drawn i.i.d. with probabilities ``b``: a multinomial split of
        ``size`` over the chunks by their mass, then each chunk's share drawn there."""
        mass = self.masses()[:, 1]
        counts = rng.multinomial(size, mass / mass.sum())
        seeds = rng.integers(np.iinfo(np.int64).max, size=len(self.chunks))
        return [
            self.client.submit(_draw, c, int(k), int(s), pure=False)
            for c, k, s in zip(self.chunks, counts, seeds, strict=True) if k > 0
        ]

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        futures = self._draw_futures(size, rng)
        rows = np.concatenate(self._retrying(lambda: self.client.gather(futures)))
        # the chunks' shares come back grouped: a permutation makes the order i.i.d.
        return rows[rng.permutation(rows.shape[0])]

    def minibatch(self, size: int, rng: np.random.Generator) -> DaskTargets:
        # the drawn rows stay on the workers that hold their chunks
        parts = [
            self.client.submit(_uniform, f, 1.0 / size, pure=False)
            for f in self._draw_futures(size, rng)
        ]
        return DaskTargets(self.backend, self.client, parts, size, self.n_features, self.dtype)

    # --- inclusive KL ------------------------------------------------------------------------
    def log_mixture(self, kernel: Kernel, X: np.ndarray, logw: np.ndarray) -> list:
        """Futures of ``L`` per chunk, left on the workers."""

        def submit():
            Xf, lf = self._scatter(X), self._scatter(logw.astype(X.dtype))
            return [
                self.client.submit(_log_mixture, c, Xf, lf, kernel, self.backend.inner,
                                   pure=False)
                for c in self.chunks
            ]

        return self._retrying(submit)

    def average(self, L: list, shift: float) -> tuple[float, float]:
        def reduction():
            futures = [
                self.client.submit(_average, c, Lk, shift, pure=False)
                for c, Lk in zip(self.chunks, L, strict=True)
            ]
            return self.client.gather(futures)

        out = self._retrying(reduction)
        self._check_rows([o[0] for o in out], "average")
        return math.fsum(o[1] for o in out), math.fsum(o[2] for o in out)

    def responsibility_moments(self, kernel: Kernel, X: np.ndarray, L: list):
        def reduction():
            Xf = self._scatter(X)
            futures = [
                self.client.submit(_responsibility_moments, c, Xf, Lk, kernel,
                                   self.backend.inner, pure=False)
                for c, Lk in zip(self.chunks, L, strict=True)
            ]
            return self.client.gather(futures)

        out = self._retrying(reduction)
        self._check_rows([o[0] for o in out], "responsibility_moments")
        return (self._sum([o[1] for o in out]).astype(X.dtype),
                self._sum([o[2] for o in out]).astype(X.dtype))

    def second_moment(self) -> np.ndarray:
        if self._second is None:
            out = self._map(_second_moment)
            self._check_rows([o[0] for o in out], "second_moment")
            self._second = self._sum([o[1] for o in out])
        return self._second

    def log_mixture_shaped(self, X: np.ndarray, P: np.ndarray, logw: np.ndarray) -> list:
        """Futures of ``L`` per chunk (Gaussians of their own shape), left on the workers."""

        def submit():
            Xf, Pf, lf = self._scatter(X), self._scatter(P), self._scatter(logw)
            return [
                self.client.submit(_log_mixture_shaped, c, Xf, Pf, lf, self.backend.inner,
                                   pure=False)
                for c in self.chunks
            ]

        return self._retrying(submit)

    def responsibility_moments_shaped(self, X: np.ndarray, P: np.ndarray,
                                      log_norm: np.ndarray, L: list, second: bool = True):
        def reduction():
            Xf, Pf, nf = self._scatter(X), self._scatter(P), self._scatter(log_norm)
            futures = [
                self.client.submit(_responsibility_moments_shaped, c, Xf, Pf, nf, Lk, second,
                                   self.backend.inner, pure=False)
                for c, Lk in zip(self.chunks, L, strict=True)
            ]
            return self.client.gather(futures)

        out = self._retrying(reduction)
        self._check_rows([o[0] for o in out], "responsibility_moments_shaped")
        moment2 = self._sum([o[3] for o in out]).astype(X.dtype) if second else None
        return (self._sum([o[1] for o in out]).astype(X.dtype),
                self._sum([o[2] for o in out]).astype(X.dtype), moment2)
