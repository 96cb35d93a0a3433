"""The learnt shapes ("full": one per component, "tied": one shared): the implicit step of
each component's natural-gradient flow (design page, "Shaped kernels"), the MAP reg_covar
term, and the state's Cholesky factors."""

from __future__ import annotations

import numpy as np

from .._flow import Evaluation, FlowState
from ..backends import Targets


def covariances(state: FlowState, shared: bool = False) -> np.ndarray:
    """The covariances ``L Lᵀ`` (float64) of a state's shape factors; ``shared`` (every row
    the same shape, ``"tied"``): the first, formed once and broadcast to every row."""
    L = state.shapes[:1] if shared else state.shapes
    L = L.astype(np.float64)
    C = L @ np.swapaxes(L, -1, -2)
    return np.broadcast_to(C, state.shapes.shape) if shared else C


def with_covariances(state: FlowState, C: np.ndarray, shared: bool = False) -> FlowState:
    """``state`` with the shapes of the covariances ``C``, kept as Cholesky factors in the
    atoms' dtype; ``shared``: ``C``'s first, factored once and repeated on every row."""
    if shared:
        L = np.linalg.cholesky(C[0]).astype(state.atoms.dtype)
        return state.replace(shapes=np.repeat(L[None], C.shape[0], axis=0))
    return state.replace(shapes=np.linalg.cholesky(C).astype(state.atoms.dtype))


