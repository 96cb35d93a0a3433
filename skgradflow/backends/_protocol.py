"""The backend protocol: the reductions every flow is made of, and the targets a backend
holds for one run.

A *backend* evaluates kernel sums ``Σ_j k(z_i, s_j) (...)`` of *points* ``z_i`` against
*sources* ``s_j``.  It answers four reductions over explicit arrays (:class:`Backend`) and
binds the targets of a run once (:meth:`Backend.bind`), after which every reduction over the
targets passes only the particles (:class:`Targets`).  A reduction over the sources
``[x; y]`` of a flow is therefore a reduction over the particle block plus one over the
bound target block, and an engine that keeps the targets elsewhere (device memory, the
workers of a cluster) receives them once per run, not once per iteration.

Shapes and dtypes, for every method: ``n`` points and ``m`` sources in ``d`` dimensions,
``Z`` of shape ``(n, d)`` and ``S`` of shape ``(m, d)`` in one floating dtype (float32 or
float64), per-source arrays in that dtype too; results come back in that dtype, except where
a method says float64.  The ``Kernel`` carries the bandwidth: backends evaluate the kernel in
coordinates divided by ``kernel.scale``, so that one compiled formula serves every bandwidth.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..kernels import Kernel

# log of the smallest weight passed to a log-domain reduction: a zero weight stays (almost)
# zero without -inf entering a compiled formula.
LOG_TINY = -690.0
# entries of the (points, sources, features) block of the default shaped reductions
_SHAPED_BLOCK = 1 << 22


def check_log_domain_kernel(kernel: Kernel) -> None:
    """The log-domain reductions are written for the Gaussian kernel only."""
    if kernel.name != "gaussian":
        raise ValueError(
            "the log-domain reductions (logsumexp, softmax_moments) need "
            f"kernel='gaussian'; got {kernel.name!r}."
        )


class Backend(ABC):
    """An engine for the kernel reductions of the flows.

    Subclasses implement the four reductions below; :meth:`bind` returns targets held in
    host memory (:class:`HostTargets`), which in-memory engines inherit as is.  A backend
    instance holds configuration only (a device, a client), never the data of a run, so
    one instance may serve several estimators, ``clone`` and ``pickle``.

    Attributes
    ----------
    name : str
        The name it is registered under (see :func:`skgradflow.backends.register_backend`).

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.backends import NumpyBackend
    >>> from skgradflow.kernels import Kernel
    >>> be = NumpyBackend()
    >>> Z = np.zeros((1, 2))
    >>> S = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> be.matvec(Kernel("energy"), Z, S, np.ones((2, 1)))  # Σ_j -|z - s_j|
    array([[-5.]])
    """

    name: str = ""

    @property
    def device(self) -> str:
        """Where the reductions run, as the estimators report it in ``backend_``
        (``"numpy"``, ``"numba-cpu"``, ``"keops-cpu"``, ``"keops-gpu"``, ...)."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def ensure_ready(self) -> None:
        """Raise a clear error now if this backend cannot run here (nothing by default);
        called once when a run is set up, before any data is bound."""
        return None

    def __eq__(self, other: object) -> bool:
        # configuration only: two backends of one class and settings are interchangeable
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash(type(self))

    # --- the four reductions over explicit sources --------------------------------------
    @abstractmethod
    def matvec(self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray) -> np.ndarray:
        """``out_i = Σ_j k(z_i, s_j) V_j``.

        ``V`` has shape ``(m, p)``: ``p`` weight channels (a few); returns ``(n, p)``.
        """

    @abstractmethod
    def value_grad(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, V: np.ndarray, a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``Σ_j k(z_i, s_j) V_j`` fused with ``Σ_j a_j ∇_z k(z_i, s_j)``.

        ``V`` has shape ``(m, p)``, ``a`` shape ``(m,)``; returns ``(n, p)`` and ``(n, d)``.
        The gradient of the cusp kernels (Laplacian, energy) is 0 where ``z_i = s_j``.
        """

    @abstractmethod
    def logsumexp(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, logv: np.ndarray
    ) -> np.ndarray:
        """``log Σ_j exp(logv_j) k(z_i, s_j)`` for the Gaussian kernel, i.e.
        ``log Σ_j exp(logv_j - |z_i - s_j|² / (2h²))``, stable in any dimension.

        ``logv`` has shape ``(m,)`` (finite; use ``LOG_TINY`` for zero weights); returns
        ``(n,)``.
        """

    @abstractmethod
    def softmax_moments(
        self, kernel: Kernel, Z: np.ndarray, S: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """With ``E_ij = exp(c_j - |z_i - s_j|² / (2h²))`` (Gaussian kernel): the mass
        ``Σ_j E_ij``, shape ``(n,)``, and the first moment ``Σ_j E_ij (s_j - z_i)``, shape
        ``(n, d)``.  ``c`` has shape ``(m,)``; ``-inf`` entries contribute exactly 0.
        """

    # --- per-source Gaussian shapes (concrete: dense, blocked NumPy) -------------------
    def shaped_logsumexp(
        self, Z: np.ndarray, S: np.ndarray, P: np.ndarray, logv: np.ndarray
    ) -> np.ndarray:
        """``log Σ_j exp(logv_j - |P_jᵀ (z_i - s_j)|² / 2)``: a log-sum-exp over Gaussians
        of their own shape, ``P_j`` a square root of source ``j``'s precision
        (``P_j P_jᵀ = Σ_j⁻¹``).

        ``P`` has shape ``(m, d, d)``, ``logv`` shape ``(m,)`` (finite); returns ``(n,)``.
        ``P`` of shape ``(1, d, d)`` is one shape for every source (a tied mixture): the
        engine's own isotropic :meth:`logsumexp`, in the coordinates that ``P`` whitens.
        Otherwise :meth:`_per_source_logsumexp`, which an engine overrides where it has a
        faster one.
        """
        if P.shape[0] == 1:
            return self._shared_shape_logsumexp(Z, S, P[0], logv)
        return self._per_source_logsumexp(Z, S, P, logv)

    def _per_source_logsumexp(self, Z, S, P, logv) -> np.ndarray:
        """:meth:`shaped_logsumexp` with a shape per source: dense NumPy over blocks of at
        most ``_SHAPED_BLOCK`` entries of ``(n, m, d)``, so every engine inherits a correct
        version."""
        n, d = Z.shape
        top = np.full(n, -np.inf, dtype=Z.dtype)
        total = np.zeros(n, dtype=Z.dtype)
        step = max(1, _SHAPED_BLOCK // max(1, n * d))
        for c0 in range(0, S.shape[0], step):
            cols = slice(c0, c0 + step)
            Pc = P[cols]
            # (z_i - s_j)ᵀ P_j = z_iᵀ P_j - s_jᵀ P_j: one matrix product for every source
            ZP = np.tensordot(Z, Pc, axes=(1, 1))  # (n, block, d)
            SP = np.einsum("md,mde->me", S[cols], Pc)
            A = logv[cols][None, :] - 0.5 * ((ZP - SP[None]) ** 2).sum(-1)
            new_top = np.maximum(top, A.max(axis=1))
            total = total * np.exp(top - new_top) + np.exp(A - new_top[:, None]).sum(axis=1)
            top = new_top
        return top + np.log(total)

    def shaped_moments(
        self, Z: np.ndarray, P: np.ndarray, a: np.ndarray, S: np.ndarray, c: np.ndarray,
        second: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """With ``E_ij = exp(a_i + c_j - |P_iᵀ (s_j - z_i)|² / 2)``, ``P_i`` a square root of
        point ``i``'s precision: the mass ``Σ_j E_ij`` (shape ``(n,)``), the first moment
        ``Σ_j E_ij (s_j - z_i)`` (shape ``(n, d)``) and the second moment
        ``Σ_j E_ij (s_j - z_i)(s_j - z_i)ᵀ`` (shape ``(n, d, d)``).

        ``P`` has shape ``(n, d, d)``, ``a`` shape ``(n,)`` (finite), ``c`` shape ``(m,)``;
        ``-inf`` entries of ``c`` contribute exactly 0.  With ``second=False`` the second
        moment is not formed (``None``).  ``P`` of shape ``(1, d, d)`` is one shape for
        every point, reduced (with ``second=False``) by the engine's own
        :meth:`softmax_moments`; otherwise :meth:`_per_point_moments`.
        """
        if P.shape[0] == 1 and Z.shape[0] > 1:
            if not second:
                return self._shared_shape_moments(Z, P[0], a, S, c)
            P = np.broadcast_to(P, (Z.shape[0], *P.shape[1:]))
        return self._per_point_moments(Z, P, a, S, c, second)

    def _per_point_moments(self, Z, P, a, S, c, second):
        """:meth:`shaped_moments` with a shape per point: dense NumPy over blocks, as
        :meth:`_per_source_logsumexp`; an engine overrides it where it has a faster one."""
        n, d = Z.shape
        ZP = np.einsum("nd,nde->ne", Z, P)
        # the block sums added in float64, and the second moment about the origin too:
        # Σ E (s - z)(s - z)ᵀ is formed from all three below, and the expansion cancels
        # where z is far from the sources it weighs
        mass = np.zeros(n)
        first = np.zeros((n, d))
        raw2 = np.zeros((n, d * d)) if second else None
        step = max(1, _SHAPED_BLOCK // max(1, n * d))
        for c0 in range(0, S.shape[0], step):
            Sc = S[c0:c0 + step]
            SP = np.tensordot(Sc, P, axes=(1, 1))  # (block, n, d): s_jᵀ P_i, one product
            q = ((SP - ZP[None]) ** 2).sum(-1).T
            E = np.exp(a[:, None] + c[c0:c0 + step][None, :] - 0.5 * q)
            mass += E.sum(axis=1)
            first += E @ Sc
            if second:
                Sd = Sc.astype(np.float64)
                raw2 += E.astype(np.float64) @ (Sd[:, :, None] * Sd[:, None, :]).reshape(-1, d * d)
        first -= mass[:, None] * Z  # Σ E (s - z) = Σ E s - z Σ E
        if not second:
            return mass.astype(Z.dtype), first.astype(Z.dtype), None
        Zd, m0, m1 = Z.astype(np.float64), mass, first
        # Σ E (s-z)(s-z)ᵀ = Σ E s sᵀ - z (Σ E s)ᵀ - (Σ E s) zᵀ + (Σ E) z zᵀ, Σ E s = m1 + m0 z
        s1 = m1 + m0[:, None] * Zd
        outer = Zd[:, :, None] * s1[:, None, :]
        moment2 = (raw2.reshape(n, d, d) - outer - np.swapaxes(outer, 1, 2)
                   + m0[:, None, None] * Zd[:, :, None] * Zd[:, None, :])
        return mass.astype(Z.dtype), first.astype(Z.dtype), moment2.astype(Z.dtype)

    # --- one shape shared by every source or point: the isotropic reductions -------------
    def _shared_shape_logsumexp(self, Z, S, P, logv):
        """:meth:`shaped_logsumexp` with one ``P``: ``|Pᵀ (z - s)|² = |zᵀP - sᵀP|²``, the
        Gaussian kernel of width 1 between the whitened rows (the engine's fast path, and
        the ``n × m × d`` products of the per-source form become two ``(·, d) × (d, d)``)."""
        # the wider dtype of the two: a tied step reduces float64 atoms against the
        # targets' own rows (see _shared_shape_moments)
        dt = np.result_type(Z.dtype, S.dtype)
        ZP, SP = _whitened(Z, P, dt), _whitened(S, P, dt)
        return self.logsumexp(Kernel("gaussian", 1.0), ZP, SP, logv.astype(dt))

    def _shared_shape_moments(self, Z, P, a, S, c):
        """:meth:`shaped_moments` with one ``P`` and ``second=False``: the softmax moments
        of the whitened rows at width 1, the first moment mapped back by ``P⁻¹`` and both
        scaled by ``exp(a_i)``.  ``max a`` goes into ``c`` and the rest out of it, so no
        exponential overflows where the shape is thin (``a`` a large log-determinant).
        In the wider dtype of ``Z`` and ``S``: a tied step passes float64 atoms (and ``a``,
        ``c``), whatever the targets' dtype, because it forms the pooled scatter from these
        moments by differences about the origin (``pooled_scatter``)."""
        top = float(np.max(a))
        dt = np.result_type(Z.dtype, S.dtype)
        mass, first = self.softmax_moments(Kernel("gaussian", 1.0), _whitened(Z, P, dt),
                                           _whitened(S, P, dt), c.astype(dt) + top)
        scale = np.exp(a.astype(np.float64) - top)
        first = np.linalg.solve(P.T.astype(np.float64), first.astype(np.float64).T).T
        return ((scale * mass).astype(Z.dtype), (scale[:, None] * first).astype(Z.dtype),
                None)

    # --- targets bound once per run ------------------------------------------------------
    def bind(self, Y: np.ndarray, b: np.ndarray) -> Targets:
        """Hold the targets ``Y`` (shape ``(m, d)``) with weights ``b`` (float64, shape
        ``(m,)``, summing to 1) for the reductions of one run."""
        return HostTargets(self, Y, b)


class Targets(ABC):
    """The targets ``Σ_m b_m δ_{y_m}`` of one run, held by a backend in its own form.

    Every reduction over the targets goes through these methods, so the flows never see
    the target rows: an engine may keep them on a device or on the workers of a cluster.

    Attributes
    ----------
    n_samples : int
    n_features : int
    dtype : numpy.dtype
    """

    n_samples: int
    n_features: int
    dtype: np.dtype

    # --- MMD flows ----------------------------------------------------------------------
    @abstractmethod
    def kernel_mean(self, kernel: Kernel, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``c_i = Σ_m b_m k(z_i, y_m)`` (float64, shape ``(n,)``) and its gradient
        ``∇c(z_i)`` (shape ``(n, d)``, in the dtype of ``Z``)."""

    @abstractmethod
    def energy(self, kernel: Kernel) -> float:
        """``½ bᵀ K_yy b``, exactly (a reduction of the targets against themselves)."""

    @abstractmethod
    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` rows drawn i.i.d. with probabilities ``b``, as a host array."""

    @abstractmethod
    def minibatch(self, size: int, rng: np.random.Generator) -> Targets:
        """Targets of ``size`` rows drawn i.i.d. with probabilities ``b``, with uniform
        weights: an unbiased minibatch of the same measure."""

    # --- inclusive KL (log domain, Gaussian kernel) --------------------------------------
    @abstractmethod
    def log_mixture(self, kernel: Kernel, X: np.ndarray, logw: np.ndarray) -> Any:
        """``L_m = log Σ_i exp(logw_i) k(y_m, x_i)`` at every target, held in the targets'
        own form (for host targets, a float64 array of shape ``(m,)``).  Only
        :meth:`average` and :meth:`responsibility_moments` read it."""

    @abstractmethod
    def average(self, L: Any, shift: float) -> tuple[float, float]:
        """``Σ_m b_m (L_m - shift)`` and ``Σ_m b_m |L_m - shift|``."""

    @abstractmethod
    def responsibility_moments(
        self, kernel: Kernel, X: np.ndarray, L: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """With ``E_mi = b_m k(y_m, x_i) / exp(L_m)``: ``R_i = Σ_m E_mi`` (shape ``(n,)``)
        and ``Σ_m E_mi (y_m - x_i)`` (shape ``(n, d)``), in the dtype of ``X``."""


    # --- inclusive KL with a Gaussian shape per atom -------------------------------------
    @abstractmethod
    def second_moment(self) -> np.ndarray:
        """``Σ_m b_m y_m y_mᵀ``, float64, shape ``(d, d)``: with the first moments of the
        responsibilities, the pooled scatter of a tied mixture's M-step."""

    @abstractmethod
    def log_mixture_shaped(self, X: np.ndarray, P: np.ndarray, logw: np.ndarray) -> Any:
        """``L_m = log Σ_i exp(logw_i - |P_iᵀ (y_m - x_i)|² / 2)`` at every target, in the
        targets' own form, as :meth:`log_mixture`; ``P`` of shape ``(n, d, d)``."""

    @abstractmethod
    def responsibility_moments_shaped(
        self, X: np.ndarray, P: np.ndarray, log_norm: np.ndarray, L: Any, second: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """With ``E_mi = b_m exp(log_norm_i - |P_iᵀ (y_m - x_i)|² / 2 - L_m)``: ``R_i = Σ_m
        E_mi`` (shape ``(n,)``), ``Σ_m E_mi (y_m - x_i)`` (shape ``(n, d)``) and ``Σ_m E_mi
        (y_m - x_i)(y_m - x_i)ᵀ`` (shape ``(n, d, d)``; ``None`` with ``second=False``), in
        the dtype of ``X``."""


class HostTargets(Targets):
    """Targets as an in-memory array; every reduction calls the backend's own.

    Parameters
    ----------
    backend : Backend
    Y : ndarray of shape (m, d)
    b : ndarray of shape (m,)
        float64, summing to 1.
    """

    def __init__(self, backend: Backend, Y: np.ndarray, b: np.ndarray) -> None:
        self.backend = backend
        self.Y = Y
        self.b = np.asarray(b, dtype=np.float64)
        self.n_samples, self.n_features = Y.shape
        self.dtype = Y.dtype
        self._b = self.b.astype(Y.dtype)  # the weights as the reductions take them
        self._second: np.ndarray | None = None

    def kernel_mean(self, kernel: Kernel, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        val, grad = self.backend.value_grad(kernel, Z, self.Y, self._b[:, None], self._b)
        return val[:, 0].astype(np.float64), grad

    def energy(self, kernel: Kernel) -> float:
        Kb = self.backend.matvec(kernel, self.Y, self.Y, self._b[:, None])[:, 0]
        return 0.5 * float(self.b @ Kb.astype(np.float64))

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        return self.Y[rng.choice(self.n_samples, size=size, replace=True, p=self.b)]

    def minibatch(self, size: int, rng: np.random.Generator) -> HostTargets:
        return HostTargets(self.backend, self.draw(size, rng), np.full(size, 1.0 / size))

    def log_mixture(self, kernel: Kernel, X: np.ndarray, logw: np.ndarray) -> np.ndarray:
        return self.backend.logsumexp(kernel, self.Y, X, logw.astype(X.dtype)).astype(np.float64)

    def average(self, L: np.ndarray, shift: float) -> tuple[float, float]:
        centred = L - shift
        return float(self.b @ centred), float(self.b @ np.abs(centred))

    def responsibility_moments(
        self, kernel: Kernel, X: np.ndarray, L: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore"):  # a zero weight: exp(-inf) = 0 exactly
            c = np.log(self.b) - L
        return self.backend.softmax_moments(kernel, X, self.Y, c.astype(X.dtype))

    def second_moment(self) -> np.ndarray:
        if self._second is None:
            self._second = second_moment(self.Y, self.b)
        return self._second

    def log_mixture_shaped(self, X: np.ndarray, P: np.ndarray, logw: np.ndarray) -> np.ndarray:
        dt = X.dtype
        return self.backend.shaped_logsumexp(
            self.Y, X, P.astype(dt), logw.astype(dt)
        ).astype(np.float64)

    def responsibility_moments_shaped(
        self, X: np.ndarray, P: np.ndarray, log_norm: np.ndarray, L: np.ndarray,
        second: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        with np.errstate(divide="ignore"):
            c = np.log(self.b) - L
        dt = X.dtype
        return self.backend.shaped_moments(X, P.astype(dt), log_norm.astype(dt), self.Y,
                                           c.astype(dt), second)


def second_moment(Y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ_m b_m y_m y_mᵀ`` in float64 (:meth:`Targets.second_moment`, of the rows held)."""
    Y = Y.astype(np.float64)
    return Y.T @ (b[:, None] * Y)


def _whitened(X: np.ndarray, P: np.ndarray, dtype=None) -> np.ndarray:
    """``X P`` computed in float64, in ``dtype`` (that of ``X`` by default)."""
    return (X.astype(np.float64) @ P.astype(np.float64)).astype(dtype or X.dtype)
