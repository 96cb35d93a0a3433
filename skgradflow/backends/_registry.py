"""The registry of backends, and how ``backend=`` is resolved for a run."""

from __future__ import annotations

import glob
import os
import sys
import threading
import warnings
from collections.abc import Callable

import numpy as np

from ._dask import DaskBackend
from ._keops import KeOpsBackend, unavailable_message
from ._keops_probe import keops_status
from ._numba import NOT_INSTALLED_HINT, NumbaBackend, loops_ready, numba_installed
from ._numpy import NumpyBackend
from ._protocol import Backend

# "auto" probes KeOps (a child process, then about 10 s of compiling per formula, once per
# machine) only from this many kernel entries over a whole run, and only where a GPU may be
# present or Numba cannot be imported: on a CPU the Numba backend is faster than KeOps (2
# cores, d = 2, float64: KeOps about 3·10⁸ Gaussian kernel entries a second, Numba
# 1.1·10⁹ to 1.7·10⁹; see docs/benchmarks.md).
AUTO_KEOPS_MIN_WORK = 500_000_000

# The Numba backend against the blockwise NumPy one, measured with
#     python benchmarks/bench_contention.py --tables calls --repeats 11
# (docs/benchmarks.md, "Busy CPUs, small and medium problems": 2 cores shared with other jobs,
# load average about 9, x86-64 with AVX-512; float64 value_grad, Gaussian kernel, the best of
# 11 warm calls, Numba on its default threads): NumPy's time less Numba's, in ns per kernel
# entry, at N × M = 30 × 100, 100 × 400, 500 × 1757 and 2000 × 8000 (interpolated in
# log N·M and in d, held beyond the ends).  Negative: NumPy is the faster (30 × 100, d = 2).
# The saving grows with the size up to about 10⁶ entries a call, and with d (NumPy's distances
# are a loop over coordinates, Numba's a matrix product from d = 8 on); NumPy's BLAS calls
# wait for their threads on a busy machine, which the medium sizes show most (and 100 × 400 at
# d = 32, where NumPy's product of the gradient is large enough to use threads: 13.6 ms).
AUTO_NUMBA_SIZES = (3_000, 40_000, 878_500, 16_000_000)
AUTO_NUMBA_SAVES_NS = {
    2: (-0.5, 1.5, 40.2, 24.4),
    8: (0.4, 1.7, 47.4, 18.2),
    16: (1.3, 2.4, 46.5, 36.4),
    32: (3.3, 329.9, 68.6, 38.9),
}
# What Numba costs a process before its first reduction, measured with
#     python benchmarks/bench_contention.py --tables starts
# (same page; importing Numba and the loops' module, then the first value_grad and matvec):
# 0.6-0.8 s where its disk cache holds the loops, 8.5-11.3 s where they are compiled (2 of the
# 4 reductions; a run uses 2 to 4).  With a margin for busier machines, "auto" picks Numba for
# a run whose NumPy time it cuts by more than its start: 1.5 s (cached), 40 s (to compile),
# nothing where the loops are loaded in this process already.  So a small run never waits for
# a compile, nor for Numba's import.
AUTO_NUMBA_WARM_START_S = 1.5
AUTO_NUMBA_COLD_START_S = 40.0


def numba_saving_s(n_pairs: int, n_dims: int, n_calls: int = 1) -> float:
    """Seconds the Numba backend saves over NumPy on ``n_calls`` reductions of ``n_pairs``
    kernel entries each, on data of ``n_dims`` coordinates, once started (negative where
    NumPy is the faster)."""
    dims = sorted(AUTO_NUMBA_SAVES_NS)
    at = np.log10(max(n_pairs, 1))
    sizes = np.log10(AUTO_NUMBA_SIZES)
    by_dims = [np.interp(at, sizes, AUTO_NUMBA_SAVES_NS[d]) for d in dims]
    ns = float(np.interp(n_dims, dims, by_dims))
    return float(n_pairs) * float(n_calls) * ns * 1e-9


_REGISTRY: dict[str, Callable[[], Backend]] = {
    "numpy": NumpyBackend,
    "keops": KeOpsBackend,
    "numba": NumbaBackend,
    "dask": DaskBackend,
}
# the names backend= accepts; a live set, so that parameter validation sees registrations
BACKEND_NAMES: set[str] = {"auto", *_REGISTRY}
_warned: set[str] = set()
_warn_lock = threading.Lock()


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``backend=name`` build its engine with ``factory()``.

    Parameters
    ----------
    name : str
        Not ``"auto"``; an existing name is replaced.
    factory : callable
        Called without arguments for every run that names it; returns a :class:`Backend`.

    Examples
    --------
    >>> from skgradflow.backends import NumpyBackend, backend_names, register_backend
    >>> class Blocky(NumpyBackend):
    ...     name = "blocky"
    >>> register_backend("blocky", Blocky)
    >>> "blocky" in backend_names()
    True
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"name must be a non-empty string other than 'auto'; got {name!r}.")
    if not callable(factory):
        raise TypeError(f"factory must be callable; got {type(factory).__name__}.")
    _REGISTRY[name] = factory
    BACKEND_NAMES.add(name)