class _ShapedSteps:
    """The evaluation and step of a mixture that learns its components' shapes."""

    def _shapes(self, C: np.ndarray):
        """``P_i`` (``P_i P_iᵀ = C_i⁻¹``, float64) and ``log det P_i``, minus the ``N(0, C_i)``
        normaliser's ``(2π)^(d/2)``, which ``_evaluate_full`` subtracts once."""
        P = _precision_cholesky(C)
        return P, np.log(np.diagonal(P, axis1=1, axis2=2)).sum(axis=1)

    @property
    def _tied(self) -> bool:
        """Whether every component has the one shape of ``"tied"``."""
        return self._mode == "tied"

    def _distinct(self, C: np.ndarray) -> np.ndarray:
        """The distinct covariances of the stack: its first for ``"tied"``, whose one shape
        every row repeats (the engines then reduce it as one shape for all, isotropic in
        the coordinates it whitens), all of them for ``"full"``."""
        return C[:1] if self._tied else C

    def _reduced(self, x: np.ndarray) -> np.ndarray:
        """The atoms as the reductions take them: float64 for ``"tied"``, whose step forms
        the pooled scatter by differences about the origin (``pooled_scatter``) and needs
        the responsibilities of a target to sum to 1 to float64's precision: a relative
        error ε in ``L`` or ``R`` moves the scatter by ε times the data's second moment
        (float32 atoms left it 20% off along a direction a thousand times thinner than the
        data, ``tests/mixture/test_covariance.py``)."""
        return x.astype(np.float64) if self._tied else x

    def _penalty(self, P: np.ndarray) -> float:
        """The ``reg_covar`` term of the learnt shapes' objective, ``(reg/2) Σ_i tr(C_i⁻¹)``
        (``(reg/2) tr(C⁻¹)`` for the one shape of ``"tied"``: ``P`` of its distinct shapes),
        ``tr(C_i⁻¹) = |P_i|²``."""
        return 0.5 * self.reg_covar * float(np.einsum("nde,nde->", P, P))

    def _evaluate_shaped(self, state: FlowState, targets: Targets) -> Evaluation:
        x, w = state.atoms, state.weights
        C = covariances(state, shared=self._tied)
        try:
            P, log_det = self._shapes(self._distinct(C))
        except np.linalg.LinAlgError:  # rounded past positive definiteness: a failed step
            return Evaluation(np.inf, np.inf, {})
        # L_m = log Σ_i w_i det(P_i) exp(-|P_iᵀ(y_m - x_i)|²/2) = log μ(y_m) + (d/2) log 2π
        L = targets.log_mixture_shaped(self._reduced(x), P,
                                       self._log_weights(w, np.float64) + log_det)
        d = x.shape[1]
        shift = 0.5 * d * np.log(2.0 * np.pi) - self._whiten[3]
        mean, magnitude = targets.average(L, shift)
        # the objective the step lowers: -ℓ plus the reg_covar term
        energy = -mean + self._penalty(P)
        return Evaluation(energy, magnitude, {"L": L, "P": P, "log_det": log_det,
                                              "shift": shift, "mean": mean})

    def _step_shaped(self, state: FlowState, ev: Evaluation, targets: Targets, tau: float):
        """One step of design page section "Shaped kernels": every component moves a
        fraction ``ρ_i = τα R_i / (1 + τα R_i)`` of the way to its EM update, then the
        Fisher–Rao reweighting."""
        x, w = state.atoms, state.weights
        C = covariances(state, shared=self._tied)
        L, P, log_det = ev.cache["L"], ev.cache["P"], ev.cache["log_det"]
        try:
            return self._transport_and_reweight(x, C, w, L, P, log_det, targets, tau)
        except np.linalg.LinAlgError:
            # a shape rounded past positive definiteness (float32 moments of a component
            # far thinner than the data): a failed step, which the safeguard retries shorter
            return state.replace(atoms=np.full_like(x, np.nan)), None

    def _transport_and_reweight(self, x, C, w, L, P, log_det, targets: Targets, tau: float):
        n = x.shape[0]
        if self.alpha > 0:
            if self._tied:
                # the shared shape's step needs only the pooled scatter, which the first
                # moments and the targets' second moment give without an n × d × d reduction
                x64 = self._reduced(x)
                R, first, _ = targets.responsibility_moments_shaped(
                    x64, P, np.broadcast_to(log_det, n), L, second=False)
                scatter = pooled_scatter(targets.second_moment(), x64, w, R, first)
                dx, C = _tied_step(C, R, first, scatter, tau * self.alpha, self.reg_covar, w)
            else:
                R, first, second = targets.responsibility_moments_shaped(x, P, log_det, L)
                dx, C = _component_step(C, R.astype(np.float64), first.astype(np.float64),
                                        second.astype(np.float64), tau * self.alpha,
                                        self.reg_covar, w)
            x = x + dx.astype(x.dtype)
            if self.beta > 0:
                P, log_det = self._shapes(self._distinct(C))
                L = targets.log_mixture_shaped(self._reduced(x), P,
                                               self._log_weights(w, np.float64) + log_det)
        if self.beta > 0:
            R = targets.responsibility_moments_shaped(self._reduced(x), P,
                                                      np.broadcast_to(log_det, n), L,
                                                      second=False)[0]
            mass = w * R.astype(np.float64)  # Σ_m b_m γ_mi: EM's weights
            rho = tau * self.beta / (1.0 + tau * self.beta)
            w = (1.0 - rho) * w + rho * mass / mass.sum()
        return with_covariances(FlowState(x, w), C, shared=self._tied), None

    # --- the fitted density ----------------------------------------------------------------


def _precision_cholesky(C: np.ndarray) -> np.ndarray:
    """Upper triangular ``P_i`` with ``P_i P_iᵀ = C_i⁻¹`` (scikit-learn's
    ``precisions_cholesky_`` of the "full" type), for a stack of covariances."""
    L = np.linalg.cholesky(C)
    eye = np.broadcast_to(np.eye(C.shape[-1]), C.shape)
    return np.swapaxes(np.linalg.solve(L, eye), -1, -2)


