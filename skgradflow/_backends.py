"""The kernel reductions the flows are made of, on NumPy and on KeOps.

A flow needs two reductions, both sums over *sources* ``s_j`` evaluated at *points*
``z_i``:

- ``matvec(Z, S, V)``: ``Σ_j k(z_i, s_j) V_j`` for a block of ``p`` weight channels;
- ``value_grad(Z, S, V, a)``: the same, fused with ``Σ_j a_j ∇_z k(z_i, s_j)``.

Everything a flow does (the witness and its gradient, the MMD-prox matrix-vector products,
the constant of the energy, the metrics) goes through these two calls, so that a backend is
two functions and a distributed engine can shard the sum over sources without touching the
flows.  The NumPy backend is blockwise dense (never more than ``_BLOCK_ROWS × _BLOCK_COLS``
kernel entries at once) and serves as the test oracle and the no-compiler fallback.  The
KeOps backend builds LazyTensors: memory ``O((n + m) d)``.  When KeOps runs on a GPU, the
NumPy binding moves the arrays to the device and back in every call, an ``O(n + m)``
transfer against ``O(n m)`` work.
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
from scipy.spatial.distance import cdist

from .kernels import Kernel

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; compiles are not guarded
    fcntl = None

BACKENDS = ("auto", "keops", "numpy")

# "auto" uses NumPy below this many kernel entries over a whole run: a few seconds of work,
# which a cold KeOps compile (about 10 s for a flow's formulas, once per machine and
# dimension) would dominate.  Measured on 2 CPU cores: the blockwise NumPy backend evaluates
# 1-3·10⁸ Gaussian kernel entries a second, KeOps 1.1-1.7x that in d = 2 and about as many in
# d = 10; KeOps' gains are its linear memory, and far more on a GPU.
AUTO_KEOPS_MIN_WORK = 500_000_000

_BLOCK_ROWS = 1024
_BLOCK_COLS = 2048

# KeOps compiles one formula per (kernel, dimension, dtype, channel count).  Padding the
# weight channels to fixed widths keeps that count at two formulas per kernel.
_MATVEC_WIDTH = 3
_VALUE_GRAD_WIDTH = 3


def _narrow_matmul(K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``K @ V`` for a few columns: matrix-vector products, which BLAS runs several times
    faster than a matrix product with 2 or 3 columns."""
    if V.shape[1] > 4:
        return K @ V
    return np.stack([K @ V[:, j] for j in range(V.shape[1])], axis=1)


def _sq_dist_blocks(Z: np.ndarray, S: np.ndarray, h: float):
    """Blocks ``(rows, cols, r2)`` of squared distances between ``Z / h`` and ``S / h``,
    at most ``_BLOCK_ROWS × _BLOCK_COLS`` at a time, in the dtype of ``Z``.

    Distances come from differences (``cdist``), not from ``|z|² + |s|² - 2 z·s``: exact near
    ``r = 0``, as in KeOps, which the cusp kernels and the test tolerances need.
    """
    Zs, Ss = Z / h, S / h
    for r0 in range(0, Z.shape[0], _BLOCK_ROWS):
        rows = slice(r0, r0 + _BLOCK_ROWS)
        for c0 in range(0, S.shape[0], _BLOCK_COLS):
            cols = slice(c0, c0 + _BLOCK_COLS)
            yield rows, cols, cdist(Zs[rows], Ss[cols], "sqeuclidean").astype(Z.dtype, copy=False)


