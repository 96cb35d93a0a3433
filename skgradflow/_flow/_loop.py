"""The time-stepping loop every flow shares: the step-size safeguard, the stopping rule,
the callback, the progress bar and the warnings, around the hooks a flow implements
(``_evaluate``, ``_step``, ``_auto_step_size``, ``_regrow_step``)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from .._progress import Progress
from ..callbacks import make_state
from ._state import FlowState, Problem

# The stopping rule compares the mean energy of the last _WINDOW iterations with the mean
# of the _WINDOW before them, relative to the decrease achieved since the start: MMD
# energies decay to ~0 like a power of the iteration count, so a decrease relative to the
# current energy would never fall below any tolerance.
_WINDOW = 10
# A run whose flow knows the statistical resolution ν of its energy (_energy_resolution: how
# much the energy would change for another draw of the targets) also stops once its energy
# is within _RESOLVED ν of its least value, or falls by less than that over _WINDOW
# iterations: further steps would fit the targets' sampling noise.  On digits reduced to 16
# dimensions, from a draw of the rows, the fine phase's energy falls 4% in 400 iterations
# (2e-6 a window, against ν = 4e-4) while the samples' two-sample AUC stays within 0.01.
_RESOLVED = 0.01
# The safeguard halves the step at most this many times in one iteration; an energy that
# still goes up is then at the floating-point floor, and the flow stops there.
_MAX_HALVINGS = 30


def _shifted(callback, offset: int):
    """``callback`` seeing the iteration count of the whole fit, in a later phase."""
    if callback is None or offset == 0:
        return callback
    return lambda state: callback(dataclasses.replace(state, n_iter=state.n_iter + offset))


def _phase_shares(max_iter: int, n_phases: int) -> list[int]:
    """Iterations of each phase: a tenth of max_iter for each wide one, the rest to the last.

    A short wide phase is enough to carry mass across the data (the reweighting of IFT and
    WFR does the rest), and the fine one, slower, needs the iterations: on a far start, a
    split of 10/90 leaves IFT's ½MMD² at the fine bandwidth 20x below the MMD flow's, a
    split of 50/50 only 4x."""
    shares = [max(1, max_iter // 10)] * (n_phases - 1)
    return [*shares, max(0, max_iter - sum(shares))]


def _carried_step(estimator, tau: float) -> float | None:
    """The step a later phase starts from: with step_size="auto" and the full batch, the
    step the previous phase ended with (the safeguard shrinks it where the finer bandwidth
    needs it); None (the phase's own automatic step) otherwise, minibatch runs included,
    which have no safeguard."""
    full_batch = estimator.batch_size is None
    return tau if isinstance(estimator.step_size, str) and full_batch else None


def _flow_diverged(what: str, tau: float) -> FloatingPointError:
    return FloatingPointError(
        f"The flow diverged: {what} became non-finite with step_size={tau:.3g}. "
        "Use a smaller step_size, or step_size='auto'."
    )


class RunLoop:
    """The loop of a flow estimator (mixed into the estimator base)."""

    # --- the loop ------------------------------------------------------------------------
    def _run_flow(self, problem: Problem, state: FlowState, desc: str, energy_scale: float = 0.0,
                  step_size: float | None = None, callback=None, max_iter: int | None = None,
                  verbose: int | None = None, tol: float | None = None, warn: bool = True,
                  progress: tuple[int, int] | None = None, min_iter: int = 0):
        """Time-step from ``state`` until ``tol``, ``max_iter`` or the callback stops it.

        With ``step_size="auto"``, a step that raises the energy is rejected and retried
        with half the step size (full-batch runs only: minibatch energies are noisy).
        ``energy_scale`` is a floor for the decrease the stopping rule compares with, for
        runs that start near their end (``transform`` of points already in place).
        ``step_size`` overrides the initial step (a warm start resumes from its last one);
        ``callback(state)`` is called after every iteration and stops the run by returning
        ``True``.  ``max_iter``, ``verbose`` and ``tol`` override the estimator's; ``warn=False``
        raises no ConvergenceWarning (for runs whose cap is deliberate); ``progress`` is
        ``(iterations done before, total)`` for a phase of a longer run.  Returns
        ``state, step_size, n_iter, converged, loss_curve, stopped`` (``stopped``: by the
        callback).  The stopping rule is not consulted before ``min_iter`` iterations.
        """
        max_iter = self.max_iter if max_iter is None else max_iter
        tol = self.tol if tol is None else tol
        targets = problem.targets()
        ev = self._evaluate(problem, state, targets)
        if not np.isfinite(ev.energy):
            raise ValueError("The initial energy is not finite; check the data and init.")
        resolution, least_energy = (self._energy_resolution(problem, ev, targets)
                                    if self.tol > 0 and not problem.stochastic else (0.0, None))
        adaptive = isinstance(self.step_size, str)
        if step_size is not None:
            tau = float(step_size)
        else:
            tau = self._auto_step_size(problem, ev) if adaptive else float(self.step_size)
        losses = [ev.energy]
        converged = False
        guard = adaptive and not problem.stochastic
        start_tau = tau
        start, total = progress if progress is not None else (0, max_iter)
        progress = Progress(self.verbose if verbose is None else verbose, total, desc, start)
        n_iter = 0
        stopped = False
        for n_iter in range(1, max_iter + 1):
            next_targets = problem.targets()
            for _ in range(_MAX_HALVINGS + 1):
                # an overflow shows up as a non-finite state, checked right below
                with np.errstate(over="ignore", invalid="ignore"):
                    new, carry = self._step(problem, state, ev, targets, tau)
                if not new.is_finite():
                    if guard:
                        tau *= 0.5
                        continue
                    raise _flow_diverged("the particles or their weights", tau)
                with np.errstate(over="ignore", invalid="ignore"):
                    # a minibatch run evaluates on fresh targets: nothing carries over
                    carry = carry if next_targets is targets else None
                    ev_new = self._evaluate(problem, new, next_targets, carry)
                if not np.isfinite(ev_new.energy):
                    if guard:
                        tau *= 0.5
                        continue
                    raise _flow_diverged("the energy", tau)
                slack = 64 * np.finfo(state.atoms.dtype).eps * max(ev.magnitude, ev_new.magnitude)
                if not guard or ev_new.energy <= ev.energy + slack:
                    break
                tau *= 0.5
            else:
                # no step size lowers the energy any further: a stationary point
                n_iter -= 1
                converged = True
                break
            state, ev, targets = new, ev_new, next_targets
            if guard:
                tau = self._regrow_step(tau, start_tau)
            losses.append(ev.energy)
            progress.update(n_iter, ev.energy)
            if callback is not None and callback(
                make_state(n_iter, self._public_atoms(state), state.weights, ev.energy, tau)
            ):
                stopped = True
                break
            if tol > 0 and n_iter >= min_iter and self._has_converged(losses, energy_scale, tol):
                converged = True
                break
            if _is_resolved(losses, resolution, least_energy):
                converged = True
                break
        progress.close(n_iter, losses[-1], converged)
        # tol=0 asks for exactly max_iter iterations, a callback that stops the run and a
        # caller that caps the iterations ask for no more: nothing to warn about
        if not converged and not stopped and tol > 0 and warn:
            warnings.warn(
                f"{desc} did not converge in max_iter={self.max_iter} "
                f"iterations (tol={tol}); increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if not adaptive and not problem.stochastic and losses[-1] > losses[0] + 1e-12:
            warnings.warn(
                f"The energy went up from {losses[0]:.4g} to {losses[-1]:.4g} with "
                f"step_size={tau:.4g}: the step is too large; use a smaller step_size "
                "or step_size='auto'.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return state, tau, n_iter, converged, np.asarray(losses), stopped

    def _energy_resolution(self, problem: Problem, ev, targets) -> tuple[float, float | None]:
        """The statistical resolution of the energy and its least value where known, from
        the problem and the evaluation at the start of a full-batch run: ``(0, None)``, none,
        unless a flow knows them."""
        return 0.0, None

    def _has_converged(self, losses: list[float], energy_scale: float = 0.0,
                       tol: float | None = None) -> bool:
        tol = self.tol if tol is None else tol
        if len(losses) < 2 * _WINDOW + 1:
            return False
        before = float(np.mean(losses[-2 * _WINDOW : -_WINDOW]))
        last = float(np.mean(losses[-_WINDOW:]))
        progress = losses[0] - last
        return (before - last) <= tol * max(progress, energy_scale)


def _is_resolved(losses: list[float], resolution: float,
                 least_energy: float | None = 0.0) -> bool:
    """Whether the energy is within ``_RESOLVED`` times the resolution of its least value
    (where that is known), or its mean over the last ``_WINDOW`` iterations below that of the
    ``_WINDOW`` before by less than that."""
    if resolution <= 0.0:
        return False
    if least_energy is not None and losses[-1] - least_energy <= _RESOLVED * resolution:
        return True
    if len(losses) < 2 * _WINDOW + 1:
        return False
    before = float(np.mean(losses[-2 * _WINDOW : -_WINDOW]))
    return before - float(np.mean(losses[-_WINDOW:])) <= _RESOLVED * resolution
