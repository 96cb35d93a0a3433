"""The energy the two MMD samplers flow down, ``F(μ) = ½ MMD²(μ, π̂)``: its witness, the
transport step, the constant ``½ bᵀK_yy b`` and the default score."""

from __future__ import annotations

import numbers
from abc import abstractmethod

import numpy as np
from sklearn.base import OneToOneFeatureMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions

from ..backends import Targets
from ..data import Data
from ..kernels import BANDWIDTH_RULES, KERNELS, Kernel
from ._estimator import _BaseParticleFlow
from ._matching import _MMDMatching
from ._sampling import _MMDSampling
from ._state import Evaluation, FlowState, Problem

# The constant ½ bᵀK_yy b is computed exactly up to this many targets (or when it costs
# less than _CONST_ITERATIONS iterations), and estimated from _CONST_SUBSAMPLE rows above.
_CONST_ITERATIONS = 20
_CONST_SUBSAMPLE = 5000


class _BaseMMDFlow(_MMDSampling, _MMDMatching, OneToOneFeatureMixin, TransformerMixin,
                   _BaseParticleFlow):
    """A flow of the energy ``F(μ) = ½ MMD²(μ, π̂)``: the witness, the transport step and
    score (``transform`` in ``_matching.py``, ``sample`` in ``_sampling.py``).  Subclasses
    own the weight step."""

    _parameter_constraints: dict = {
        **_BaseParticleFlow._parameter_constraints,
        "n_particles": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "bandwidth": [
            Interval(numbers.Real, 0, None, closed="neither"),
            StrOptions({*BANDWIDTH_RULES, "anneal"}),
        ],
        "kernel": [StrOptions(set(KERNELS))],
        "conserve_mass": ["boolean"],
        "init": [StrOptions({"gaussian", "subsample"}), "array-like"],
        "smoothing": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
    }

    def _kernel(self, bandwidth: float | None = None) -> Kernel:
        return Kernel(self.kernel, self.bandwidth_ if bandwidth is None else bandwidth)

    def _bandwidth_schedule(self, data: Data, rng) -> list[float]:
        """``"anneal"``: the median rule, wide enough to carry mass across the data, for the
        first tenth of the run, then Scott's rule, at the scale of the modes, for the rest
        (where the stopping rule waits for half of that phase).

        Scott's ``n`` is the number of distinct samples of positive weight, as for
        ``n_particles="auto"``: integer ``sample_weight`` then fits as repeated rows would
        (the effective sample size ``1/Σb²`` would not)."""
        if self.bandwidth != "anneal":
            return super()._bandwidth_schedule(data, rng)
        wide = data.bandwidth("median", rng)
        if self.kernel == "energy":  # no bandwidth to anneal: the median's length scale
            return [wide]
        fine = data.bandwidth("scott", rng, n_samples=data.n_distinct())
        return [wide, fine] if fine < wide else [wide]

    def _prepare(self, problem: Problem, n_particles: int) -> None:
        problem.const = self._target_energy(problem, n_particles)

    def _energy_resolution(self, problem: Problem, ev=None, targets=None) -> tuple[float, float]:
        # ν = (k(0) - E k(y, y')) / (2M), y, y' independent draws of the targets and M their
        # effective number: the expected energy ½ MMD²(π̂, π) between M rows and the law π
        # they were drawn from.  The targets know π only to this accuracy, so a fit whose
        # energy is far below it, or falls by a small part of it in many iterations, has
        # nothing left to learn from them.  E k(y, y') = bᵀK_yy b = 2 const; the energy's
        # least value is 0.
        nu = (max(problem.kernel.diagonal - 2.0 * problem.const, 0.0)
              / (2.0 * problem.effective_size))
        return nu, 0.0

    def _check_flow_params(self) -> None:
        if not self.conserve_mass and self.kernel == "energy":
            raise ValueError(
                "kernel='energy' requires conserve_mass=True: the energy kernel is only "
                "conditionally positive definite, so the MMD is unbounded below over "
                "unnormalised measures."
            )

    def _auto_step_size(self, problem: Problem, ev: Evaluation) -> float:
        kernel = problem.kernel
        # Transport: τα ≲ h²/2, the inverse Lipschitz constant of ∇f for the Gaussian and
        # IMQ kernels (also used for the Laplacian, whose gradient jumps at r = 0).  The
        # energy kernel's gradient is bounded by 2, so a step of τα = h/2 moves a particle
        # at most one length scale; the safeguard takes it from there.
        if self.alpha > 0:
            h = kernel.bandwidth
            return (0.5 * h if kernel.name == "energy" else 0.5 * h * h) / self.alpha
        return 1.0 / self.beta if self.beta > 0 else 1.0

    def _target_energy(self, problem: Problem, n_particles: int) -> float:
        """``½ bᵀ K_yy b``, once per run: exact, or an unbiased estimate when it would cost
        more than a few iterations (or when minibatches are used)."""
        bound, M = problem.bound, problem.bound.n_samples
        n_src = n_particles + (problem.batch_size or M)
        exact = M <= _CONST_SUBSAMPLE or (
            not problem.stochastic and M * M <= _CONST_ITERATIONS * n_particles * n_src
        )
        kern = problem.kernel
        if exact:
            return bound.energy(kern)
        # U-statistic over S i.i.d. draws from π̂: E k(Y, Y') without the s = t terms
        S = _CONST_SUBSAMPLE
        Ys = bound.draw(S, problem.rng)
        ones = np.ones((S, 1), dtype=Ys.dtype)
        total = float(problem.backend.matvec(kern, Ys, Ys, ones).astype(np.float64).sum())
        return 0.5 * (total - S * kern.diagonal) / (S * (S - 1))

    # --- the MMD energy and its witness ----------------------------------------------------
    def _evaluate(self, problem: Problem, state: FlowState, targets: Targets,
                  carry=None) -> Evaluation:
        """The witness ``f = K_xx w - c`` at the particles, its gradient, and the energy.

        ``c = K_xy b`` and ``∇c`` come from one reduction over the bound targets, or from
        ``carry`` when the weight step already computed them at these positions; the
        particle part is one reduction over the particles."""
        x, w = state.atoms, state.weights
        wd = w.astype(x.dtype)
        val, grad_Kw = problem.backend.value_grad(problem.kernel, x, x, wd[:, None], wd)
        c, grad_c = (carry["c"], carry["grad_c"]) if carry is not None else (
            targets.kernel_mean(problem.kernel, x)
        )
        f = val[:, 0].astype(np.float64) - c
        grad = grad_Kw - grad_c
        # F = ½ wᵀK_xx w - wᵀc + ½ bᵀK_yy b, with wᵀK_xx w = wᵀf + wᵀc
        wf, wc = float(w @ f), float(w @ c)
        energy = 0.5 * wf - 0.5 * wc + problem.const
        magnitude = abs(0.5 * (wf + wc)) + abs(wc) + abs(problem.const)
        return Evaluation(energy, magnitude, {"grad": grad, "f": f})

    def _step(self, problem: Problem, state: FlowState, ev: Evaluation, targets: Targets,
              tau: float):
        # Wasserstein step: x_i ← x_i - τα ∇f(x_i), the velocity field (not scaled by w_i)
        x, w = state.atoms, state.weights
        x_new = x - (tau * self.alpha) * ev.cache["grad"] if self.alpha > 0 else x
        if problem.update_weights and self.beta > 0:
            w_new, carry = self._weight_step(problem, x_new, w, targets, tau)
            return FlowState(x_new, w_new), carry
        return FlowState(x_new, w), None

    @abstractmethod
    def _weight_step(self, problem: Problem, x, w, targets: Targets, tau: float):
        """The weights after the reaction part of a step, at the moved particles ``x``, and
        the carry of :meth:`_reduce_at_moved` for the next evaluation."""

    def _reduce_at_moved(self, problem: Problem, x, w, targets: Targets, row_sums=False):
        """At the moved particles ``x`` with the old weights ``w``: the witness
        ``f = K w - c``, ``c = K_xy b`` and, if asked, the row sums ``K_xx 1``, as float64
        columns, and the gradient ``∇c``.  ``c`` and ``∇c`` do not depend on the weights,
        so they are carried to the next evaluation, which then reduces over the particles
        only."""
        n, dtype = x.shape[0], x.dtype
        V = np.stack([w.astype(dtype), *([np.ones(n, dtype)] if row_sums else [])], axis=1)
        Kx = problem.backend.matvec(problem.kernel, x, x, V).astype(np.float64)
        c, grad_c = targets.kernel_mean(problem.kernel, x)
        columns = [Kx[:, 0] - c, c, *([Kx[:, 1]] if row_sums else [])]
        return np.stack(columns, axis=1), {"c": c, "grad_c": grad_c}

    # --- using the fitted measure ---------------------------------------------------------