class NumpyBackend:
    """Blockwise dense reductions with BLAS."""

    name = "numpy"

    def matvec(self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray) -> np.ndarray:
        out = np.zeros((Z.shape[0], V.shape[1]), dtype=Z.dtype)
        for rows, cols, r2 in _sq_dist_blocks(Z, S, kernel.scale):
            out[rows] += _narrow_matmul(kernel.value(r2), V[cols])
        return out

    def value_grad(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray, a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        h = kernel.scale
        Zs, Ss = Z / h, S / h
        a = a.reshape(-1)
        val = np.zeros((Z.shape[0], V.shape[1]), dtype=Z.dtype)
        grad = np.zeros_like(Z)
        for rows, cols, r2 in _sq_dist_blocks(Z, S, h):
            K = kernel.value(r2)
            val[rows] += _narrow_matmul(K, V[cols])
            Ga = kernel.grad_factor(r2, K) * a[cols]
            # Σ_j γ_ij a_j (u_i - v_j) = u_i Σ_j γ_ij a_j - Σ_j γ_ij a_j v_j, with BLAS
            grad[rows] += Zs[rows] * Ga.sum(axis=1, keepdims=True) - Ga @ Ss[cols]
        return val, grad / h

    def gaussian_logsumexp(self, h: float, Z: np.ndarray, S: np.ndarray, logv: np.ndarray):
        """``log Σ_j exp(logv_j - |z_i - s_j|² / (2h²))``, streamed over blocks of sources
        with a running maximum."""
        top = np.full(Z.shape[0], -np.inf, dtype=Z.dtype)
        total = np.zeros_like(top)
        for rows, cols, r2 in _sq_dist_blocks(Z, S, h):
            A = logv[cols][None, :] - 0.5 * r2
            new_top = np.maximum(top[rows], A.max(axis=1))
            total[rows] = total[rows] * np.exp(top[rows] - new_top) + np.exp(
                A - new_top[:, None]
            ).sum(axis=1)
            top[rows] = new_top
        return top + np.log(total)

    def gaussian_softmax_moments(self, h: float, Z: np.ndarray, S: np.ndarray, c: np.ndarray):
        """``E_ij = exp(c_j - |z_i - s_j|² / (2h²))``: returns ``Σ_j E_ij`` and
        ``Σ_j E_ij (s_j - z_i)``."""
        mass = np.zeros(Z.shape[0], dtype=Z.dtype)
        first = np.zeros_like(Z)
        for rows, cols, r2 in _sq_dist_blocks(Z, S, h):
            E = np.exp(c[cols][None, :] - 0.5 * r2)
            row_mass = E.sum(axis=1)
            mass[rows] += row_mass
            first[rows] += E @ S[cols] - Z[rows] * row_mass[:, None]
        return mass, first


class KeOpsBackend:
    """PyKeOps LazyTensor reductions: one fused kernel pass per call, linear memory."""

    name = "keops"

    def __init__(self) -> None:
        # KeOps' messages (compiles, "CUDA libraries not found" at import) would interleave
        # with the estimators' own output; PYKEOPS_VERBOSE=1 brings them back.
        if "pykeops" not in sys.modules:
            os.environ.setdefault("PYKEOPS_VERBOSE", "0")
            os.environ.setdefault("KEOPS_VERBOSE", os.environ["PYKEOPS_VERBOSE"])
        import pykeops
        from pykeops.numpy import LazyTensor  # noqa: F401  (fail early if unavailable)

        if os.environ.get("PYKEOPS_VERBOSE") != "1":
            pykeops.set_verbose(False)

    @staticmethod
    def _pad(V: np.ndarray, width: int) -> np.ndarray:
        if V.shape[1] >= width:
            return np.ascontiguousarray(V)
        out = np.zeros((V.shape[0], width), dtype=V.dtype)
        out[:, : V.shape[1]] = V
        return out

    @staticmethod
    def _reduce(lazy: Any, dtype: np.dtype, key: tuple) -> np.ndarray:
        # Long float32 sums lose digits: Kahan summation keeps them within 1e-4 of float64.
        scheme = "kahan_scheme" if dtype == np.float32 else "block_sum"
        return _run_keops(lambda: lazy.sum(1, sum_scheme=scheme), key)

    def _pairs(self, kernel: Kernel, Z: np.ndarray, S: np.ndarray):
        from pykeops.numpy import LazyTensor

        h = kernel.scale
        zi = LazyTensor(np.ascontiguousarray(Z / h)[:, None, :])
        sj = LazyTensor(np.ascontiguousarray(S / h)[None, :, :])
        D = zi - sj
        r2 = (D**2).sum(-1)
        return D, r2

    def matvec(self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray) -> np.ndarray:
        from pykeops.numpy import LazyTensor

        p = V.shape[1]
        _, r2 = self._pairs(kernel, Z, S)
        K = kernel.keops_value(r2)
        vj = LazyTensor(self._pad(V, _MATVEC_WIDTH)[None, :, :])
        key = ("matvec", kernel.name, Z.shape[1], Z.dtype.str)
        return self._reduce(K * vj, Z.dtype, key)[:, :p]

    def value_grad(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray, a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        from pykeops.numpy import LazyTensor

        p, d = V.shape[1], Z.shape[1]
        D, r2 = self._pairs(kernel, Z, S)
        vj = LazyTensor(self._pad(V, _VALUE_GRAD_WIDTH)[None, :, :])
        aj = LazyTensor(np.ascontiguousarray(a.reshape(-1, 1))[None, :, :])
        key = ("value_grad", kernel.name, d, Z.dtype.str)
        out = self._reduce(kernel.keops_value_and_grad(r2, vj, aj * D), Z.dtype, key)
        width = max(p, _VALUE_GRAD_WIDTH)
        return out[:, :p], out[:, width:] / kernel.scale

    def gaussian_logsumexp(self, h: float, Z: np.ndarray, S: np.ndarray, logv: np.ndarray):
        """``log Σ_j exp(logv_j - |z_i - s_j|² / (2h²))`` by a KeOps LogSumExp reduction."""
        from pykeops.numpy import LazyTensor

        _, r2 = self._pairs(Kernel("gaussian", h), Z, S)
        vj = LazyTensor(np.ascontiguousarray(logv.reshape(-1, 1))[None, :, :])
        key = ("logsumexp", Z.shape[1], Z.dtype.str)
        return _run_keops(lambda: (vj - 0.5 * r2).logsumexp(1)[:, 0], key)

    def gaussian_softmax_moments(self, h: float, Z: np.ndarray, S: np.ndarray, c: np.ndarray):
        """``E_ij = exp(c_j - |z_i - s_j|² / (2h²))``: ``Σ_j E_ij`` and ``Σ_j E_ij (s_j - z_i)``,
        in one reduction."""
        from pykeops.numpy import LazyTensor

        D, r2 = self._pairs(Kernel("gaussian", h), Z, S)
        cj = LazyTensor(np.ascontiguousarray(c.reshape(-1, 1))[None, :, :])
        ones = LazyTensor(np.ones((S.shape[0], 1), dtype=Z.dtype)[None, :, :])
        # one exponential per pair: E [1, s_j - z_i]
        key = ("softmax_moments", Z.shape[1], Z.dtype.str)
        out = self._reduce((cj - 0.5 * r2).exp() * ones.concat(-D), Z.dtype, key)
        # the reduction ran in coordinates divided by h
        return out[:, 0], out[:, 1:] * h


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


_keops_status: dict[str, Any] = {}


def keops_available() -> bool:
    """Whether PyKeOps imports and can compile and run a formula on this machine."""
    if "ok" not in _keops_status:
        try:
            backend = KeOpsBackend()
            x = np.zeros((2, 1))
            backend.matvec(Kernel("gaussian"), x, x, np.ones((2, 1)))
            _keops_status["ok"] = True
        except Exception as exc:  # pragma: no cover - depends on the machine
            _keops_status["ok"] = False
            _keops_status["error"] = repr(exc)
    return _keops_status["ok"]


def get_backend(backend: str, n_pairs: int, n_calls: int = 1) -> NumpyBackend | KeOpsBackend:
    """Resolve ``backend`` for ``n_calls`` reductions of about ``n_pairs`` kernel entries.

    ``"auto"`` picks NumPy for small runs and when KeOps cannot compile here.
    """
    if backend == "numpy":
        return NumpyBackend()
    if backend == "keops":
        return KeOpsBackend()
    if n_pairs * n_calls < AUTO_KEOPS_MIN_WORK:
        return NumpyBackend()
    if not keops_available():
        warnings.warn(
            "backend='auto': KeOps is unavailable on this machine "
            f"({_keops_status.get('error')}); using the NumPy backend.",
            RuntimeWarning,
            stacklevel=3,
        )
        return NumpyBackend()
    return KeOpsBackend()
