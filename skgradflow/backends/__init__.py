"""Backends: the engines that evaluate the kernel reductions of every flow.

The protocol is :class:`Backend` (four reductions over explicit arrays, and :meth:`~Backend.bind`,
which hands a run's targets to the engine once) and :class:`Targets` (the reductions over
those bound targets).  Estimators take ``backend=`` as a registered name
(:func:`backend_names`) or a ready-made instance, and report where the run went in
``backend_`` (``"numpy"``, ``"numba-cpu"``, ``"keops-cpu"``, ``"keops-gpu"``, ``"dask"``).
:class:`DaskBackend` keeps the targets in chunks on the workers of a Dask cluster.

Examples
--------
>>> from skgradflow.backends import backend_names, resolve_backend
>>> backend_names()[:3]
('auto', 'dask', 'keops')
>>> resolve_backend("auto", n_pairs=10_000).device  # small work: NumPy, no KeOps compile
'numpy'
"""

from ._dask import DaskBackend, DaskTargets, DaskUnavailableError, dask_installed
from ._keops import KeOpsBackend, KeOpsUnavailableError
from ._keops_probe import KeOpsStatus, keops_status
from ._numba import NumbaBackend, NumbaUnavailableError, default_threads, numba_installed
from ._numpy import NumpyBackend
from ._protocol import LOG_TINY, Backend, HostTargets, Targets
from ._registry import (
    AUTO_KEOPS_MIN_WORK,
    BACKEND_NAMES,
    backend_names,
    check_backend,
    gpu_possible,
    register_backend,
    resolve_backend,
)

__all__ = [
    "AUTO_KEOPS_MIN_WORK",
    "BACKEND_NAMES",
    "LOG_TINY",
    "Backend",
    "DaskBackend",
    "DaskTargets",
    "DaskUnavailableError",
    "HostTargets",
    "KeOpsBackend",
    "KeOpsStatus",
    "KeOpsUnavailableError",
    "NumbaBackend",
    "NumbaUnavailableError",
    "NumpyBackend",
    "Targets",
    "backend_names",
    "check_backend",
    "dask_installed",
    "default_threads",
    "gpu_possible",
    "keops_status",
    "numba_installed",
    "register_backend",
    "resolve_backend",
]
