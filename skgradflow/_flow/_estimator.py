"""The estimator base of every particle flow: parameters, validation through the data
layer, initialisation, warm starts, the phases of a fit around the shared loop, and draws of
the fitted measure.

A flow subclass owns only its step (see ``ift.py``); ``_mmd.py`` adds what the two MMD
samplers share.
"""

from __future__ import annotations

import numbers
from abc import ABCMeta, abstractmethod
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._clustering import cluster_centers
from .._guards import (
    check_bandwidth_range,
    check_data_range,
    check_sample_size,
    fit_transaction,
)
from ..backends import BACKEND_NAMES, Backend
from ..data import Data, as_data, session
from ..kernels import BANDWIDTH_RULES, Kernel, _seed_from
from ._draws import systematic_draw
from ._loop import RunLoop, _carried_step, _phase_shares, _shifted
from ._state import Evaluation, FlowState, Problem


def auto_atoms(n_distinct: int, samples_per_atom: int, max_atoms: int) -> int:
    """``"auto"``'s count: one atom per ``samples_per_atom`` distinct samples, rounded up,
    at least one and at most ``max_atoms``."""
    return max(1, min(max_atoms, -(-n_distinct // samples_per_atom)))


class _BaseParticleFlow(RunLoop, BaseEstimator, metaclass=ABCMeta):
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
    def _evaluate(self, problem: Problem, state: FlowState, targets,
                  carry=None) -> Evaluation:
        """The energy at ``state``, and what the next step reuses.

        ``carry`` is what the step that produced this state computed at the same positions
        and targets (``None`` when there is nothing to reuse)."""

    @abstractmethod
    def _step(self, problem: Problem, state: FlowState, ev: Evaluation, targets, tau: float):
        """One time step of length ``tau`` from ``state``: returns ``(new_state, carry)``,
        ``carry`` for the evaluation of the new state (or ``None``)."""

    def _regrow_step(self, tau: float, start: float) -> float:
        """The step after an accepted one, under the safeguard of ``step_size="auto"``
        (``tau`` itself by default: a halved step stays halved)."""
        return tau

    @abstractmethod
    def _auto_step_size(self, problem: Problem, ev: Evaluation) -> float:
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

        A fit is a transaction: one that raises (``KeyboardInterrupt`` included) leaves the
        estimator as it was before the call, fitted as before or not fitted.  ``X`` whose
        squared distances its dtype cannot hold (values beyond about 1e150, or a spread
        below about 1e-150, in float64), and such a ``bandwidth``, are refused with a
        ``ValueError`` that says how to rescale.
        """
        self._validate_params()
        with fit_transaction(self), session(self.backend, X, sample_weight):
            data = as_data(X, sample_weight, estimator=self, dtype=[np.float64, np.float32],
                           min_samples=2)
            check_data_range(*data.extent(), data.dtype)
            if isinstance(self.bandwidth, numbers.Real):
                check_bandwidth_range(float(self.bandwidth), data.dtype)
            return self._fit(data.merged())

    def _fit(self, data: Data):
        """The run on validated data (in canonical form: repeated rows merged)."""
        self._check_flow_params()
        data = self._working_coordinates(data)
        rng = self._fit_rng()
        n_atoms = self._n_atoms(data)
        resume = self._warm_state(data, n_atoms)
        schedule = self._bandwidth_schedule(data, rng)
        if resume is not None:
            # a warm fit continues where the last ended: at its final bandwidth, without
            # annealing again
            schedule = schedule[-1:]
        self.bandwidth_ = schedule[0]
        if resume is None:
            state, tau0 = self._initial_state(data, rng, n_atoms), None
        else:
            state, tau0 = resume
        # one phase per bandwidth: all but the last run a fixed share of max_iter (the
        # stopping rule judges the last)
        shares = _phase_shares(self.max_iter, len(schedule))
        name, curve, n_done, tau, in_force = type(self).__name__, [], 0, tau0, []
        n = state.atoms.shape[0]
        for phase, (h, budget) in enumerate(zip(schedule, shares, strict=True)):
            last = phase == len(schedule) - 1
            self.bandwidth_ = h
            problem = self._make_problem(data, self._kernel(), n, rng)
            self._prepare(problem, n)
            state, tau, n_iter, converged, losses, stopped = self._run_flow(
                problem, state, name if len(schedule) == 1 else f"{name} (bandwidth {h:.3g})",
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
        self.step_size_ = tau
        self.n_iter_ = n_done
        self.converged_ = converged
        self.loss_curve_ = np.asarray(curve)
        self.backend_ = problem.backend.device
        self._set_fitted_state(state)
        return self

    def _set_fitted_state(self, state: FlowState) -> None:
        """The fitted attributes of the final state (the atoms and their weights)."""
        setattr(self, self._atoms_attr, state.atoms)
        self.weights_ = state.weights

    def _working_coordinates(self, data: Data) -> Data:
        """The samples in the coordinates the flow runs in (``data`` itself by default; a
        flow that changes them maps its atoms back in ``_set_fitted_state`` and
        ``_public_atoms``)."""
        return data

    def _public_atoms(self, state: FlowState) -> np.ndarray:
        """The atoms of ``state`` as callbacks see them (its atoms by default)."""
        return state.atoms

    def _bandwidth_schedule(self, data: Data, rng) -> list[float]:
        """The bandwidths of the fit's phases: one, for a float or a rule."""
        return [data.bandwidth(self.bandwidth, rng)]

    # n_particles="auto" (n_components="auto"): one atom per this many distinct samples of
    # positive weight, and at most this many atoms.  Distinct rows, not rows: integer
    # sample_weight must give the fit of the repeated rows, and zero weights that of the rows
    # removed (scikit-learn's sample-weight equivalence).
    _auto_samples_per_atom = 1
    _auto_max_atoms = 500

    def _n_atoms(self, data: Data) -> int:
        """The number of atoms of this fit: the parameter, or its "auto" value."""
        value = getattr(self, self._n_atoms_param)
        if not isinstance(value, str):
            return int(value)
        if self._resuming():  # "auto" keeps the number it resumes from, whatever chose it
            return getattr(self, self._atoms_attr).shape[0]
        if not isinstance(self.init, str):  # an array: its rows (checked in _check_init)
            init = np.asarray(self.init)
            return init.shape[0] if init.ndim == 2 else 1
        return auto_atoms(data.n_distinct(), self._auto_samples_per_atom, self._auto_max_atoms)

    def _resuming(self) -> bool:
        """Whether this fit resumes from the fitted state (``warm_start`` on a fitted
        estimator)."""
        return self.warm_start and hasattr(self, "weights_")

    def _fit_rng(self) -> np.random.Generator:
        """The generator of one fit's random choices, from ``random_state``."""
        return np.random.default_rng(_seed_from(check_random_state(self.random_state)))

    def _warm_state(self, data: Data, n_atoms: int) -> tuple[FlowState, float] | None:
        """``(state, step size)`` to resume from with ``warm_start=True`` (copies, in the
        dtype of the data), or ``None`` for a fresh start."""
        if not self._resuming():
            return None
        atoms = getattr(self, self._atoms_attr)
        if atoms.shape != (n_atoms, data.n_features):
            raise ValueError(
                f"warm_start=True resumes from the fitted {self._atoms_attr} of shape "
                f"{atoms.shape}, but this fit asks for ({self._n_atoms_param}, n_features) = "
                f"({n_atoms}, {data.n_features}). Set warm_start=False to start afresh."
            )
        tau = None if isinstance(self.step_size, str) else float(self.step_size)
        state = FlowState(atoms.astype(data.dtype, copy=True),
                          np.array(self.weights_, dtype=np.float64))
        return state, self.step_size_ if tau is None else tau

    @abstractmethod
    def _kernel(self, bandwidth: float | None = None) -> Kernel:
        """The kernel of the flow, at ``bandwidth`` (by default ``bandwidth_``)."""

    def _prepare(self, problem: Problem, n_particles: int) -> None:
        """Once-per-run work before the first iteration (nothing by default)."""

    def _check_flow_params(self) -> None:
        """Checks of parameter combinations that are invalid together (none by default)."""

    # --- validation ----------------------------------------------------------------------
    def _check_init(self, data: Data, n_atoms: int) -> np.ndarray | None:
        if isinstance(self.init, str):
            return None
        init = np.asarray(self.init)
        if init.ndim != 2 or init.shape != (n_atoms, data.n_features):
            raise ValueError(
                f"init must be one of {sorted(self._parameter_constraints['init'][0].options)} "
                f"or an array of shape ({self._n_atoms_param}, n_features) = "
                f"({n_atoms}, {data.n_features}); got an array of shape {init.shape}."
            )
        if not np.issubdtype(init.dtype, np.number) or not np.all(np.isfinite(init)):
            raise ValueError("init must be an array of finite numbers.")
        return init.astype(data.dtype, copy=True)

    def _initial_state(self, data: Data, rng, n: int) -> FlowState:
        """The state a fresh fit starts from: the initial atoms, with their clusters' masses
        for a k-means start and equal weights otherwise."""
        x, w = self._initial_particles(data, rng, n)
        return FlowState(x, np.full(x.shape[0], 1.0 / x.shape[0]) if w is None else w)

    def _initial_particles(self, data: Data, rng, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The initial atoms, and their weights where the start has its own (else None)."""
        given = self._check_init(data, n)
        if given is not None:
            return given, None
        if self.init == "subsample":
            return data.subsample(n, rng), None
        if self.init in ("kmeans++", "kmeans"):
            positive = data.n_positive()
            if n > positive:
                raise ValueError(
                    f"init={self.init!r} needs {self._n_atoms_param}={n} <= the number of "
                    f"samples with positive weight ({positive})."
                )
            rows, weights = data.clustering_sample(n, rng)
            seed = int(rng.integers(np.iinfo(np.int32).max))
            return cluster_centers(self.init, rows, weights, n, seed)
        # "gaussian": the normal distribution with the target's (weighted) mean and covariance
        mean, root = data.moments()
        z = rng.standard_normal((n, data.n_features))
        return (mean + z @ root.T).astype(data.dtype), None

    # kernel reductions per iteration, and whether they sum over the atoms as well as the
    # targets, for backend="auto"
    _reductions_per_iteration = 2
    _sources_include_atoms = True

    def _make_problem(self, data: Data, kernel: Kernel, n_points: int, rng,
                      update_weights: bool = True, minibatches: bool = True) -> Problem:
        batch = int(self.batch_size) if minibatches and self.batch_size is not None else None
        n_src = (batch or data.n_samples) + (n_points if self._sources_include_atoms else 0)
        engine = data.engine(self.backend, n_points * n_src,
                             n_calls=self._reductions_per_iteration * self.max_iter)
        return Problem(engine, kernel, data.bind(engine), batch, rng, update_weights,
                       effective_size=data.effective_size())

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
            Particles drawn by weight, by systematic resampling in random order (in
            every batch of ``N`` samples, each of the ``N`` particles ``⌊N w_i⌋`` or
            ``⌈N w_i⌉`` times): each row is particle ``i`` with probability ``w_i``, but
            the rows of one call are not independent.
        """
        return self._draw_atoms(n_samples, random_state)

    def _draw_atoms(self, n_samples, random_state) -> np.ndarray:
        """Atoms drawn by weight (systematic resampling), plus the noise of their
        components (if any)."""
        n_samples = self._check_n_samples(n_samples)
        atoms, w = self._fitted_measure()
        rng = np.random.default_rng(_seed_from(check_random_state(random_state)))
        rows = systematic_draw(w, n_samples, rng)
        return atoms[rows] + self._sample_noise(rows, rng)

    def _check_n_samples(self, n_samples) -> int:
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}.")
        atoms = getattr(self, self._atoms_attr, None)
        if atoms is not None:
            # refused in a second, before allocating, rather than swapping until killed; the
            # draw, its noise and the rows' indices are held at once
            check_sample_size(int(n_samples), atoms.shape[1], atoms.dtype, copies=3)
        return int(n_samples)

    def _sample_noise(self, rows: np.ndarray, rng) -> np.ndarray | float:
        """What is added to the atoms drawn (``rows``, their indices): nothing for a
        particle measure."""
        return 0.0

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if tags.transformer_tags is not None:
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

