"""Shared machinery of the particle flows: validation, initialisation, the time-stepping
loop with its step-size safeguard and stopping rule, history, sampling and scoring.

A flow subclass owns only its step (see ``ift.py``); ``_BaseMMDFlow`` adds what the two
MMD samplers share: the energy ``F = ½ MMD²(μ, π̂)``, its witness and the transport step.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
import warnings
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ._clustering import cluster_centers
from ._progress import Progress
from .backends import (
    BACKEND_NAMES,
    Backend,
    DaskBackend,
    HostTargets,
    Targets,
    resolve_backend,
)
from .backends._dask import dask_session, is_dask_array
from .callbacks import make_state
from .kernels import BANDWIDTH_RULES, KERNELS, Kernel, _seed_from, resolve_bandwidth

# The stopping rule compares the mean energy of the last _WINDOW iterations with the mean
# of the _WINDOW before them, relative to the decrease achieved since the start: MMD
# energies decay to ~0 like a power of the iteration count, so a decrease relative to the
# current energy would never fall below any tolerance.
_WINDOW = 10
# The safeguard halves the step at most this many times in one iteration; an energy that
# still goes up is then at the floating-point floor, and the flow stops there.
_MAX_HALVINGS = 30
# The constant ½ bᵀK_yy b is computed exactly up to this many targets (or when it costs
# less than _CONST_ITERATIONS iterations), and estimated from _CONST_SUBSAMPLE rows above.
_CONST_ITERATIONS = 20
_CONST_SUBSAMPLE = 5000
# sample(method="transport") moves each batch of jittered particle draws for at most this
# many iterations: they start next to the fitted measure, and on a 3-mode test the energy
# distance to held-out data of 20 iterations is within 7% of 500 (and 10% better than none).
_SAMPLE_ITERATIONS = 20


def _shifted(callback, offset: int):
    """``callback`` seeing the iteration count of the whole fit, in a later phase."""
    if callback is None or offset == 0:
        return callback
    return lambda state: callback(dataclasses.replace(state, n_iter=state.n_iter + offset))


def _moments(X: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weighted mean of the rows and a square root ``R`` of their covariance
    (``R Rᵀ = Σ``, zero in directions without spread), in float64."""
    Xd = X.astype(np.float64)
    cov = np.atleast_2d(np.cov(Xd, rowvar=False, aweights=w, bias=True))
    eigval, eigvec = np.linalg.eigh(cov)
    return w @ Xd / w.sum(), eigvec * np.sqrt(np.clip(eigval, 0.0, None))


