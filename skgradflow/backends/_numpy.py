"""The NumPy backend: blockwise dense reductions with BLAS.

Never more than ``BLOCK_ROWS × BLOCK_COLS`` kernel entries exist at once.  It needs no
compiler, is the test oracle of the other backends, and is what ``backend="auto"`` picks for
small runs, where starting the Numba backend would cost more than it saves.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from ..kernels import Kernel
from ._protocol import Backend, check_log_domain_kernel

BLOCK_ROWS = 1024
BLOCK_COLS = 2048


def _narrow_matmul(K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``K @ V`` for a few columns: matrix-vector products, which BLAS runs several times
    faster than a matrix product with 2 or 3 columns."""
    if V.shape[1] > 4:
        return K @ V
    return np.stack([K @ V[:, j] for j in range(V.shape[1])], axis=1)


def _sq_dist_blocks(Zs: np.ndarray, Ss: np.ndarray):
    """Blocks ``(rows, cols, r2)`` of squared distances between the (scaled) points ``Zs``
    and sources ``Ss``, at most ``BLOCK_ROWS × BLOCK_COLS`` at a time, in their dtype.

    Distances come from differences (``cdist``), not from ``|z|² + |s|² - 2 z·s``: exact near
    ``r = 0``, as in KeOps, which the cusp kernels and the test tolerances need.
    """
    for r0 in range(0, Zs.shape[0], BLOCK_ROWS):
        rows = slice(r0, r0 + BLOCK_ROWS)
        for c0 in range(0, Ss.shape[0], BLOCK_COLS):
            cols = slice(c0, c0 + BLOCK_COLS)
            yield rows, cols, cdist(Zs[rows], Ss[cols], "sqeuclidean").astype(Zs.dtype, copy=False)


# --- the kernels, on NumPy arrays of squared scaled distances ----------------------------------
def kernel_value(kernel: Kernel, r2: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``κ(r2)``: the kernel as a function of the squared *scaled* distance.

    ``out`` (which may be ``r2`` itself) receives the result without a temporary array:
    on kernel blocks, writing into memory already in use is several times faster than
    allocating fresh arrays for each intermediate."""
    if out is None:
        out = np.empty_like(r2)
    if kernel.name == "gaussian":
        np.multiply(r2, -0.5, out=out)
        return np.exp(out, out=out)
    np.sqrt(r2, out=out) if kernel.name != "imq" else np.add(r2, 1.0, out=out)
    if kernel.name == "laplacian":
        np.negative(out, out=out)
        return np.exp(out, out=out)
    if kernel.name == "imq":
        np.sqrt(out, out=out)
        return np.reciprocal(out, out=out)
    return np.negative(out, out=out)


def grad_needs_r2(kernel: Kernel) -> bool:
    """Whether :func:`grad_factor` reads ``r2`` (the cusp kernels) or only ``κ``."""
    return kernel.name in ("laplacian", "energy")


def grad_factor(kernel: Kernel, r2: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``γ(r2)`` with ``∇_u κ(|u - v|²) = γ (u - v)``; ``k`` is ``κ(r2)``, reused.

    The Laplacian and energy kernels have a cusp at ``r = 0``; their gradient is taken
    to be 0 there (the value KeOps' ``rsqrt(0) = 0`` gives).
    """
    if kernel.name == "gaussian":
        return -k
    if kernel.name == "imq":
        return -(k**3)
    with np.errstate(divide="ignore"):
        inv_r = np.where(r2 > 0, 1.0 / np.sqrt(np.where(r2 > 0, r2, 1.0)), 0.0)
    inv_r = inv_r.astype(r2.dtype, copy=False)
    return -k * inv_r if kernel.name == "laplacian" else -inv_r


class NumpyBackend(Backend):
    """Blockwise dense reductions with BLAS: no compiler, memory ``O(n + m)`` plus one block.

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow import IFTSampler
    >>> from skgradflow.backends import NumpyBackend
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> IFTSampler(n_particles=20, max_iter=5, tol=0, backend=NumpyBackend()).fit(X).backend_
    'numpy'
    """

    name = "numpy"

    def matvec(self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray) -> np.ndarray:
        h = kernel.scale
        out = np.zeros((Z.shape[0], V.shape[1]), dtype=Z.dtype)
        for rows, cols, r2 in _sq_dist_blocks(Z / h, S / h):
            # the block is ours: the kernel overwrites it
            out[rows] += _narrow_matmul(kernel_value(kernel, r2, out=r2), V[cols])
        return out

    def value_grad(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray, a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        h = kernel.scale
        Zs, Ss = Z / h, S / h
        a = a.reshape(-1)
        val = np.zeros((Z.shape[0], V.shape[1]), dtype=Z.dtype)
        grad = np.zeros_like(Z)
        for rows, cols, r2 in _sq_dist_blocks(Zs, Ss):
            K = kernel_value(kernel, r2, out=None if grad_needs_r2(kernel) else r2)
            val[rows] += _narrow_matmul(K, V[cols])
            Ga = grad_factor(kernel, r2, K) * a[cols]
            # Σ_j γ_ij a_j (u_i - v_j) = u_i Σ_j γ_ij a_j - Σ_j γ_ij a_j v_j, with BLAS
            grad[rows] += Zs[rows] * Ga.sum(axis=1, keepdims=True) - Ga @ Ss[cols]
        return val, grad / h

    def logsumexp(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, logv: np.ndarray
    ) -> np.ndarray:
        """Streamed over blocks of sources with a running maximum."""
        check_log_domain_kernel(kernel)
        h = kernel.scale
        top = np.full(Z.shape[0], -np.inf, dtype=Z.dtype)
        total = np.zeros_like(top)
        for rows, cols, r2 in _sq_dist_blocks(Z / h, S / h):
            A = logv[cols][None, :] - 0.5 * r2
            new_top = np.maximum(top[rows], A.max(axis=1))
            total[rows] = total[rows] * np.exp(top[rows] - new_top) + np.exp(
                A - new_top[:, None]
            ).sum(axis=1)
            top[rows] = new_top
        return top + np.log(total)

    def softmax_moments(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        check_log_domain_kernel(kernel)
        h = kernel.scale
        mass = np.zeros(Z.shape[0], dtype=Z.dtype)
        first = np.zeros_like(Z)
        for rows, cols, r2 in _sq_dist_blocks(Z / h, S / h):
            E = np.exp(c[cols][None, :] - 0.5 * r2)
            row_mass = E.sum(axis=1)
            mass[rows] += row_mass
            first[rows] += E @ S[cols] - Z[rows] * row_mass[:, None]
        return mass, first
