"""The registry of backends, and how ``backend=`` is resolved for a run."""

from __future__ import annotations

import glob
import os
import sys
import threading
import warnings
from collections.abc import Callable

from ._dask import DaskBackend
from ._keops import KeOpsBackend, unavailable_message
from ._keops_probe import keops_status
from ._numba import NOT_INSTALLED_HINT, NumbaBackend, numba_installed
from ._numpy import NumpyBackend
from ._protocol import Backend

# "auto" uses NumPy below this many kernel entries over a whole run: a few seconds of work,
# which a first compile (Numba about 10 s per reduction, KeOps about 10 s per formula, once
# per machine) would dominate; above it, KeOps on a GPU, else Numba (a dependency, so KeOps
# is compiled for a CPU only where Numba cannot be imported).  Measured on 2 CPU cores,
# d = 2, float64: the blockwise NumPy backend evaluates 1-3·10⁸ Gaussian kernel entries a
# second, KeOps about 3·10⁸, the Numba backend 1.1·10⁹ (value and gradient) to 1.7·10⁹
# (value only).
AUTO_KEOPS_MIN_WORK = 500_000_000

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


def resolve_backend(backend: str | Backend, n_pairs: int, n_calls: int = 1) -> Backend:
    """The engine for ``n_calls`` reductions of about ``n_pairs`` kernel entries each.

    A :class:`Backend` instance is used as given; a registered name builds its backend;
    ``"auto"`` picks NumPy for small runs (where a first compile would dominate), else KeOps
    on a GPU where it passes its probe, else the Numba backend where Numba is installed,
    else KeOps on the CPU, else NumPy.  The backend is checked (``ensure_ready``) before
    it is returned: a KeOps that cannot run raises :class:`KeOpsUnavailableError` here.

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
    elif n_pairs * n_calls < AUTO_KEOPS_MIN_WORK:
        engine = NumpyBackend()
    else:
        engine = _compiled_for_auto()
    engine.ensure_ready()
    return engine
