"""The KeOps backend: PyKeOps LazyTensor reductions, one fused kernel pass per call, memory
linear in the number of points, on the CPU or a GPU.

PyKeOps is imported only after the probe of :mod:`._keops_probe` has shown, in a child
process, that it compiles and runs here; with libstdc++ loaded globally first.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import warnings
from typing import Any

import numpy as np

from ..kernels import Kernel
from ._keops_probe import (
    NOT_INSTALLED,
    cache_dir,
    keops_status,
    notice_if_slow,
    preload_libstdcxx,
    remove_unreadable_keops_caches,
    warn_repaired,
)
from ._protocol import Backend, check_log_domain_kernel

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; compiles are not guarded
    fcntl = None

# KeOps compiles one formula per (kernel, dimension, dtype, channel count).  Padding the
# weight channels to fixed widths keeps that count at two formulas per kernel.
MATVEC_WIDTH = 3
VALUE_GRAD_WIDTH = 3

DEVICES = ("auto", "cpu", "gpu")

# The shaped reductions carry a d × d factor per atom and, for the second moments, d² output
# channels: above this dimension the blocked NumPy (BLAS) of the Backend base class was
# faster on a CPU (benchmarks page, "Shaped reductions"), so they stay with it.
SHAPED_MAX_DIM = 8


# --- the kernels, as KeOps formulas on LazyTensors of squared scaled distances --------------
def keops_value(kernel: Kernel, r2: Any) -> Any:
    """``κ`` on a KeOps LazyTensor of squared scaled distances."""
    if kernel.name == "gaussian":
        return (-0.5 * r2).exp()
    if kernel.name == "laplacian":
        return (-(r2.sqrt())).exp()
    if kernel.name == "imq":
        return (1.0 + r2).rsqrt()
    return -(r2.sqrt())


def keops_value_and_grad(kernel: Kernel, r2: Any, v: Any, aD: Any) -> Any:
    """The summand ``[κ v_j, γ a_j (u_i - v_j)]`` on KeOps LazyTensors.

    KeOps does not share subexpressions between the parts of a formula, so the
    exponential is factored out and evaluated once per pair: ``κ [v_j, (γ/κ) a_j D]``.
    """
    if kernel.name == "gaussian":
        return keops_value(kernel, r2) * v.concat(-aD)
    if kernel.name == "laplacian":
        return keops_value(kernel, r2) * v.concat(-(r2.rsqrt()) * aD)
    if kernel.name == "imq":
        inv = 1.0 / (1.0 + r2)
        return inv.sqrt() * v.concat(-inv * aD)
    return (-(r2.sqrt()) * v).concat(-(r2.rsqrt()) * aD)


class KeOpsUnavailableError(RuntimeError):
    """KeOps cannot run here (the probe failed or crashed); the message says why and what
    to do."""


def unavailable_message(device: str = "auto") -> str:
    """Why KeOps cannot serve ``device`` here, and the fix."""
    status = keops_status()
    where = {"gpu": "on the GPU", "cpu": "on the CPU"}.get(device, "on this machine")
    if status.cause == NOT_INSTALLED:
        return (f"KeOps cannot run {where}: {NOT_INSTALLED}. Fix: pip install pykeops; or "
                "use backend='numpy'.")
    return (
        f"KeOps cannot run {where}: {status.cause or 'no GPU is visible to KeOps'}. "
        "The check ran in a child process, so this process is unharmed. Fix: install a C++ "
        "compiler (and, for the GPU, a CUDA toolkit that KeOps supports), then remove the "
        f"probe record in {cache_dir()} to check again; or use backend='numpy'."
    )


def _import_pykeops():
    """Import PyKeOps quietly, libstdc++ loaded first."""
    if "pykeops" not in sys.modules:
        preload_libstdcxx()
        # KeOps' messages (compiles, "CUDA libraries not found") would interleave with the
        # estimators' own output; PYKEOPS_VERBOSE=1 brings them back.
        os.environ.setdefault("PYKEOPS_VERBOSE", "0")
        os.environ.setdefault("KEOPS_VERBOSE", os.environ["PYKEOPS_VERBOSE"])
    try:
        import pykeops
        from pykeops.numpy import LazyTensor
    except Exception:
        # a cache file of the build folder left unreadable after the probe passed
        removed = remove_unreadable_keops_caches()
        if not removed:
            raise
        warn_repaired(removed)
        import pykeops
        from pykeops.numpy import LazyTensor

    if os.environ.get("PYKEOPS_VERBOSE") != "1":
        pykeops.set_verbose(False)
    return LazyTensor


class KeOpsBackend(Backend):
    """PyKeOps LazyTensor reductions: one fused pass over the pairs per call.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"}, default="auto"
        ``"auto"``: the GPU when KeOps runs there, else the CPU.  An explicit device that
        KeOps cannot use raises :class:`KeOpsUnavailableError`.

    Notes
    -----
    Whether KeOps works is decided once per environment by a probe in a child process
    (see :func:`skgradflow.backends.keops_status`), so that a KeOps crash, as seen at the
    first GPU compile under CUDA 13, never reaches this process.

    Examples
    --------
    >>> from skgradflow.backends import KeOpsBackend
    >>> KeOpsBackend(device="cpu")
    KeOpsBackend(device='cpu')
    """

    name = "keops"

    def __init__(self, device: str = "auto") -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {device!r}.")
        self.device_request = device

    def __repr__(self) -> str:
        return f"KeOpsBackend(device={self.device_request!r})"

    def _where(self) -> str:
        """``"GPU"`` or ``"CPU"``, as KeOps' ``backend=`` option spells it."""
        status = keops_status()
        want = self.device_request
        if want == "gpu" and not status.gpu:
            raise KeOpsUnavailableError(unavailable_message("gpu"))
        if want == "cpu" and not status.cpu:
            raise KeOpsUnavailableError(unavailable_message("cpu"))
        if want == "auto" and not status.usable:
            raise KeOpsUnavailableError(unavailable_message("auto"))
        return "GPU" if want == "gpu" or (want == "auto" and status.gpu) else "CPU"

    @property
    def device(self) -> str:
        return f"keops-{self._where().lower()}"

    def ensure_ready(self) -> None:
        self._where()

    # --- helpers ----------------------------------------------------------------------
    @staticmethod
    def _pad(V: np.ndarray, width: int) -> np.ndarray:
        if V.shape[1] >= width:
            return np.ascontiguousarray(V)
        out = np.zeros((V.shape[0], width), dtype=V.dtype)
        out[:, : V.shape[1]] = V
        return out

    def _reduce(self, lazy: Any, dtype: np.dtype, key: tuple, where: str) -> np.ndarray:
        # Long float32 sums lose digits: Kahan summation keeps them within 1e-4 of float64.
        scheme = "kahan_scheme" if dtype == np.float32 else "block_sum"
        return _run_keops(lambda: lazy.sum(1, sum_scheme=scheme, backend=where), key + (where,))

    @staticmethod
    def _pairs(LazyTensor, kernel: Kernel, Z: np.ndarray, S: np.ndarray):
        h = kernel.scale
        zi = LazyTensor(np.ascontiguousarray(Z / h)[:, None, :])
        sj = LazyTensor(np.ascontiguousarray(S / h)[None, :, :])
        D = zi - sj
        return D, (D**2).sum(-1)

    @staticmethod
    def _column(LazyTensor, v: np.ndarray):
        return LazyTensor(np.ascontiguousarray(v.reshape(-1, 1))[None, :, :])

    # --- the reductions ---------------------------------------------------------------
    def matvec(self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray) -> np.ndarray:
        where = self._where()
        LazyTensor = _import_pykeops()
        p = V.shape[1]
        _, r2 = self._pairs(LazyTensor, kernel, Z, S)
        vj = LazyTensor(self._pad(V, MATVEC_WIDTH)[None, :, :])
        key = ("matvec", kernel.name, Z.shape[1], Z.dtype.str)
        return self._reduce(keops_value(kernel, r2) * vj, Z.dtype, key, where)[:, :p]

    def value_grad(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray, a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        where = self._where()
        LazyTensor = _import_pykeops()
        p, d = V.shape[1], Z.shape[1]
        D, r2 = self._pairs(LazyTensor, kernel, Z, S)
        vj = LazyTensor(self._pad(V, VALUE_GRAD_WIDTH)[None, :, :])
        aj = self._column(LazyTensor, a)
        key = ("value_grad", kernel.name, d, Z.dtype.str)
        out = self._reduce(keops_value_and_grad(kernel, r2, vj, aj * D), Z.dtype, key, where)
        width = max(p, VALUE_GRAD_WIDTH)
        return out[:, :p], out[:, width:] / kernel.scale

    def logsumexp(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, logv: np.ndarray
    ) -> np.ndarray:
        """A KeOps LogSumExp reduction."""
        check_log_domain_kernel(kernel)
        where = self._where()
        LazyTensor = _import_pykeops()
        _, r2 = self._pairs(LazyTensor, kernel, Z, S)
        vj = self._column(LazyTensor, logv)
        key = ("logsumexp", Z.shape[1], Z.dtype.str, where)
        return _run_keops(lambda: (vj - 0.5 * r2).logsumexp(1, backend=where)[:, 0], key)

    def softmax_moments(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One reduction, one exponential per pair: ``E [1, s_j - z_i]``."""
        check_log_domain_kernel(kernel)
        where = self._where()
        LazyTensor = _import_pykeops()
        D, r2 = self._pairs(LazyTensor, kernel, Z, S)
        cj = self._column(LazyTensor, c)
        ones = LazyTensor(np.ones((S.shape[0], 1), dtype=Z.dtype)[None, :, :])
        key = ("softmax_moments", Z.shape[1], Z.dtype.str)
        out = self._reduce((cj - 0.5 * r2).exp() * ones.concat(-D), Z.dtype, key, where)
        # the reduction ran in coordinates divided by h
        return out[:, 0], out[:, 1:] * kernel.scale


    # --- per-atom Gaussian shapes ----------------------------------------------------------
    @staticmethod
    def _shaped(LazyTensor, Z: np.ndarray, S: np.ndarray, P: np.ndarray, on_points: bool):
        """``r = s_j - z_i`` and ``|P_kᵀ r|²`` with ``P_k`` the factor of point ``i``
        (``on_points``) or of source ``j``, as KeOps variables (the factor flattened as
        ``P_kᵀ``, which ``matvecmult`` multiplies into ``r``)."""
        d = Z.shape[1]
        Pt = np.ascontiguousarray(np.swapaxes(P, 1, 2).reshape(P.shape[0], d * d))
        zi = LazyTensor(np.ascontiguousarray(Z)[:, None, :])
        sj = LazyTensor(np.ascontiguousarray(S)[None, :, :])
        Pk = LazyTensor(Pt[:, None, :] if on_points else Pt[None, :, :])
        r = sj - zi
        return r, (Pk.matvecmult(r) ** 2).sum(-1)

    def _per_source_logsumexp(
        self, Z: np.ndarray, S: np.ndarray, P: np.ndarray, logv: np.ndarray
    ) -> np.ndarray:
        """A KeOps LogSumExp over Gaussians of their own shape (blocked NumPy above
        ``SHAPED_MAX_DIM`` dimensions)."""
        d = Z.shape[1]
        if d > SHAPED_MAX_DIM:
            return super()._per_source_logsumexp(Z, S, P, logv)
        where = self._where()
        LazyTensor = _import_pykeops()
        _, q = self._shaped(LazyTensor, Z, S, P.astype(Z.dtype), on_points=False)
        vj = self._column(LazyTensor, logv.astype(Z.dtype))
        key = ("shaped_logsumexp", d, Z.dtype.str, where)
        return _run_keops(lambda: (vj - 0.5 * q).logsumexp(1, backend=where)[:, 0], key)

    def _per_point_moments(
        self, Z: np.ndarray, P: np.ndarray, a: np.ndarray, S: np.ndarray, c: np.ndarray,
        second: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One KeOps reduction, one exponential per pair: ``E [1, r, r ⊗ r]`` (``E [1, r]``
        with ``second=False``); blocked NumPy above ``SHAPED_MAX_DIM`` dimensions."""
        n, d = Z.shape
        if d > SHAPED_MAX_DIM:
            return super()._per_point_moments(Z, P, a, S, c, second)
        where = self._where()
        LazyTensor = _import_pykeops()
        r, q = self._shaped(LazyTensor, Z, S, P.astype(Z.dtype), on_points=True)
        ai = LazyTensor(np.ascontiguousarray(a.astype(Z.dtype).reshape(-1, 1))[:, None, :])
        cj = self._column(LazyTensor, c.astype(Z.dtype))
        ones = LazyTensor(np.ones((S.shape[0], 1), dtype=Z.dtype)[None, :, :])
        channels = ones.concat(r)
        if second:
            channels = channels.concat(r.tensorprod(r))
        key = ("shaped_moments", second, d, Z.dtype.str)
        out = self._reduce((ai + cj - 0.5 * q).exp() * channels, Z.dtype, key, where)
        mass, first = out[:, 0], out[:, 1:d + 1]
        return mass, first, out[:, d + 1:].reshape(n, d, d) if second else None


# --- parallel compiles ------------------------------------------------------------------
# Older KeOps raced when several processes compiled the same new formula into one cache
# folder (getkeops/keops#168), which is what GridSearchCV(n_jobs=2) does on a cold cache.
# The first call of each formula in a process therefore holds an inter-process file lock;
# later calls, compiled or loaded from the cache, run without it.
_seen_formulas: set[tuple] = set()
_seen_lock = threading.Lock()


def _lock_path() -> str:
    try:
        import pykeops

        folder = pykeops.get_build_folder()
    except Exception:  # pragma: no cover - depends on the KeOps install
        folder = tempfile.gettempdir()
    return os.path.join(folder, ".skgradflow-compile.lock")


@contextlib.contextmanager
def _compile_guard(key: tuple):
    with _seen_lock:
        first = key not in _seen_formulas
    if not first or fcntl is None:
        yield
        return
    path = _lock_path()
    # the build folder may not exist yet (a fresh KEOPS_CACHE_FOLDER) or have been removed
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            with notice_if_slow("compile", "compiling KeOps formulas, once per machine "
                                "(about 10 s each on a CPU)..."):
                yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    with _seen_lock:
        _seen_formulas.add(key)


def _run_keops(call, key: tuple) -> np.ndarray:
    """Run a KeOps reduction; the first call of a formula in a process is guarded.

    A compile that was interrupted, or a build folder changed at run time, can leave cache
    entries that KeOps loads without rebuilding, and then fails to import: the cache is
    cleared once and the formula compiled afresh.
    """
    with _compile_guard(key):
        try:
            return call()
        except ImportError as exc:
            import pykeops

            warnings.warn(
                f"The KeOps cache in {pykeops.get_build_folder()} is broken ({exc}); "
                "clearing it and compiling again.",
                RuntimeWarning,
                stacklevel=4,
            )
            pykeops.clean_pykeops()
            return call()
