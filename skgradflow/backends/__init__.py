"""Backends: the engines that evaluate the kernel reductions of every flow.

The protocol is :class:`Backend` (four reductions over explicit arrays, and :meth:`~Backend.bind`,
which hands a run's targets to the engine once) and :class:`Targets` (the reductions over
those bound targets).  Estimators take ``backend=`` as a registered name
(:func:`backend_names`) or a ready-made instance, and report where the run went in
``backend_`` (``"numpy"``, ``"keops-cpu"``, ``"keops-gpu"``).

Examples
--------
>>> import numpy as np
>>> from skgradflow import IFTSampler
>>> from skgradflow.backends import NumpyBackend
>>> X = np.random.default_rng(0).normal(size=(100, 2))
>>> IFTSampler(n_particles=20, max_iter=5, tol=0, backend=NumpyBackend()).fit(X).backend_
'numpy'
"""

from ._keops import KeOpsBackend, KeOpsUnavailableError
from ._keops_probe import KeOpsStatus, keops_status
from ._numpy import NumpyBackend
from ._protocol import LOG_TINY, Backend, HostTargets, Targets
from ._registry import (
    AUTO_KEOPS_MIN_WORK,
    BACKEND_NAMES,
    backend_names,
    check_backend,
    register_backend,
    resolve_backend,
)

__all__ = [
    "AUTO_KEOPS_MIN_WORK",
    "BACKEND_NAMES",
    "LOG_TINY",
    "Backend",
    "HostTargets",
    "KeOpsBackend",
    "KeOpsStatus",
    "KeOpsUnavailableError",
    "NumpyBackend",
    "Targets",
    "backend_names",
    "check_backend",
    "keops_status",
    "register_backend",
    "resolve_backend",
]
