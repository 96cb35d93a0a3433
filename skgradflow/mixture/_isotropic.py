"""The isotropic (and, in whitened coordinates, the "data") mixture's step: the WFR flow of
the inclusive KL over the mixing measure, in the log domain."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from .._flow import Evaluation, FlowState, Problem
from ..backends import LOG_TINY, Targets


class _IsotropicSteps:
    """The evaluation and step of a mixture whose components share the kernel's shape."""

    def _log_norm(self, d: int) -> float:
        """``log`` of the normalising constant of ``φ_h`` in the units of ``X``:
        ``(2π h²)^(d/2)``, times ``det Σ̂^(1/2)`` in the whitened coordinates."""
        log_norm = 0.5 * d * np.log(2.0 * np.pi * self.bandwidth_**2)
        return log_norm if self._whiten is None else log_norm - self._whiten[3]

    @staticmethod
    def _log_weights(w: np.ndarray, dtype) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(w), LOG_TINY).astype(dtype)

    def _evaluate_isotropic(self, problem: Problem, state: FlowState,
                            targets: Targets) -> Evaluation:
        x, w = state.atoms, state.weights
        # L_m = log Σ_i w_i exp(-|y_m - x_i|²/(2h²)), so log μ(y_m) = L_m - log norm
        L = targets.log_mixture(problem.kernel, x, self._log_weights(w, x.dtype))
        shift = self._log_norm(x.shape[1])
        mean, magnitude = targets.average(L, shift)
        return Evaluation(-mean, magnitude, {"L": L, "shift": shift, "mean": mean})

    def _step_isotropic(self, problem: Problem, state: FlowState, ev: Evaluation,
                        targets: Targets, tau: float):
        x, w = state.atoms, state.weights
        kernel, h = problem.kernel, self.bandwidth_
        L = ev.cache["L"]
        if self.alpha > 0:
            _, pull = targets.responsibility_moments(kernel, x, L)
            x = x + (tau * self.alpha / h**2) * pull
            if self.beta > 0:  # L at the moved atoms, for R at the new positions
                L = targets.log_mixture(kernel, x, self._log_weights(w, x.dtype))
        if self.beta > 0:
            R, _ = targets.responsibility_moments(kernel, x, L)
            w = self._reweight(w, R, tau)
        # the weights changed after the last LogSumExp: the evaluation starts afresh
        return FlowState(x, w), None

    def _reweight(self, w: np.ndarray, R: np.ndarray, tau: float) -> np.ndarray:
        """Fisher–Rao: ``w_i ← w_i exp(τβ (R_i - 1))``, normalised."""
        with np.errstate(divide="ignore"):
            log_w = np.log(w) + (tau * self.beta) * (R.astype(np.float64) - 1.0)
        return np.exp(log_w - logsumexp(log_w))

    # --- "full": a covariance per atom -------------------------------------------------