def _phase_shares(max_iter: int, n_phases: int) -> list[int]:
    """Iterations of each phase: a tenth of max_iter for each wide one, the rest to the last.

    A short wide phase is enough to carry mass across the data (the reweighting of IFT and
    WFR does the rest), and the fine one, slower, needs the iterations: on a far start, a
    split of 10/90 leaves IFT's ½MMD² at the fine bandwidth 20x below the MMD flow's, a
    split of 50/50 only 4x."""
    shares = [max(1, max_iter // 10)] * (n_phases - 1)
    return [*shares, max(0, max_iter - sum(shares))]


def _phase_bandwidths(estimator) -> list[float]:
    """The bandwidths of a fitted estimator's phases, in order."""
    schedule = np.asarray(getattr(estimator, "bandwidth_schedule_", []))
    if schedule.size == 0:
        return [estimator.bandwidth_]
    starts = np.flatnonzero(np.r_[True, schedule[1:] != schedule[:-1]])
    return [float(h) for h in schedule[starts]]


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


def _validate_X(estimator, X, **kwargs) -> np.ndarray:
    """``validate_data``, with messages that name the argument ``X`` (some of
    scikit-learn's say only "array") and that say sparse input is not supported."""
    if is_dask_array(X):
        from sklearn.utils import check_array

        from .backends._dask import validate_X

        # a defect found by the Dask reductions raises what NumPy input with it would
        return validate_X(estimator, X, check=lambda probe: check_array(
            probe, input_name="X", estimator=estimator), **kwargs)
    if sp.issparse(X):
        raise TypeError(
            f"{type(estimator).__name__} does not support sparse input: X must be a dense "
            f"array; got {type(X).__name__}. Convert it with X.toarray()."
        )
    try:
        return validate_data(estimator, X, **kwargs)
    except ValueError as exc:
        if re.search(r"\bX\b", str(exc)):
            raise
        raise ValueError(f"Invalid X: {exc}") from exc


@dataclass
class _Problem:
    """Everything one run of a flow needs, besides its state: the engine, the kernel and
    the targets, bound to the engine once for the whole run."""

    backend: Backend
    kernel: Kernel
    bound: Targets  # all the targets, weights float64 summing to 1
    batch_size: int | None
    rng: np.random.Generator
    update_weights: bool = True
    const: float = 0.0

    @property
    def stochastic(self) -> bool:
        return self.batch_size is not None and self.batch_size < self.bound.n_samples

    def targets(self) -> Targets:
        """The targets of one iteration: all of them, or a fresh minibatch drawn by weight."""
        if not self.stochastic:
            return self.bound
        return self.bound.minibatch(self.batch_size, self.rng)


@dataclass
class _Evaluation:
    """The energy at a state, and what the next step reuses from the same reduction."""

    energy: float
    magnitude: float  # size of the terms the energy is a difference of (round-off scale)
    cache: dict[str, Any]


class _BaseParticleFlow(BaseEstimator, metaclass=ABCMeta):
    """Validation, initialisation, the time-stepping loop and sampling of a particle flow.

    Subclasses implement ``_evaluate`` (energy at a state), ``_step`` (one time step) and
    ``_auto_step_size``.
    """

    _parameter_constraints: dict = {
        "bandwidth": [
            Interval(numbers.Real, 0, None, closed="neither"),
            StrOptions(set(BANDWIDTH_RULES)),
        ],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "beta": [Interval(numbers.Real, 0, None, closed="left")],
        "step_size": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "backend": [StrOptions(BACKEND_NAMES), Backend],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callback": [callable, None],
        "warm_start": ["boolean"],
    }

    # the fitted attribute that holds the atoms, and the number of atoms parameter
    _atoms_attr = "particles_"
    _n_atoms_param = "n_particles"

    # --- hooks -------------------------------------------------------------------------
    @abstractmethod
    def _evaluate(self, problem: _Problem, x, w, targets, carry=None) -> _Evaluation:
        """The energy at the state ``(x, w)``, and what the next step reuses.

        ``carry`` is what the step that produced this state computed at the same positions
        and targets (``None`` when there is nothing to reuse)."""

    @abstractmethod
    def _step(self, problem: _Problem, x, w, ev: _Evaluation, targets, tau: float):
        """One time step of length ``tau`` from ``(x, w)``: returns ``(x_new, w_new,
        carry)``, ``carry`` for the evaluation of the new state (or ``None``)."""

    def _regrow_step(self, tau: float, start: float) -> float:
        """The step after an accepted one, under the safeguard of ``step_size="auto"``
        (``tau`` itself by default: a halved step stays halved)."""
        return tau

    @abstractmethod
    def _auto_step_size(self, problem: _Problem, ev: _Evaluation) -> float:
        """The step size ``step_size='auto'`` starts from, given the initial state's
        evaluation."""

    # --- fit: the same for every flow ---------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Run the flow from the initial particles onto the samples ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples of the target distribution (float32 stays float32).
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights of the samples; normalised to sum to 1.

        Returns
        -------
        self

        Notes
        -----
        ``X`` (and ``sample_weight``) may be dask arrays: the run then goes to the Dask
        engine (:class:`skgradflow.backends.DaskBackend`, whose workers use ``backend``
        as their inner engine), and the rows stay on the workers.
        """
        self._validate_params()
        with dask_session(self.backend, X, sample_weight):
            return self._fit(X, sample_weight)

    def _fit(self, X, sample_weight):
        X = _validate_X(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        b = self._check_sample_weight(sample_weight, X)
        self._check_flow_params()
        X = self._working_coordinates(X, b)
        rng = np.random.default_rng(_seed_from(check_random_state(self.random_state)))

        # the number of distinct samples of positive weight (a sort of the data), counted once
        # and only if a rule needs it
        counted: list[int] = []

        def distinct() -> int:
            if not counted and is_dask_array(X):
                from .backends._dask import count_positive

                # continuous data has no repeats; counting them would sort the whole array
                counted.append(count_positive(b))
            if not counted:
                counted.append(len(np.unique(X[b > 0], axis=0)))
            return counted[0]

        n_atoms = self._n_atoms(distinct)
        resume = self._warm_state(X, n_atoms)
        schedule = self._bandwidth_schedule(X, b, rng, distinct)
        if resume is not None:
            # a warm fit continues where the last ended: at its final bandwidth, without
            # annealing again
            schedule = schedule[-1:]
        self.bandwidth_ = schedule[0]
        if resume is None:
            x = self._initial_particles(X, b, rng, n_atoms)
            w = np.full(x.shape[0], 1.0 / x.shape[0])
            tau0 = None
        else:
            x, w, tau0 = resume
        # one phase per bandwidth: all but the last run a fixed share of max_iter (the
        # stopping rule judges the last)
        shares = _phase_shares(self.max_iter, len(schedule))
        name, curve, n_done, tau, in_force = type(self).__name__, [], 0, tau0, []
        for phase, (h, budget) in enumerate(zip(schedule, shares, strict=True)):
            last = phase == len(schedule) - 1
            self.bandwidth_ = h
            problem = self._make_problem(X, b, self._kernel(), x.shape[0], rng)
            self._prepare(problem, x.shape[0])
            x, w, tau, n_iter, converged, losses, stopped = self._run_flow(
                problem, x, w, name if len(schedule) == 1 else f"{name} (bandwidth {h:.3g})",
                step_size=tau if phase == 0 else _carried_step(self, tau),
                callback=_shifted(self.callback, n_done), max_iter=budget,
                tol=None if last else 0.0, progress=(n_done, self.max_iter),
                # the rule compares with the decrease since the phase began: a fine phase
                # that starts with a large drop would stop long before its budget is of use
                min_iter=budget // 2 if len(schedule) > 1 else 0,
            )
            # the energy of a new bandwidth is another function: the curve keeps the energy
            # in force at each iteration, so it may jump where the bandwidth changes
            curve.extend(losses if phase == 0 else losses[1:])
            in_force.extend([h] * n_iter)
            n_done += n_iter
            if stopped:
                break
        self.bandwidth_schedule_ = np.asarray(in_force, dtype=np.float64)
        setattr(self, self._atoms_attr, x)
        self.weights_ = w
        self.step_size_ = tau
        self.n_iter_ = n_done
        self.converged_ = converged
        self.loss_curve_ = np.asarray(curve)
        self.backend_ = problem.backend.device
        self._after_fit()
        return self

    def _working_coordinates(self, X: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The samples in the coordinates the flow runs in (``X`` itself by default; a flow
        that changes them maps its atoms back in ``_after_fit`` and ``_public_atoms``)."""
        return X

    def _public_atoms(self, x: np.ndarray) -> np.ndarray:
        """The atoms of the state ``x`` as callbacks see them (``x`` itself by default)."""
        return x

    def _after_fit(self) -> None:
        """Fitted attributes a flow adds at the end of ``fit`` (none by default)."""

    def _bandwidth_schedule(self, X: np.ndarray, b: np.ndarray, rng, distinct) -> list[float]:
        """The bandwidths of the fit's phases: one, for a float or a rule.  ``distinct()``
        counts the distinct samples of positive weight."""
        return [resolve_bandwidth(self.bandwidth, X, b, random_state=rng)]

    # n_particles="auto" (n_components="auto"): one atom per this many distinct samples of
    # positive weight, and at most this many atoms.  Distinct rows, not rows: integer
    # sample_weight must give the fit of the repeated rows, and zero weights that of the rows
    # removed (scikit-learn's sample-weight equivalence).
    _auto_samples_per_atom = 1
    _auto_max_atoms = 500

    def _n_atoms(self, distinct) -> int:
        """The number of atoms of this fit: the parameter, or its "auto" value."""
        value = getattr(self, self._n_atoms_param)
        if not isinstance(value, str):
            return int(value)
        if not isinstance(self.init, str):  # an array: its rows (checked in _check_init)
            init = np.asarray(self.init)
            return init.shape[0] if init.ndim == 2 else 1
        return max(1, min(self._auto_max_atoms, -(-distinct() // self._auto_samples_per_atom)))

    def _warm_state(self, X: np.ndarray, n_atoms: int):
        """``(atoms, weights, step size)`` to resume from with ``warm_start=True`` (copies,
        in the dtype of ``X``), or ``None`` for a fresh start."""
        if not self.warm_start or not hasattr(self, "weights_"):
            return None
        atoms = getattr(self, self._atoms_attr)
        if atoms.shape != (n_atoms, X.shape[1]):
            raise ValueError(
                f"warm_start=True resumes from the fitted {self._atoms_attr} of shape "
                f"{atoms.shape}, but this fit asks for ({self._n_atoms_param}, n_features) = "
                f"({n_atoms}, {X.shape[1]}). Set warm_start=False to start afresh."
            )
        tau = None if isinstance(self.step_size, str) else float(self.step_size)
        return (atoms.astype(X.dtype, copy=True), np.array(self.weights_, dtype=np.float64),
                self.step_size_ if tau is None else tau)

    @abstractmethod
    def _kernel(self, bandwidth: float | None = None) -> Kernel:
        """The kernel of the flow, at ``bandwidth`` (by default ``bandwidth_``)."""

    def _prepare(self, problem: _Problem, n_particles: int) -> None:
        """Once-per-run work before the first iteration (nothing by default)."""

    def _check_flow_params(self) -> None:
        """Checks of parameter combinations that are invalid together (none by default)."""

    # --- validation ----------------------------------------------------------------------
    def _check_sample_weight(self, sample_weight, X) -> np.ndarray:
        if is_dask_array(sample_weight) and not is_dask_array(X):
            raise ValueError(
                "sample_weight is a dask array but X is not: pass X as a dask array too, or "
                "sample_weight as a NumPy array."
            )
        if is_dask_array(X):
            from .backends._dask import check_sample_weight

            return check_sample_weight(sample_weight, X, self._check_sample_weight)
        try:
            b = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        except ValueError as exc:
            if "sample_weight" in str(exc):
                raise
            raise ValueError(f"Invalid sample_weight: {exc}") from exc
        total = b.sum()
        if not total > 0:
            raise ValueError("sample_weight must have a positive sum; got all zeros.")
        return b / total

    def _check_init(self, X: np.ndarray, n_atoms: int) -> np.ndarray | None:
        if isinstance(self.init, str):
            return None
        init = np.asarray(self.init)
        if init.ndim != 2 or init.shape != (n_atoms, X.shape[1]):
            raise ValueError(
                f"init must be one of {sorted(self._parameter_constraints['init'][0].options)} "
                f"or an array of shape ({self._n_atoms_param}, n_features) = "
                f"({n_atoms}, {X.shape[1]}); got an array of shape {init.shape}."
            )
        if not np.issubdtype(init.dtype, np.number) or not np.all(np.isfinite(init)):
            raise ValueError("init must be an array of finite numbers.")
        return init.astype(X.dtype, copy=True)

    def _initial_particles(self, X: np.ndarray, b: np.ndarray, rng, n: int) -> np.ndarray:
        given = self._check_init(X, n)
        if given is not None:
            return given
        if is_dask_array(X):
            from .backends._dask import initial_particles

            return initial_particles(self.init, X, b, rng, n, self._n_atoms_param)
        if self.init == "subsample":
            rows = rng.choice(X.shape[0], size=n, replace=n > np.count_nonzero(b), p=b)
            return X[rows].copy()
        if self.init in ("kmeans++", "kmeans"):
            if n > np.count_nonzero(b):
                raise ValueError(
                    f"init={self.init!r} needs {self._n_atoms_param}={n} <= the number of "
                    f"samples with positive weight ({np.count_nonzero(b)})."
                )
            seed = int(rng.integers(np.iinfo(np.int32).max))
            return cluster_centers(self.init, X, b, n, seed)
        # "gaussian": the normal distribution with the target's (weighted) mean and covariance
        mean, root = _moments(X, b)
        z = rng.standard_normal((n, X.shape[1]))
        return (mean + z @ root.T).astype(X.dtype)

    # kernel reductions per iteration, and whether they sum over the atoms as well as the
    # targets, for backend="auto"
    _reductions_per_iteration = 2
    _sources_include_atoms = True

    def _make_problem(
        self, Y, b, kernel, n_points, rng, update_weights=True, minibatches=True,
        on_client=False,
    ) -> _Problem:
        batch = int(self.batch_size) if minibatches and self.batch_size is not None else None
        n_src = (batch or Y.shape[0]) + (n_points if self._sources_include_atoms else 0)
        backend = self.backend
        if is_dask_array(Y):
            from .backends._dask import as_dask_engine

            # rows on the workers: the named backend is the engine of each chunk
            backend = as_dask_engine(backend)
        backend = resolve_backend(
            backend, n_points * n_src, n_calls=self._reductions_per_iteration * self.max_iter
        )
        if on_client and isinstance(backend, DaskBackend):
            # targets as small as a fitted measure stay here, where the Dask engine runs its
            # reductions over explicit arrays: no cluster needed after the fit
            bound = HostTargets(backend, Y, b)
        else:
            bound = backend.bind(Y, b)
        return _Problem(backend, kernel, bound, batch, rng, update_weights)

    # --- the loop ------------------------------------------------------------------------
    def _run_flow(self, problem: _Problem, x, w, desc: str, energy_scale: float = 0.0,
                  step_size: float | None = None, callback=None, max_iter: int | None = None,
                  verbose: int | None = None, tol: float | None = None, warn: bool = True,
                  progress: tuple[int, int] | None = None, min_iter: int = 0):
        """Time-step from ``(x, w)`` until ``tol``, ``max_iter`` or the callback stops it.

        With ``step_size="auto"``, a step that raises the energy is rejected and retried
        with half the step size (full-batch runs only: minibatch energies are noisy).
        ``energy_scale`` is a floor for the decrease the stopping rule compares with, for
        runs that start near their end (``transform`` of points already in place).
        ``step_size`` overrides the initial step (a warm start resumes from its last one);
        ``callback(state)`` is called after every iteration and stops the run by returning
        ``True``.  ``max_iter``, ``verbose`` and ``tol`` override the estimator's; ``warn=False``
        raises no ConvergenceWarning (for runs whose cap is deliberate); ``progress`` is
        ``(iterations done before, total)`` for a phase of a longer run.  Returns
        ``x, w, step_size, n_iter, converged, loss_curve, stopped`` (``stopped``: by the
        callback).  The stopping rule is not consulted before ``min_iter`` iterations.
        """
        max_iter = self.max_iter if max_iter is None else max_iter
        tol = self.tol if tol is None else tol
        targets = problem.targets()
        ev = self._evaluate(problem, x, w, targets)
        if not np.isfinite(ev.energy):
            raise ValueError("The initial energy is not finite; check the data and init.")
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
                    x_new, w_new, carry = self._step(problem, x, w, ev, targets, tau)
                if not (np.all(np.isfinite(x_new)) and np.all(np.isfinite(w_new))):
                    if guard:
                        tau *= 0.5
                        continue
                    raise _flow_diverged("the particles or their weights", tau)
                with np.errstate(over="ignore", invalid="ignore"):
                    # a minibatch run evaluates on fresh targets: nothing carries over
                    carry = carry if next_targets is targets else None
                    ev_new = self._evaluate(problem, x_new, w_new, next_targets, carry)
                if not np.isfinite(ev_new.energy):
                    if guard:
                        tau *= 0.5
                        continue
                    raise _flow_diverged("the energy", tau)
                slack = 64 * np.finfo(x.dtype).eps * max(ev.magnitude, ev_new.magnitude)
                if not guard or ev_new.energy <= ev.energy + slack:
                    break
                tau *= 0.5
            else:
                # no step size lowers the energy any further: a stationary point
                n_iter -= 1
                converged = True
                break
            x, w, ev, targets = x_new, w_new, ev_new, next_targets
            if guard:
                tau = self._regrow_step(tau, start_tau)
            losses.append(ev.energy)
            progress.update(n_iter, ev.energy)
            if callback is not None and callback(
                make_state(n_iter, self._public_atoms(x), w, ev.energy, tau)
            ):
                stopped = True
                break
            if tol > 0 and n_iter >= min_iter and self._has_converged(losses, energy_scale, tol):
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
        return x, w, tau, n_iter, converged, np.asarray(losses), stopped

    def _has_converged(self, losses: list[float], energy_scale: float = 0.0,
                       tol: float | None = None) -> bool:
        tol = self.tol if tol is None else tol
        if len(losses) < 2 * _WINDOW + 1:
            return False
        before = float(np.mean(losses[-2 * _WINDOW : -_WINDOW]))
        last = float(np.mean(losses[-_WINDOW:]))
        progress = losses[0] - last
        return (before - last) <= tol * max(progress, energy_scale)

    # --- public API shared by every flow -------------------------------------------------
    def _fitted_measure(self) -> tuple[np.ndarray, np.ndarray]:
        """The fitted atoms and their weights, normalised to sum to 1."""
        check_is_fitted(self)
        w = np.asarray(self.weights_, dtype=np.float64)
        return getattr(self, self._atoms_attr), w / w.sum()

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """Draw samples from the fitted weighted particle measure.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Makes the draw reproducible.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            Particles drawn with probability proportional to their weight.
        """
        n_samples = self._check_n_samples(n_samples)
        atoms, w = self._fitted_measure()
        rng = np.random.default_rng(_seed_from(check_random_state(random_state)))
        rows = rng.choice(atoms.shape[0], size=int(n_samples), replace=True, p=w)
        return atoms[rows] + self._sample_noise(int(n_samples), atoms.shape[1], rng)

    @staticmethod
    def _check_n_samples(n_samples) -> int:
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}.")
        return int(n_samples)

    def _sample_noise(self, n_samples: int, n_features: int, rng) -> np.ndarray | float:
        """What is added to the drawn atoms: nothing for a particle measure."""
        return 0.0

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if tags.transformer_tags is not None:
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class _BaseMMDFlow(OneToOneFeatureMixin, TransformerMixin, _BaseParticleFlow):
    """A flow of the energy ``F(μ) = ½ MMD²(μ, π̂)``: the witness, the transport step,
    fit, score and transform.  Subclasses own the weight step."""

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
    }

    def _kernel(self, bandwidth: float | None = None) -> Kernel:
        return Kernel(self.kernel, self.bandwidth_ if bandwidth is None else bandwidth)

    def _bandwidth_schedule(self, X: np.ndarray, b: np.ndarray, rng, distinct) -> list[float]:
        """``"anneal"``: the median rule, wide enough to carry mass across the data, for the
        first tenth of the run, then Scott's rule, at the scale of the modes, for the rest
        (where the stopping rule waits for half of that phase).

        Scott's ``n`` is the number of distinct samples of positive weight, as for
        ``n_particles="auto"``: integer ``sample_weight`` then fits as repeated rows would
        (the effective sample size ``1/Σb²`` would not)."""
        if self.bandwidth != "anneal":
            return super()._bandwidth_schedule(X, b, rng, distinct)
        wide = resolve_bandwidth("median", X, b, random_state=rng)
        if self.kernel == "energy":  # no bandwidth to anneal: the median's length scale
            return [wide]
        fine = resolve_bandwidth("scott", X, b, random_state=rng, n_samples=distinct())
        return [wide, fine] if fine < wide else [wide]

    def _prepare(self, problem: _Problem, n_particles: int) -> None:
        problem.const = self._target_energy(problem, n_particles)

    def _check_flow_params(self) -> None:
        if not self.conserve_mass and self.kernel == "energy":
            raise ValueError(
                "kernel='energy' requires conserve_mass=True: the energy kernel is only "
                "conditionally positive definite, so the MMD is unbounded below over "
                "unnormalised measures."
            )

    def _auto_step_size(self, problem: _Problem, ev: _Evaluation) -> float:
        kernel = problem.kernel
        # Transport: τα ≲ h²/2, the inverse Lipschitz constant of ∇f for the Gaussian and
        # IMQ kernels (also used for the Laplacian, whose gradient jumps at r = 0).  The
        # energy kernel's gradient is bounded by 2, so a step of τα = h/2 moves a particle
        # at most one length scale; the safeguard takes it from there.
        if self.alpha > 0:
            h = kernel.bandwidth
            return (0.5 * h if kernel.name == "energy" else 0.5 * h * h) / self.alpha
        return 1.0 / self.beta if self.beta > 0 else 1.0

    def _target_energy(self, problem: _Problem, n_particles: int) -> float:
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
    def _evaluate(self, problem: _Problem, x, w, targets: Targets, carry=None) -> _Evaluation:
        """The witness ``f = K_xx w - c`` at the particles, its gradient, and the energy.

        ``c = K_xy b`` and ``∇c`` come from one reduction over the bound targets, or from
        ``carry`` when the weight step already computed them at these positions; the
        particle part is one reduction over the particles."""
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
        return _Evaluation(energy, magnitude, {"grad": grad, "f": f})

    def _step(self, problem: _Problem, x, w, ev: _Evaluation, targets: Targets, tau: float):
        # Wasserstein step: x_i ← x_i - τα ∇f(x_i), the velocity field (not scaled by w_i)
        x_new = x - (tau * self.alpha) * ev.cache["grad"] if self.alpha > 0 else x
        if problem.update_weights and self.beta > 0:
            return (x_new, *self._weight_step(problem, x_new, w, targets, tau))
        return x_new, w, None

    @abstractmethod
    def _weight_step(self, problem: _Problem, x, w, targets: Targets, tau: float):
        """The weights after the reaction part of a step, at the moved particles ``x``, and
        the carry of :meth:`_reduce_at_moved` for the next evaluation."""

    def _reduce_at_moved(self, problem: _Problem, x, w, targets: Targets, row_sums=False):
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
    def score(self, X, y=None, sample_weight=None) -> float:
        """Minus the energy distance between the fitted particle measure and ``X``.

        Higher is better.  The energy distance has no bandwidth, so scores of fits with
        different bandwidths or kernels are comparable (what ``GridSearchCV`` needs).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        float
        """
        from .metrics import energy_distance

        check_is_fitted(self)
        with dask_session(self.backend, X, sample_weight, arrays_only=True):
            X = _validate_X(self, X, dtype=self.particles_.dtype, reset=False)
            if sample_weight is not None:
                sample_weight = self._check_sample_weight(sample_weight, X)
            atoms, w = self._fitted_measure()
            return -energy_distance(
                atoms, X, x_weights=w, y_weights=sample_weight, backend=self.backend
            )

    def transform(self, X):
        """Move the points of ``X`` toward the fitted distribution and return them.

        The points form a uniform measure that follows the transport part of the flow
        (Wasserstein gradient flow of the MMD, weights fixed) toward the fitted particle
        measure, with this estimator's kernel, bandwidth, ``alpha``, step size,
        ``max_iter`` and ``tol``.  The points interact, so the result depends on the
        whole set: distribution matching, not a point-wise map.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            New array; ``X`` is not modified.  For a dask array, a dask array with its
            row chunks: the points interact, so they are gathered and moved together.
        """
        check_is_fitted(self)
        if is_dask_array(X):
            import dask.array as da

            with dask_session(self.backend, X):
                Z = _validate_X(self, X, dtype=[np.float64, np.float32], reset=False)
                moved = self._move(np.array(Z.compute()), f"{type(self).__name__}.transform")
            return da.from_array(moved, chunks=(Z.chunks[0], -1))
        Z = _validate_X(self, X, dtype=[np.float64, np.float32], reset=False, copy=True)
        return self._move(Z, f"{type(self).__name__}.transform")

    def _move(self, Z: np.ndarray, desc: str, max_iter: int | None = None,
              verbose: int | None = None, warn: bool = True, final: bool = False) -> np.ndarray:
        """The points ``Z`` (validated, owned) after the transport flow of ``transform``,
        through the bandwidths of the fit's phases in turn (the last only with ``final``),
        each for a share of ``max_iter``."""
        if self.alpha == 0 or Z.shape[0] == 0:
            return Z
        atoms, b = self._fitted_measure()
        rng = np.random.default_rng(0)
        phases = [self.bandwidth_] if final else _phase_bandwidths(self)
        shares = _phase_shares(self.max_iter if max_iter is None else max_iter, len(phases))
        w = np.full(Z.shape[0], 1.0 / Z.shape[0])
        # points that start in place make no progress to compare with: the scale of the
        # energies of the fit stands in for it
        scale = float(abs(self.loss_curve_[0] - self.loss_curve_[-1]))
        for h, share in zip(phases, shares, strict=True):
            # the fitted measure is small: every iteration uses all of it, whatever batch_size
            problem = self._make_problem(
                atoms.astype(Z.dtype), b, self._kernel(h), Z.shape[0], rng,
                update_weights=False, minibatches=False, on_client=True,
            )
            self._prepare(problem, Z.shape[0])
            Z, *_ = self._run_flow(problem, Z, w, desc, scale, max_iter=share, verbose=verbose,
                                   warn=warn and h == phases[-1])
        return Z

    def sample(self, n_samples: int = 1, random_state: Any = None, *,
               method: str = "transport") -> np.ndarray:
        """Draw new samples of the fitted distribution.

        ``method="transport"`` (default) returns new, distinct points: draws of the
        particles by weight (systematic resampling: each particle ``⌊N w_i⌋`` or
        ``⌈N w_i⌉`` times in a batch of ``N``), each moved off its particle by Gaussian
        noise with a tenth of the fitted measure's standard deviation in every direction,
        then moved together
        for at most 20 iterations by the transport flow of :meth:`transform` onto the
        fitted weighted measure, in batches of ``n_particles`` points (the last batch is
        drawn whole and cut), so that each batch spreads over the fitted measure instead
        of piling onto its heaviest particles.  The cost grows linearly with
        ``n_samples``.  ``method="particles"`` returns weighted draws of the particles
        themselves (copies, with repeats).

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Makes the draw reproducible.
        method : {"transport", "particles"}, default="transport"

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            In the dtype of the fitted particles.

        Examples
        --------
        >>> import numpy as np
        >>> from skgradflow import IFTSampler
        >>> X = np.random.default_rng(0).normal(size=(300, 2))
        >>> sampler = IFTSampler(n_particles=50, max_iter=50, tol=0, random_state=0).fit(X)
        >>> new = sampler.sample(200, random_state=0)
        >>> new.shape, len(np.unique(new, axis=0))
        ((200, 2), 200)
        """
        if method not in ("transport", "particles"):
            raise ValueError(
                f"method must be 'transport' or 'particles'; got {method!r}."
            )
        if method == "particles":
            return super().sample(n_samples, random_state)
        n = self._check_n_samples(n_samples)
        atoms, w = self._fitted_measure()
        rng = np.random.default_rng(_seed_from(check_random_state(random_state)))
        N, d = atoms.shape
        # the noise is shaped like the fitted measure, so that a direction in which it does
        # not spread (a constant feature, data on a line) gets none
        root = 0.1 * _moments(atoms, w)[1]
        batches = []
        cumulative = np.cumsum(w)
        for start in range(0, n, N):
            # systematic resampling: each particle is drawn ⌊N w_i⌋ or ⌈N w_i⌉ times, so a
            # batch carries the fitted weights without the noise of independent draws
            u = (rng.uniform() + np.arange(N)) / N
            rows = np.minimum(np.searchsorted(cumulative, u * cumulative[-1]), N - 1)
            # in random order, so that a last, cut batch is a random part of a whole one
            rows = rng.permutation(rows)
            Z = atoms[rows] + (rng.standard_normal((N, d)) @ root.T).astype(atoms.dtype)
            # one progress bar per batch would flood the terminal: the batches run quietly
            moved = self._move(Z, f"{type(self).__name__}.sample", max_iter=_SAMPLE_ITERATIONS,
                               verbose=0, warn=False, final=True)
            batches.append(moved[: n - start])
        return np.concatenate(batches)