def backend_names() -> tuple[str, ...]:
    """The names ``backend=`` accepts: ``"auto"`` and every registered backend.

    Examples
    --------
    >>> from skgradflow.backends import backend_names
    >>> {"auto", "keops", "numpy"} <= set(backend_names())
    True
    """
    return tuple(sorted(BACKEND_NAMES))


def check_backend(backend: str | Backend, argument: str = "backend") -> None:
    """Raise a ``ValueError`` naming ``argument`` unless ``backend`` is a registered name
    or a :class:`Backend` instance."""
    if isinstance(backend, Backend):
        return
    if isinstance(backend, str) and backend in backend_names():
        return
    raise ValueError(
        f"{argument} must be one of {backend_names()} or a skgradflow.backends.Backend "
        f"instance; got {backend!r}."
    )


def _warn_once(what: str, message: str) -> None:
    with _warn_lock:
        if what in _warned:
            return
        _warned.add(what)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def gpu_possible() -> bool:
    """Whether this machine may have a CUDA GPU, without importing anything: an NVIDIA device
    node, and devices not hidden by ``CUDA_VISIBLE_DEVICES``.  Only when it may does
    ``backend="auto"`` ask the KeOps probe (a child process, seconds on first use)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if sys.platform.startswith("linux"):
        return bool(glob.glob("/dev/nvidia[0-9]*"))
    return sys.platform == "win32"


def _compiled_for_auto() -> Backend:
    """KeOps on a GPU; else the Numba backend when installed; else KeOps on the CPU; else
    NumPy: never a KeOps that failed the probe."""
    status = keops_status() if gpu_possible() or not numba_installed() else None
    if status is not None and status.gpu:
        return KeOpsBackend("gpu")
    if numba_installed():
        fallback, engine = "the Numba backend", NumbaBackend()
    elif status.cpu:
        fallback, engine = "KeOps on the CPU", KeOpsBackend("cpu")
    else:
        fallback, engine = "the NumPy backend", NumpyBackend()
    if status is not None and status.gpu_seen:
        _warn_once("keops-gpu", f"backend='auto': {unavailable_message('gpu')} Using {fallback}.")
    elif isinstance(engine, NumpyBackend):
        _warn_once("keops", f"backend='auto': {unavailable_message()} Using {fallback}; "
                   f"for a faster CPU backend: {NOT_INSTALLED_HINT}.")
    return engine


def _numba_pays_off(n_pairs: int, n_calls: int, n_dims: int) -> bool:
    """Whether the Numba backend saves more than its start: nothing where its loops are
    loaded in this process, a load where they are in its disk cache, else a compile (its cache
    is asked only where a load would pay, as asking imports Numba)."""
    saving = numba_saving_s(n_pairs, n_dims, n_calls)
    if saving <= 0.0:
        return False
    if saving >= AUTO_NUMBA_COLD_START_S:
        return True
    imported = "skgradflow.backends._numba_kernels" in sys.modules
    if not imported and saving < AUTO_NUMBA_WARM_START_S:
        return False
    return loops_ready(n_dims)


def resolve_backend(backend: str | Backend, n_pairs: int, n_calls: int = 1,
                    n_dims: int | None = None) -> Backend:
    """The engine for ``n_calls`` reductions of about ``n_pairs`` kernel entries each, on
    data of ``n_dims`` coordinates (None: taken as 2, where Numba saves least).

    A :class:`Backend` instance is used as given; a registered name builds its backend;
    ``"auto"`` picks, from the run's work ``n_pairs × n_calls``: KeOps on a GPU where one may
    be present, the work is at least ``AUTO_KEOPS_MIN_WORK`` and KeOps passes its probe; else
    the Numba backend where the time it saves over NumPy (``numba_saving_s``, measured by
    size and dimension) exceeds its start (a load from its disk cache, or a compile; see the
    comments above); else NumPy; and KeOps on the CPU, above ``AUTO_KEOPS_MIN_WORK``, only
    where Numba cannot be imported.  The backend is checked (``ensure_ready``) before it is
    returned: a KeOps that cannot run raises :class:`KeOpsUnavailableError` here.

    Examples
    --------
    >>> from skgradflow.backends import resolve_backend
    >>> resolve_backend("auto", n_pairs=1000).device
    'numpy'
    """
    check_backend(backend)
    if isinstance(backend, Backend):
        engine = backend
    elif backend != "auto":
        engine = _REGISTRY[backend]()
    else:
        work, dims = n_pairs * n_calls, 2 if n_dims is None else n_dims
        if work >= AUTO_KEOPS_MIN_WORK and (gpu_possible() or not numba_installed()):
            engine = _compiled_for_auto()
        elif _numba_pays_off(n_pairs, n_calls, dims) and numba_installed():
            engine = NumbaBackend()
        else:
            engine = NumpyBackend()
    engine.ensure_ready()
    return engine
