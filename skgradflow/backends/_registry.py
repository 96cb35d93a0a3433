"""The registry of backends, and how ``backend=`` is resolved for a run."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

from ._keops import KeOpsBackend, unavailable_message
from ._keops_probe import keops_status
from ._numpy import NumpyBackend
from ._protocol import Backend

# "auto" uses NumPy below this many kernel entries over a whole run: a few seconds of work,
# which a cold KeOps compile (about 10 s for a flow's formulas, once per machine and
# dimension) would dominate.  Measured on 2 CPU cores: the blockwise NumPy backend evaluates
# 1-3·10⁸ Gaussian kernel entries a second, KeOps 1.1-1.7x that in d = 2 and about as many in
# d = 10; KeOps' gains are its linear memory, and far more on a GPU.
AUTO_KEOPS_MIN_WORK = 500_000_000

_REGISTRY: dict[str, Callable[[], Backend]] = {
    "numpy": NumpyBackend,
    "keops": KeOpsBackend,
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


def _keops_for_auto() -> Backend:
    """KeOps on the GPU, else on the CPU, else NumPy: never a KeOps that failed the probe."""
    status = keops_status()
    if status.gpu:
        return KeOpsBackend("gpu")
    if status.cpu:
        if status.gpu_seen:
            _warn_once(
                "keops-gpu",
                "backend='auto': " + unavailable_message("gpu") + " Using KeOps on the CPU.",
            )
        return KeOpsBackend("cpu")
    _warn_once("keops", "backend='auto': " + unavailable_message() + " Using the NumPy backend.")
    return NumpyBackend()


def resolve_backend(backend: str | Backend, n_pairs: int, n_calls: int = 1) -> Backend:
    """The engine for ``n_calls`` reductions of about ``n_pairs`` kernel entries each.

    A :class:`Backend` instance is used as given; a registered name builds its backend;
    ``"auto"`` picks NumPy for small runs (where a KeOps compile would dominate) and when
    KeOps fails its probe, else KeOps.  The backend is checked (``ensure_ready``) before
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
        engine = _keops_for_auto()
    engine.ensure_ready()
    return engine
