"""The Numba backend: fused, vectorised, multi-core CPU reductions, compiled once per machine.

One pass over the pairs per reduction, with the distance, the kernel (its exponential by a
vectorised polynomial, not a libm call per pair) and every output channel fused, on the cores
that are free (threads of its own claim chunks of rows; see ``_Job``).
On a CPU it runs the flows 2-3x faster than KeOps and the blockwise NumPy backend, and its
compiled loops are cached on disk by Numba: about a minute of compiling on first use in a new
environment (all reductions, both dtypes), then a fraction of a second per process.

Numba is a dependency of the package; ``backend="auto"`` uses this backend on a CPU where the
time it saves over NumPy exceeds its start (see ``_registry.py``).  Where Numba cannot be
imported (one built for another NumPy), ``"auto"`` does without it and ``backend="numba"``
raises :class:`NumbaUnavailableError`.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import sys
import threading
import time

import numpy as np

from ..kernels import KERNELS, Kernel
from ._keops_probe import notice_if_slow
from ._protocol import Backend, check_log_domain_kernel

NOT_INSTALLED_HINT = 'pip install "skgradflow[numba]" (or pip install numba)'

# Rows go to threads in chunks of at most this many kernel entries (a fraction of a millisecond
# on one core: the Python between chunks costs about 1%), each a ``1 / (_CHUNKS_PER_THREAD ×
# threads)`` share of the rows left, so that the threads that do run take over the work of one
# the OS has descheduled, but never below ``_MIN_PAIRS_PER_CHUNK`` (tens of microseconds): a
# call with less than two such chunks of work runs on the calling thread alone, as waking a
# helper thread would cost more than it saves.
_PAIRS_PER_CHUNK = 1 << 19
_CHUNKS_PER_THREAD = 4
_MIN_PAIRS_PER_CHUNK = 1 << 16
# chunks the calling thread computes per compiled call: a Ctrl-C is seen between calls
_CALLER_CLAIMS = 4
_compiled: set[tuple] = set()


# From BLOCKED_MIN_DIMS coordinates and BLOCKED_MIN_PAIRS kernel entries a call on, distances
# and first moments come from matrix products over tiles of rows and blocks of sources (the
# ``*_tiles`` loops) rather than a loop over the coordinates of every pair.  Measured with
# ``python benchmarks/bench_contention.py --tables calls`` (column "numba, per-pair loop";
# docs/benchmarks.md), best of 11 value_grad calls, 2 shared cores: at N × M = 500 × 1757 the
# products are as fast at d = 8 (2.2 against 2.3 ms), 3x faster at d = 16 (2.7 against 8.3
# ms) and 4x at d = 32 (3.8 against 15.6 ms); at 100 × 400 preparing their inputs (about 40
# µs) costs as much as they save at d = 16 (0.20 ms either way), more at d = 8 (0.17 against
# 0.12 ms); at 30 × 100 twice the call.  (With the threshold lowered to d = 4, once: 1.85
# against 1.55 ms at 500 × 1757, one thread.)
BLOCKED_MIN_DIMS = 8
BLOCKED_MIN_PAIRS = 100_000


def _blocked(Z: np.ndarray, S: np.ndarray) -> bool:
    return Z.shape[1] >= BLOCKED_MIN_DIMS and Z.shape[0] * S.shape[0] >= BLOCKED_MIN_PAIRS


class NumbaUnavailableError(ImportError):
    """Numba is not installed; the message names the extra that installs it."""


def _kernels():
    """The compiled loops' module; a clear error naming the extra where Numba cannot be
    imported (not installed, or installed against another NumPy)."""
    try:
        from . import _numba_kernels
    except ImportError as exc:
        raise NumbaUnavailableError(
            f"backend='numba' needs Numba, which cannot be imported here ({exc}). Fix: "
            f"{NOT_INSTALLED_HINT}; or use backend='numpy'."
        ) from exc
    return _numba_kernels


def _env_threads(name: str) -> int | None:
    """A positive thread count from the environment variable ``name`` (the first entry of a
    nested OpenMP list such as ``"2,1"``), or None."""
    value = os.environ.get(name, "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _runnable_tasks() -> int:
    """The kernel's count of runnable tasks on the machine (``/proc/loadavg``, Linux)."""
    with open("/proc/loadavg", "rb") as fh:
        return int(fh.read().split()[3].split(b"/")[0])