def _component_step(C, R, first, second, t, reg_covar, w):
    """The transport of every component ``(x_i, C_i)`` over a step of length ``t = τα``:
    the implicit Euler step of its natural-gradient flow, ``ẋ = F``,
    ``Ċ = M + (reg/w) I - R C``,

    ``x_i ← x_i + t F_i / (1 + t R_i)`` and
    ``C_i ← (C_i + t (M'_i + (reg/w_i) I)) / (1 + t R_i)``,

    a fraction ``ρ_i = t R_i / (1 + t R_i)`` of the way to the M-step of EM with the
    ``reg_covar`` term, ``(M'_i + (reg/w_i) I) / R_i``: ``F_i = Σ_m E_mi (y_m - x_i)``,
    ``M_i`` the same sum of ``(y_m - x_i)(y_m - x_i)ᵀ`` and ``M'_i`` that of the moved mean.
    Returns the moves of the means and the new covariances (float64).  The shared shape of
    ``"tied"`` takes :func:`_tied_step`."""
    shrink = t / (1.0 + t * R)  # ρ_i / R_i, finite where R_i = 0
    dx = shrink[:, None] * first
    # the second moment about the moved mean, from the moments about the old one
    outer = first[:, :, None] * dx[:, None, :]
    moved = (second - outer - np.swapaxes(outer, -1, -2)
             + R[:, None, None] * dx[:, :, None] * dx[:, None, :])
    moved = _clip_to_psd(moved)
    eye = np.eye(C.shape[-1])
    # the term weighs reg/w_i in component i's own step: a component whose weight vanishes
    # widens instead of collapsing onto the samples it still covers
    prior = reg_covar / np.maximum(w, np.finfo(np.float64).tiny)
    C_new = (C + t * (moved + prior[:, None, None] * eye)) / (1.0 + t * R)[:, None, None]
    return dx, 0.5 * (C_new + np.swapaxes(C_new, -1, -2))


def pooled_scatter(second: np.ndarray, x: np.ndarray, w: np.ndarray, R: np.ndarray,
                   first: np.ndarray) -> np.ndarray:
    """``Σ_i w_i M_i``, ``M_i = Σ_m E_mi (y_m - x_i)(y_m - x_i)ᵀ``, from the targets' second
    moment ``Σ_m b_m y_m y_mᵀ`` and the first moments: with ``w_i E_mi = b_m γ_mi`` and
    ``Σ_i γ_mi = 1``, it is ``Σ_m b_m y_m y_mᵀ - Σ_i (ȳ_i x_iᵀ + x_i ȳ_iᵀ) + Σ_i r_i x_i x_iᵀ``,
    ``r_i = w_i R_i`` and ``ȳ_i = Σ_m b_m γ_mi y_m = w_i (F_i + R_i x_i)``."""
    ybar = w[:, None] * (first + R[:, None] * x)
    cross = ybar.T @ x
    return second - cross - cross.T + (x.T * (w * R)) @ x


def _tied_step(C, R, first, scatter, t, reg_covar, w):
    """The shared shape's step (design page, "Shaped kernels", ``"tied"``): the means as
    in :func:`_component_step`, and ``C ← (C + t (Σ_i w_i M'_i + reg I)) / (1 + t r)``,
    ``r = Σ_i w_i R_i = 1``, EM's tied M-step as ``t → ∞``, with the pooled scatter about
    the moved means from that about the old ones (:func:`pooled_scatter`),
    ``Σ_i w_i M'_i = Σ_i w_i (M_i - F_i dx_iᵀ - dx_i F_iᵀ + R_i dx_i dx_iᵀ)``, clipped to
    positive semi-definite as a whole (each ``M'_i`` is, up to rounding)."""
    dx = (t / (1.0 + t * R))[:, None] * first
    cross = (w[:, None] * first).T @ dx
    moved = _clip_to_psd((scatter - cross - cross.T + (dx.T * (w * R)) @ dx)[None])[0]
    eye = np.eye(C.shape[-1])
    shared = (C[0] + t * (moved + reg_covar * eye)) / (1.0 + t * float(w @ R))
    shared = 0.5 * (shared + shared.T)
    return dx, np.broadcast_to(shared, C.shape)


def _clip_to_psd(M: np.ndarray) -> np.ndarray:
    """The symmetric part of every ``M_i``, negative eigenvalues set to 0: a sum of outer
    products is positive semi-definite, but from float32 moments of a thin component the
    expansion about the moved mean can round below 0."""
    M = 0.5 * (M + np.swapaxes(M, -1, -2))
    eigval, eigvec = np.linalg.eigh(M)
    if np.all(eigval >= 0):
        return M
    return (eigvec * np.maximum(eigval, 0.0)[:, None, :]) @ np.swapaxes(eigvec, -1, -2)