def _own_runnable_threads() -> int:
    """This process's threads that are runnable (state ``R``), the calling one included."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as fh:
                # the state follows the command name, which may hold spaces and parentheses
                count += fh.read().rsplit(b")", 1)[1].split()[0] == b"R"
        except (OSError, IndexError):  # a thread that ended while we looked
            continue
    return max(count, 1)


def _idle_cpus() -> int | None:
    """CPUs of the machine that no other process wants right now: its count of runnable
    tasks less this process's own runnable threads (Linux); None where it cannot be read.
    Read at most every ``_IDLE_CPUS_TTL`` seconds.

    This process's threads are left out because a helper thread that is still returning
    from the previous reduction is runnable when the next one starts: counted as another
    task, it made back-to-back calls of about a millisecond run on one thread (500 × 1757
    kernel entries: 1.1 ms against 0.6-0.9 ms on two)."""
    global _idle_cpus_read
    now = time.monotonic()
    if now - _idle_cpus_read[0] < _IDLE_CPUS_TTL:
        return _idle_cpus_read[1]
    try:
        # this process's threads first: a helper that stops running between the two reads
        # (as one does just after a reduction) is then left out of both counts, or counted
        # as ours, never as another process's task
        own = _own_runnable_threads()
        others = max(0, _runnable_tasks() - own)
        idle = (os.cpu_count() or 1) - others
    except (OSError, ValueError, IndexError):
        idle = None
    _idle_cpus_read = (now, idle)
    return idle


_IDLE_CPUS_TTL = 0.05
_idle_cpus_read: tuple[float, int | None] = (-1.0, None)


def default_threads() -> int:
    """The threads a reduction uses by default: the CPUs this process may run on, capped by
    ``NUMBA_NUM_THREADS`` and ``OMP_NUM_THREADS`` (which joblib, and so scikit-learn's
    ``n_jobs``, set in its worker processes to share the cores among them), by
    ``numba.set_num_threads`` where the program has started Numba's own threads, and by the
    CPUs that no other process wants at this moment (at least 1).

    Read at every call (the busy CPUs at most every 50 ms), so a limit set while a program
    runs applies to its next reduction, and a reduction beside busy processes runs on the
    calling thread alone: measured on 2 cores beside two busy processes, a second thread
    then only made each call wait for its turn on a core (2-3x slower than one thread).

    Examples
    --------
    >>> from skgradflow.backends import default_threads
    >>> default_threads() >= 1
    True
    """
    try:
        limits = [len(os.sched_getaffinity(0))]
    except (AttributeError, OSError):  # not on Linux
        limits = [os.cpu_count() or 1]
    limits += [n for n in map(_env_threads, ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")) if n]
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is not None and getattr(parallel, "_is_initialized", False):
        limits.append(parallel.get_num_threads())
    idle = _idle_cpus()
    if idle is not None:
        limits.append(idle)
    return max(1, min(limits))


# --- sharing the rows of one reduction among threads -----------------------------------------
class _Job:
    """The row chunks of one reduction, shared by the calling thread and whichever helper
    threads the OS gets round to running.

    Each thread enters one compiled driver that claims chunks from a shared counter (an atomic
    increment), writes them into buffers of its own thread and marks each finished chunk as
    its own (an atomic compare-and-swap), all without the GIL.  Nothing makes the caller wait
    for a helper: once every chunk is claimed, the caller computes again, at once, each chunk
    no helper has finished, then copies the helpers' finished chunks into the outputs.  So a
    helper that the OS has parked, before or in the middle of a chunk, costs the caller at most
    that chunk, and a reduction on a busy machine runs at the speed of the threads that do run
    (at worst the caller's own), never sleeping on a lock or at a barrier, where it would lose
    its turn on a busy core, nor waiting for the GIL held by a parked thread.
    """

    def __init__(self, chunks_fn, rows_fn, inputs: tuple, outputs: tuple, bounds: list[int],
                 n_helpers: int) -> None:
        self.chunks_fn, self.rows_fn = chunks_fn, rows_fn
        self.inputs, self.outputs = inputs, outputs
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.n_chunks = len(bounds) - 1
        self.state = np.zeros(1, dtype=np.int64)  # the next chunk to claim
        self.owner = np.full(self.n_chunks, -1, dtype=np.int64)  # who finished it: 0 the caller
        self.buffers = [outputs] + [tuple(np.empty_like(out) for out in outputs)
                                    for _ in range(n_helpers)]
        self.error: BaseException | None = None

    def work(self, me: int) -> None:
        """A helper's part: chunks until none is left to claim."""
        try:
            self.chunks_fn(*self.inputs, *self.buffers[me], self.bounds, self.state,
                           self.owner, me, self.n_chunks)
        except Exception as exc:  # re-raised by the caller, in its own thread
            self.error = self.error or exc

    def run(self) -> None:
        """The caller's part: chunks until none is left to claim, a few per compiled call (so
        that a Ctrl-C is seen between them), then the chunks no helper has finished, then the
        helpers' chunks copied into the outputs."""
        args = (*self.inputs, *self.outputs, self.bounds, self.state, self.owner, 0)
        while self.chunks_fn(*args, _CALLER_CLAIMS) == _CALLER_CLAIMS:
            pass
        if self.error is not None:
            raise self.error
        for chunk in np.flatnonzero(self.owner == -1):
            self.rows_fn(*self.inputs, *self.outputs, self.bounds[chunk], self.bounds[chunk + 1])
            self.owner[chunk] = 0
        row_owner = np.repeat(self.owner, np.diff(self.bounds))
        for me in range(1, len(self.buffers)):
            rows = row_owner == me
            if rows.any():
                for out, buffer in zip(self.outputs, self.buffers[me], strict=True):
                    out[rows] = buffer[rows]

    def stop(self) -> None:
        """No further chunk starts (helpers finish the one they hold, into their buffers)."""
        self.state[0] = self.n_chunks


def _chunk_bounds(n_rows: int, n_sources: int, n_threads: int) -> list[int]:
    """Row boundaries of the chunks: guided, each a share of the rows left (so the last ones,
    which a caller may compute twice, are short), between ``_MIN_PAIRS_PER_CHUNK`` and
    ``_PAIRS_PER_CHUNK`` kernel entries; one thread takes chunks of the largest size."""
    n_sources = max(1, n_sources)
    largest = max(1, _PAIRS_PER_CHUNK // n_sources)
    smallest = max(1, min(largest, _MIN_PAIRS_PER_CHUNK // n_sources))
    bounds = [0]
    while bounds[-1] < n_rows:
        left = n_rows - bounds[-1]
        rows = largest if n_threads == 1 else min(
            largest, max(smallest, left // (_CHUNKS_PER_THREAD * n_threads)))
        bounds.append(min(n_rows, bounds[-1] + rows))
    return bounds


class _Helpers:
    """Daemon threads that join the jobs put on their queue; made on first use, added to when
    a job wants more, made again in a forked child (whose parent's threads do not exist)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []

    def _run(self) -> None:
        while True:
            job, me = self.queue.get()
            job.work(me)

    def join(self, job: _Job, n_helpers: int) -> None:
        with self.lock:
            while len(self.threads) < n_helpers:
                thread = threading.Thread(target=self._run, daemon=True,
                                          name=f"skgradflow-numba-{len(self.threads)}")
                thread.start()
                self.threads.append(thread)
        for me in range(1, n_helpers + 1):
            self.queue.put((job, me))


_helpers = _Helpers()
if hasattr(os, "register_at_fork"):
    def _new_helpers() -> None:
        global _helpers
        _helpers = _Helpers()

    os.register_at_fork(after_in_child=_new_helpers)


def _run_rows(chunks_fn, rows_fn, inputs: tuple, outputs: tuple, n_sources: int,
              n_threads: int) -> None:
    """One reduction over the rows of ``outputs`` in chunks, on up to ``n_threads`` threads,
    the calling one included (see :class:`_Job`).  A ``KeyboardInterrupt`` reaches the caller
    within a few chunks (milliseconds), and then no further chunk starts."""
    bounds = _chunk_bounds(outputs[0].shape[0], n_sources, n_threads)
    n_helpers = max(0, min(n_threads, len(bounds) - 1) - 1)
    job = _Job(chunks_fn, rows_fn, inputs, outputs, bounds, n_helpers)
    if n_helpers:
        _helpers.join(job, n_helpers)
    try:
        job.run()
    except BaseException:
        job.stop()
        raise


def numba_installed() -> bool:
    """Whether the Numba backend can run here: Numba is installed and imports.

    Examples
    --------
    >>> from skgradflow.backends import numba_installed
    >>> isinstance(numba_installed(), bool)
    True
    """
    if importlib.util.find_spec("numba") is None:  # the cheap answer, without importing
        return False
    try:
        _kernels()
    except NumbaUnavailableError:
        return False
    return True


def loops_ready(n_dims: int) -> bool:
    """Whether the four reductions for data of ``n_dims`` coordinates (their per-pair loops,
    and their blocked loops from ``BLOCKED_MIN_DIMS``) start without a compile: loaded in
    this process already, or in Numba's disk cache (compiled since the loops' source last
    changed).  Imports Numba (about a second) unless it already is.

    Examples
    --------
    >>> from skgradflow.backends._numba import loops_ready
    >>> isinstance(loops_ready(2), bool)
    True
    """
    reductions = ("value_grad", "matvec", "logsumexp", "softmax_moments")
    names = [*reductions, *(f"{r}_tiles" for r in reductions if n_dims >= BLOCKED_MIN_DIMS)]
    loaded = {name for name, _ in _compiled}
    if all(name in loaded for name in names):
        return True
    try:
        nk = _kernels()
    except NumbaUnavailableError:
        return False
    for name in names:
        for fn in (f"{name}_chunks", name if name.endswith("_tiles") else f"{name}_rows"):
            try:  # an index that holds compiled code for the current source
                if not getattr(nk, fn)._cache._cache_file._load_index():
                    return False
            except Exception:  # no disk cache (Numba's NullCache), or one it cannot read
                return False
    return True


class NumbaBackend(Backend):
    """Fused, vectorised reductions on every CPU core, compiled by Numba.

    Parameters
    ----------
    n_threads : int or None, default=None
        Threads per reduction, the calling one included; ``None``: :func:`default_threads`
        at every call (the CPUs this process may use, within the limits that
        ``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS`` and joblib's workers set).

    Notes
    -----
    Distances come from differences, as in the other backends, so nothing is lost near
    ``r = 0``; from ``BLOCKED_MIN_DIMS`` (8) coordinates on (in calls of at least
    ``BLOCKED_MIN_PAIRS`` kernel entries), from the matrix product
    ``|z|² + |s|² - 2 z·s`` in float64 on coordinates centred on the sources' mean, and again
    from differences for each pair where the product cancels (``r² < (|z|² + |s|²) / 512``).
    The exponential is a range-reduced polynomial accurate to about 1 ulp in float64 and
    float32.  Results agree with the NumPy backend to 1e-10 (float64) and 1e-4
    (float32), relative.  Compiled loops are cached on disk by Numba (next to the package, or
    in Numba's user cache directory, or ``NUMBA_CACHE_DIR``).

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.backends import NumbaBackend, NumpyBackend
    >>> from skgradflow.kernels import Kernel
    >>> Z = np.random.default_rng(0).normal(size=(5, 2))
    >>> V = np.ones((5, 1))
    >>> k = Kernel("gaussian", 1.0)
    >>> bool(np.allclose(NumbaBackend().matvec(k, Z, Z, V), NumpyBackend().matvec(k, Z, Z, V)))
    True
    """

    name = "numba"

    def __init__(self, n_threads: int | None = None) -> None:
        if n_threads is not None and (
            isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1
        ):
            raise ValueError(f"n_threads must be a positive int or None; got {n_threads!r}.")
        self.n_threads = n_threads

    def __repr__(self) -> str:
        return "NumbaBackend()" if self.n_threads is None else (
            f"NumbaBackend(n_threads={self.n_threads})")

    @property
    def device(self) -> str:
        return "numba-cpu"

    def ensure_ready(self) -> None:
        _kernels()

    # --- calling the compiled loops ------------------------------------------------------------
    def threads(self) -> int:
        """The threads the next reduction uses: ``n_threads`` where set, else
        :func:`default_threads`."""
        return self.n_threads or default_threads()

    def _call(self, name: str, n_sources: int, inputs: tuple, outputs: tuple) -> None:
        """Run the reduction ``name`` over the rows of ``outputs``, with a notice on stderr
        while a first compile takes long (the first call of each loop and dtype compiles it,
        or loads it from the disk cache)."""
        nk = _kernels()
        chunks_fn = getattr(nk, f"{name}_chunks")
        rows_fn = getattr(nk, name if name.endswith("_tiles") else f"{name}_rows")
        key = (name, inputs[0].dtype.str)
        if key not in _compiled:
            with notice_if_slow("numba-compile", "compiling the Numba backend's loops, once "
                                "per machine (a few seconds each)..."):
                no_rows = np.zeros(1, dtype=np.int64)
                chunks_fn(*inputs, *outputs, no_rows, np.zeros(1, dtype=np.int64),
                          np.zeros(0, dtype=np.int64), 0, 0)
                rows_fn(*inputs, *outputs, 0, 0)
            _compiled.add(key)
        _run_rows(chunks_fn, rows_fn, inputs, outputs, n_sources, self.threads())

    @staticmethod
    def _prepare_tiles(kernel: Kernel, Z: np.ndarray, S: np.ndarray) -> tuple:
        """The inputs of the blocked loops (``*_tiles`` in ``_numba_kernels``): coordinates
        divided by the bandwidth and centred on the sources' mean, in the dtype of the data
        (``Z``) and in float64 (``Z64``), their squared norms, and the sources in blocks of
        ``BLOCK``, padded with zero rows: transposed per block (``SB``), and as rows in float64
        (``S64``) and in the dtype of the data (``SP``)."""
        nk = _kernels()
        h = kernel.scale
        Ss = np.asarray(S, dtype=np.float64) / h
        centre = Ss.mean(axis=0)
        Z64 = np.ascontiguousarray(np.asarray(Z, dtype=np.float64) / h - centre)
        m, d = S.shape
        n_blocks = -(-m // nk.BLOCK)
        S64 = np.zeros((n_blocks * nk.BLOCK, d))
        np.subtract(Ss, centre, out=S64[:m])
        SB = np.ascontiguousarray(S64.reshape(n_blocks, nk.BLOCK, d).transpose(0, 2, 1))
        nz = np.einsum("ij,ij->i", Z64, Z64)
        ns = np.einsum("ij,ij->i", S64[:m], S64[:m])
        dtype = Z.dtype
        Zd = Z64 if dtype == np.float64 else np.ascontiguousarray(Z64, dtype=dtype)
        SP = S64 if dtype == np.float64 else np.ascontiguousarray(S64, dtype=dtype)
        return (Zd, Z64, nz, SB, ns, S64), SP, np.array([0.5, 1.0, 0.0], dtype=dtype)

    @staticmethod
    def _prepare(kernel: Kernel, Z: np.ndarray, S: np.ndarray):
        """Coordinates divided by the bandwidth (as every backend evaluates the kernel), the
        sources transposed, and the constants ``[0.5, 1, 0]`` in the dtype of the data."""
        h = kernel.scale
        dtype = Z.dtype
        Zs = np.ascontiguousarray(Z / h if h != 1.0 else Z, dtype=dtype)
        ST = np.ascontiguousarray((S / h if h != 1.0 else S).T, dtype=dtype)
        return Zs, ST, np.array([0.5, 1.0, 0.0], dtype=dtype)

    # --- the four reductions ---------------------------------------------------------------------
    def matvec(self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray) -> np.ndarray:
        VT = np.ascontiguousarray(V.T, dtype=Z.dtype)
        out = np.zeros((Z.shape[0], V.shape[1]), dtype=Z.dtype)
        if _blocked(Z, S):
            tiles, _, c = self._prepare_tiles(kernel, Z, S)
            self._call("matvec_tiles", S.shape[0],
                       (*tiles, VT, KERNELS.index(kernel.name), c), (out,))
            return out
        Zs, ST, c = self._prepare(kernel, Z, S)
        self._call("matvec", S.shape[0], (Zs, ST, VT, KERNELS.index(kernel.name), c),
                   (out,))
        return out

    def value_grad(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray, a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        VT = np.ascontiguousarray(V.T, dtype=Z.dtype)
        a = np.ascontiguousarray(a.reshape(-1), dtype=Z.dtype)
        val = np.zeros((Z.shape[0], V.shape[1]), dtype=Z.dtype)
        grad = np.zeros(Z.shape, dtype=Z.dtype)
        if _blocked(Z, S):
            tiles, SP, c = self._prepare_tiles(kernel, Z, S)
            self._call("value_grad_tiles", S.shape[0],
                       (*tiles, SP, VT, a, KERNELS.index(kernel.name), c), (val, grad))
            return val, grad / np.asarray(kernel.scale, dtype=Z.dtype)
        Zs, ST, c = self._prepare(kernel, Z, S)
        self._call("value_grad", S.shape[0], (Zs, ST, VT, a, KERNELS.index(kernel.name), c),
                   (val, grad))
        return val, grad / np.asarray(kernel.scale, dtype=Z.dtype)

    def logsumexp(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, logv: np.ndarray
    ) -> np.ndarray:
        check_log_domain_kernel(kernel)
        logv = np.ascontiguousarray(logv, dtype=Z.dtype)
        out = np.empty(Z.shape[0], dtype=Z.dtype)
        if _blocked(Z, S):
            tiles, _, c = self._prepare_tiles(kernel, Z, S)
            self._call("logsumexp_tiles", S.shape[0], (*tiles, logv, c), (out,))
            return out
        Zs, ST, c = self._prepare(kernel, Z, S)
        self._call("logsumexp", S.shape[0], (Zs, ST, logv, c), (out,))
        return out

    def softmax_moments(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        check_log_domain_kernel(kernel)
        cw = np.ascontiguousarray(c, dtype=Z.dtype)
        mass = np.zeros(Z.shape[0], dtype=Z.dtype)
        first = np.zeros(Z.shape, dtype=Z.dtype)
        if _blocked(Z, S):
            tiles, SP, consts = self._prepare_tiles(kernel, Z, S)
            self._call("softmax_moments_tiles", S.shape[0], (*tiles, SP, cw, consts),
                       (mass, first))
            return mass, first * np.asarray(kernel.scale, dtype=Z.dtype)
        Zs, ST, consts = self._prepare(kernel, Z, S)
        self._call("softmax_moments", S.shape[0], (Zs, ST, cw, consts), (mass, first))
        # the moment ran in coordinates divided by h
        return mass, first * np.asarray(kernel.scale, dtype=Z.dtype)
