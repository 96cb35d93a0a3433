"""The Wasserstein–Fisher–Rao flow of the inclusive KL over a Gaussian kernel mixture.

``covariance="data"``, ``"tied"`` and ``"full"`` run the flow below in whitened coordinates,
and ``"full"`` (``"tied"``) moves a covariance per atom (a shared one) too (design page,
"Shaped kernels").

Model density ``μ(z) = Σ_i w_i φ_h(z - x_i)``, ``φ_h`` the ``N(0, h² I)`` density, whose
mixing measure ``ν = Σ_i w_i δ_{x_i}`` is the particle system.  The flow minimises
``KL(π̂ | μ) = -Σ_m b_m log μ(y_m) + const`` over ``ν``; its first variation is
``g(x) = 1 - R(x)``, ``R(x) = Σ_m b_m φ_h(y_m - x) / μ(y_m)``.  One splitting step:

1. Transport: ``x_i ← x_i + (τα / h²) Σ_m b_m φ_h(y_m - x_i) (y_m - x_i) / μ(y_m)``.
2. Fisher–Rao: ``w_i ← w_i exp(τβ (R(x_i) - 1))``, normalised, with ``R`` at the new
   positions.

Everything runs in the log domain: ``log μ(y_m)`` by a LogSumExp over the atoms, and ``R``
and the transport by reductions over the targets of ``exp(log b_m - |y_m - x_i|²/(2h²) -
L_m)``, ``L_m = log Σ_i w_i exp(-|y_m - x_i|²/(2h²))``; no density is ever formed, so
nothing underflows in dimension 64.  ``w_i R(x_i) = Σ_m b_m γ_mi`` with ``γ`` the EM
responsibilities: to first order in ``τβ`` the weight step is ``(1 - τβ) w + τβ EM(w)``.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._flow import Evaluation, FlowState, Problem, _BaseParticleFlow
from ..backends import Targets
from ..data import Data, as_data, session
from ..kernels import BANDWIDTH_RULES, Kernel
from ._bandwidth import leave_one_out_bandwidth
from ._isotropic import _IsotropicSteps
from ._restarts import adopt_fit, fit_best_of, variant
from ._selection import (
    FALLBACK_SAMPLES_PER_COMPONENT,
    MAX_COMPONENTS,
    select_components,
)
from ._shaped import _precision_cholesky, _ShapedSteps, covariances, with_covariances

# the modes covariance="auto" chooses between, by held-out likelihood (_selection.py)
AUTO_MODES = ("isotropic", "tied")
# the modes whose covariances the flow learns
_LEARNT = ("full", "tied")



class InclusiveKLFitter(_ShapedSteps, _IsotropicSteps, _BaseParticleFlow):
    """Gaussian kernel mixture fitted by the WFR gradient flow of the inclusive KL.

    The density ``μ = Σ_i w_i N(x_i, h² I)`` is fitted to the samples by maximum
    likelihood over its mixing measure: atoms ``x_i`` move by the Wasserstein part
    (rate ``alpha``) and weights change by the Fisher–Rao part (rate ``beta``), a damped
    mirror-descent form of EM's weight update.  With ``alpha=0, beta=0`` and atoms at
    all the data points, it is the kernel density estimate.

    Parameters
    ----------
    n_components : int or "auto", default="auto"
        Number of atoms (mixture components); at most the number of samples for
        ``init="kmeans++"`` and ``"kmeans"``.  ``"auto"``: one component per 10, per 3 or per
        1 distinct samples of positive weight (rounded up, at most 500), whichever gives the
        highest mean log-likelihood to a quarter of the samples held out of a fit (with these
        parameters, ``n_init=1``) on the other three quarters; then the fit on all the
        samples (``component_selection_`` keeps the comparison).  Below 20 distinct samples,
        one per three; with an ``init`` array, its number of rows; a warm start keeps the
        number it resumes from.
    bandwidth : float or {"auto", "scott", "silverman", "median"}, default="auto"
        Standard deviation ``h`` of every component.  ``"auto"``: the width of the kernel
        density estimate of the samples with the highest leave-one-out log-likelihood (each
        sample scored under the others), over a grid of 48 factors from 0.02 to 2 of the root
        mean variance of the features, on at most 2000 samples drawn by weight; the fit
        then starts from it (design page, "The default bandwidth").  The rules (see
        :func:`skgradflow.kernels.resolve_bandwidth`) assume a unimodal, roughly Gaussian
        shape and are too wide for thin or multimodal data.  With ``covariance="data"``,
        ``"tied"`` or ``"full"`` it is the factor ``h`` of ``h² Σ̂``, chosen in whitened
        coordinates (``"scott"`` is ``scipy.stats.gaussian_kde``'s factor).  With
        ``covariance="auto"`` each candidate reads it in its own mode's coordinates (a
        float: the width in the units of ``X``, or the factor of the tied shape's start),
        and ``bandwidth_`` is the chosen mode's.
    covariance : {"auto", "isotropic", "data", "tied", "full"}, default="auto"
        Shape of the components.  ``"auto"``: ``"isotropic"`` or ``"tied"``, whichever (with
        its number of components, for ``n_components="auto"``) gives the held-out quarter
        of the samples the highest mean log-likelihood, as ``n_components="auto"`` chooses
        the count (design page, "Isotropic or tied"); ``covariance_mode_`` says which.
        ``"tied"`` follows correlated features (on breast cancer, standardised, it lowers
        the classifier two-sample AUC of the samples from 0.90 to 0.72: benchmarks page);
        below 20 distinct samples (or where a dask array's held-out draw leaves a part
        without weight), ``"isotropic"``; a warm start keeps the mode it resumes from.
        ``"isotropic"``: ``N(x_i, h² I)``.  ``"data"``: one shared shape ``N(x_i, h² Σ̂)``,
        ``Σ̂`` the weighted sample covariance (as ``scipy.stats.gaussian_kde``), the flow
        running in whitened coordinates.
        ``"full"``: ``N(x_i, Σ_i)`` with ``Σ_i`` learnt by the flow, starting at ``h² Σ̂``:
        each component moves up the likelihood in the Fisher geometry of Gaussians, by an
        implicit step that never lowers it and that is an EM iteration as ``alpha`` grows;
        meant for few components (with ``init="kmeans"`` and ``n_init``), each having
        ``d(d+1)/2`` parameters, and ``d²`` times the cost per pair.  ``"tied"``: one shared
        ``N(x_i, Σ)``, ``Σ`` learnt by the same step from the pooled scatter
        (``GaussianMixture``'s "tied").  Choose the mode with ``bandwidth`` (and
        ``reg_covar``) by ``GridSearchCV``.
    reg_covar : float, default=1e-6
        Added to the diagonal of ``Σ̂``, times its mean variance, so that rank-deficient data
        and ``d > n`` get a positive definite ``Σ̂``; with ``"full"`` and ``"tied"``, also the
        weight of the term ``(reg_covar/2) Σ_i tr(Σ̂ Σ_i⁻¹)`` of their objective (an
        inverse-Wishart prior's), which adds ``reg_covar · Σ̂`` over the component's mass to
        every EM update of a covariance, as ``GaussianMixture`` adds ``reg_covar`` to its
        covariances.  Unused by ``"isotropic"``.
    alpha : float, default=1.0
        Rate of the transport of the atoms.
    beta : float, default=1.0
        Rate of the reweighting.
    step_size : float or "auto", default="auto"
        Time step ``τ``.  ``"auto"`` starts from the smaller of ``τα = h²/2`` and ``τβ = 1``
        (the mirror step of the log-likelihood is monotone for ``τβ ≤ 1``), or of ``τα = 1``
        and ``τβ = 1`` for ``"tied"`` and ``"full"`` (whose steps are implicit and monotone
        at any size), and halves ``τ`` whenever a step lowers the likelihood (for the learnt
        shapes, a halved step doubles back after each accepted one).
    max_iter : int, default=500
    tol : float, default=1e-3
        Stop when the mean loss of the last 10 iterations is below that of the 10 before
        them by less than ``tol`` times the decrease achieved since the start (the
        log-likelihood flattens well before 1e-4 would be met), or (full batch, ``tol > 0``)
        by less than a hundredth of the loss's sampling noise: the mean absolute deviation
        of the samples' log-density at the start over ``√M``, ``M = 1/Σb²``.
    init : {"kmeans++", "kmeans", "subsample"} or array of shape (n_components, \
n_features), default="kmeans"
        Initial atoms: k-means++ seeding (weighted by ``sample_weight``), Lloyd's k-means
        from such a seeding (``GaussianMixture``'s initialisation, which few ``"full"``
        components need: the likelihood has many local maxima; by default, as its centroids
        spread less than the samples, the initial mixture is less over-dispersed than one on
        seeded sample rows), a draw of sample rows by weight, or given positions.  The initial
        weights are, for ``"kmeans"`` and ``"kmeans++"``, the weight of the samples nearest
        each atom (as ``GaussianMixture`` starts from its clusters' masses), and uniform
        otherwise.
    n_init : int, default=1
        Number of fits from different initialisations (seeds drawn from ``random_state``,
        so ``n_init=1`` and the first of several runs start differently); the one that ends
        with the highest likelihood of the samples (with the ``reg_covar`` term of
        ``"tied"`` and ``"full"``; for minibatch runs, evaluated on all the samples) is
        kept, with its warnings, as ``GaussianMixture`` does.  A given ``init`` array or a
        warm start runs once.
    batch_size : int or None, default=None
        Samples per iteration: all, or a fresh minibatch drawn with ``sample_weight`` as
        probabilities.
    backend : {"auto", "numba", "keops", "numpy"}, a registered name or a Backend, default="auto"
        See :class:`IFTSampler`.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
    callback : callable or None, default=None
        Called as ``callback(state)`` after every iteration of ``fit``, with a
        :class:`skgradflow.callbacks.FlowState` (``n_iter``, ``means``, ``weights``,
        ``energy`` -- the negative mean log-likelihood -- and ``step_size``); returning
        ``True`` stops the run.  With ``n_init > 1`` it sees every run, each counting its
        iterations from 1.
    warm_start : bool, default=False
        When ``True`` and the estimator is fitted, ``fit`` resumes from ``means_``,
        ``weights_`` and ``step_size_`` (``init`` is ignored).

    Attributes
    ----------
    means_ : ndarray of shape (n_components, n_features)
        The atoms, in the units and dtype of ``X``.
    covariances_ : ndarray
        Covariance of the components, in the units of ``X`` (float64), as
        ``GaussianMixture``'s: shape ``(n_components,)`` (the variance ``h²`` of each
        component) for ``"isotropic"``, ``(n_features, n_features)`` for ``"data"`` and
        ``"tied"`` (shared) and ``(n_components, n_features, n_features)`` for ``"full"``.
    precisions_cholesky_ : ndarray
        Same shape: ``1/h``, or upper triangular ``P`` with ``P Pᵀ`` the precision.
    weights_ : ndarray of shape (n_components,)
        Mixture weights (float64, on the simplex).
    n_components_ : int
        The number of components fitted.
    component_selection_ : dict or None
        For ``n_components="auto"`` or ``covariance="auto"``, the held-out comparison that
        chose them: arrays with an entry per candidate, ``samples_per_component`` (0 for a
        given count), ``n_components`` (on all the samples), ``covariance`` and
        ``held_out_log_likelihood`` (mean over the held-out quarter), and ``chosen``, the
        index of the one kept.  ``None`` where nothing was chosen (an int or an ``init``
        array with a given mode, a warm start, under 20 distinct samples, or a single
        candidate: a given mode at 4991 samples and more, where every count is 500).
    covariance_mode_ : str
        The mode fitted: ``covariance``, or the one ``"auto"`` chose.
    bandwidth_ : float
    bandwidth_schedule_ : ndarray of shape ``(n_iter_,)``
        The bandwidth of each iteration (all ``bandwidth_``).
    step_size_ : float
    n_iter_ : int
    converged_ : bool
    loss_curve_ : ndarray of shape ``(n_iter_ + 1,)``
        Negative mean log-likelihood of the samples, before the first and after each
        iteration; for ``"tied"`` and ``"full"``, plus the ``reg_covar`` term
        ``(reg_covar/2) Σ_i tr(Σ̂ Σ_i⁻¹)`` of their objective.
    backend_ : str
        Where the reductions ran: ``"numpy"``, ``"numba-cpu"``, ``"keops-cpu"`` or
        ``"keops-gpu"``.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape ``(n_features_in_,)``

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow import InclusiveKLFitter
    >>> X = np.random.default_rng(0).normal(size=(300, 2))
    >>> kl = InclusiveKLFitter(n_components=20, random_state=0).fit(X)
    >>> kl.score_samples(X[:2]).shape
    (2,)
    >>> bool(kl.loss_curve_[-1] <= kl.loss_curve_[0])
    True
    >>> shaped = InclusiveKLFitter(n_components=3, covariance="full", random_state=0).fit(X)
    >>> shaped.covariances_.shape
    (3, 2, 2)
    """

    _parameter_constraints: dict = {
        **_BaseParticleFlow._parameter_constraints,
        "bandwidth": [Interval(numbers.Real, 0, None, closed="neither"),
                      StrOptions({*BANDWIDTH_RULES, "auto"})],
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"),
                         StrOptions({"auto"})],
        "init": [StrOptions({"kmeans++", "kmeans", "subsample"}), "array-like"],
        "covariance": [StrOptions({"auto", "isotropic", "data", "tied", "full"})],
        "reg_covar": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
    }
    _atoms_attr = "means_"
    _n_atoms_param = "n_components"
    # "auto" where there is nothing to choose (the held-out selection, _selection.py)
    _auto_samples_per_atom = FALLBACK_SAMPLES_PER_COMPONENT
    _auto_max_atoms = MAX_COMPONENTS
    # the LogSumExp over atoms and the reduction over targets, twice (before and after
    # the transport)
    _reductions_per_iteration = 4
    _sources_include_atoms = False

    def __init__(
        self,
        n_components: int | str = "auto",
        *,
        bandwidth: float | str = "auto",
        covariance: str = "auto",
        reg_covar: float = 1e-6,
        alpha: float = 1.0,
        beta: float = 1.0,
        step_size: float | str = "auto",
        max_iter: int = 500,
        tol: float = 1e-3,
        init="kmeans",
        n_init: int = 1,
        batch_size: int | None = None,
        backend: str = "auto",
        random_state=None,
        verbose: int = 0,
        callback=None,
        warm_start: bool = False,
    ) -> None:
        self.n_components = n_components
        self.bandwidth = bandwidth
        self.covariance = covariance
        self.reg_covar = reg_covar
        self.alpha = alpha
        self.beta = beta
        self.step_size = step_size
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.n_init = n_init
        self.batch_size = batch_size
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.warm_start = warm_start

    def _kernel(self, bandwidth: float | None = None) -> Kernel:
        return Kernel("gaussian", self.bandwidth_ if bandwidth is None else bandwidth)

    def _bandwidth_schedule(self, data: Data, rng) -> list[float]:
        if self.bandwidth != "auto":
            return super()._bandwidth_schedule(data, rng)
        return [leave_one_out_bandwidth(data, rng)]

    def _fit(self, data: Data):
        resume = self._resuming()
        choose_count = self.n_components == "auto" and isinstance(self.init, str)
        choose_mode = self.covariance == "auto"
        if not resume and (choose_count or choose_mode):
            modes = AUTO_MODES if choose_mode else (self.covariance,)
            selection = select_components(self, data, self._fit_rng(), choose_count, modes)
            if selection is not None or choose_mode:
                # the chosen candidate fitted on all the samples; under 20 distinct samples
                # "auto" is isotropic (a shape learnt from so few overfits them)
                params = {"covariance": "isotropic"}
                if selection is not None:
                    k = selection["chosen"]
                    params["covariance"] = str(selection["covariance"][k])
                    if choose_count:
                        params["n_components"] = int(selection["n_components"][k])
                adopt_fit(self, variant(self, **params)._fit(data))
                self.component_selection_ = selection
                return self
        if self.n_init == 1 or resume or not isinstance(self.init, str):
            super()._fit(data)
        else:
            fit_best_of(self, data, lambda run, data: _BaseParticleFlow._fit(run, data))
        self.component_selection_ = None
        self.covariance_mode_ = self._mode
        return self

    @property
    def _mode(self) -> str:
        """The covariance mode of this run: ``covariance``, or with ``"auto"`` (a warm
        start, which keeps the mode it resumes from) the fitted ``covariance_mode_``."""
        return self.covariance_mode_ if self.covariance == "auto" else self.covariance

    def _mean_log_likelihood(self, data: Data) -> float:
        """The weighted mean log density of the fitted mixture over ``data``."""
        log_density = data.map_rows(self._log_density, self.backend, self.means_.shape[0])
        return float((data.weights * log_density.astype(np.float64)).sum())

    # --- the loop's hooks: the isotropic or the shaped step --------------------------------
    def _evaluate(self, problem: Problem, state: FlowState, targets: Targets,
                  carry=None) -> Evaluation:
        if self._mode in _LEARNT:
            return self._evaluate_shaped(state, targets)
        return self._evaluate_isotropic(problem, state, targets)

    def _step(self, problem: Problem, state: FlowState, ev: Evaluation, targets: Targets,
              tau: float):
        if self._mode in _LEARNT:
            return self._step_shaped(state, ev, targets, tau)
        return self._step_isotropic(problem, state, ev, targets, tau)

    def _energy_resolution(self, problem: Problem, ev: Evaluation,
                           targets: Targets) -> tuple[float, None]:
        # The objective is the mean of log μ(y) over M samples (M = 1/Σb²): drawn again, it
        # would differ by about the spread of log μ(y) over √M (here the mean absolute
        # deviation, robust to the long lower tail of a log-density).  A decrease far below
        # that fits the samples' noise: on china colours and the 2-D mixture the default
        # fits then end after 82 and 111 iterations (means of 3 seeds) instead of warning at
        # 300, with the held-out likelihood within 0.015 (benchmarks/notes/
        # sampling-research.md).
        # A log-likelihood has no known least value.
        L, shift, mean = ev.cache["L"], ev.cache["shift"], ev.cache["mean"]
        _, spread = targets.average(L, shift + mean)
        return float(spread) / float(np.sqrt(problem.effective_size)), None

    def _auto_step_size(self, problem: Problem, ev: Evaluation) -> float:
        # in the whitened coordinates of "data" and "full", h is the kernel's scale there
        h = self.bandwidth_
        # the transport of "full" is an implicit step, monotone at any τα: τα = 1 takes
        # components about half way to their EM update
        limit = 1.0 if self._mode in _LEARNT else 0.5 * h * h
        steps = [limit / self.alpha] if self.alpha > 0 else []
        steps += [1.0 / self.beta] if self.beta > 0 else []
        return min(steps, default=1.0)

    def _regrow_step(self, tau: float, start: float) -> float:
        # the learnt shapes share τ between a transport that is safe at any step and a
        # reweighting whose safe step shrinks while a component thins (its mass R_i grows):
        # a step halved there doubles back after each accepted one, up to where it started
        return min(2.0 * tau, start) if self._mode in _LEARNT else tau

    # --- coordinates: whitened for "data" and "full" ------------------------------------
    def _working_coordinates(self, data: Data) -> Data:
        """``"isotropic"``: ``X``.  The shaped modes: ``(X - m) P``, with ``m`` the
        weighted mean and ``P`` the upper triangular square root of the inverse of the
        regularised weighted covariance (``P Pᵀ = Σ̂⁻¹``): there ``Σ̂`` is the identity, the
        kernel ``N(0, h² Σ̂)`` is ``N(0, h² I)``, and the bandwidth rules give the factor
        of ``scipy.stats.gaussian_kde``."""
        self._whiten = None
        if self._mode == "isotropic":
            return data
        mean, cov = _data_covariance(data, self.reg_covar)
        P = _precision_cholesky(cov[None])[0]
        self._whiten = (mean, P, np.linalg.inv(P), float(np.log(np.diag(P)).sum()))
        return data.with_rows(((data.rows.astype(np.float64) - mean) @ P).astype(data.dtype))

    def _to_working(self, atoms: np.ndarray) -> np.ndarray:
        mean, P, _, _ = self._whiten
        return ((atoms.astype(np.float64) - mean) @ P).astype(atoms.dtype)

    def _public_atoms(self, state: FlowState) -> np.ndarray:
        return self._from_working(state.atoms)

    def _from_working(self, x: np.ndarray) -> np.ndarray:
        if self._whiten is None:
            return x
        mean, _, P_inv, _ = self._whiten
        return (x.astype(np.float64) @ P_inv + mean).astype(x.dtype)

    def _initial_state(self, data: Data, rng, n: int) -> FlowState:
        state = super()._initial_state(data, rng, n)
        if self._mode not in _LEARNT:
            return state
        h, d = self.bandwidth_, data.n_features
        return with_covariances(state, np.broadcast_to(h * h * np.eye(d), (n, d, d)),
                                shared=self._tied)

    def _initial_particles(self, data: Data, rng, n: int):
        if self._whiten is not None and isinstance(self.init, str) and self.init != "subsample":
            # clusters in the units of X, as GaussianMixture seeds them: the Mahalanobis
            # distances of the whitened samples magnify their directions of least variance,
            # and k-means there ends in worse local maxima of the likelihood
            public = data.with_rows(self._from_working(data.rows))
            x, w = super()._initial_particles(public, rng, n)
            return self._to_working(x), w
        x, w = super()._initial_particles(data, rng, n)
        if self._whiten is not None and not isinstance(self.init, str):
            x = self._to_working(x)  # given in the units of X
        return x, w

    def _warm_state(self, data: Data, n_atoms: int):
        resume = super()._warm_state(data, n_atoms)
        if resume is None or self._mode == "isotropic":
            return resume
        fitted = np.ndim(self.covariances_)
        wanted = {"data": 2, "tied": 2, "full": 3}[self._mode]
        if fitted != wanted:
            raise ValueError(
                f"warm_start=True resumes from a fit with covariance of {fitted} dimensions; "
                f"covariance={self._mode!r} needs {wanted}. Set warm_start=False to "
                "start afresh."
            )
        state, tau = resume
        state = state.replace(atoms=self._to_working(state.atoms))
        if self._mode == "data":
            return state, tau
        _, P, _, _ = self._whiten
        shapes = np.broadcast_to(self.covariances_, (state.atoms.shape[0], *P.shape))
        C = P.T @ shapes @ P  # Pᵀ Σ_i P (a matrix product: einsum of three is O(n d⁴))
        return with_covariances(state, C, shared=self._tied), tau

    def _set_fitted_state(self, state: FlowState) -> None:
        super()._set_fitted_state(state)
        h, n = self.bandwidth_, self.weights_.shape[0]
        self.n_components_ = n
        if self._mode == "isotropic":
            self.covariances_ = np.full(n, h * h)
            self.precisions_cholesky_ = np.full(n, 1.0 / h)
            return
        mean, P, P_inv, _ = self._whiten
        self.means_ = self._public_atoms(state)
        if self._mode == "data":
            self.covariances_ = h * h * (P_inv.T @ P_inv)  # h² Σ̂ in the units of X
            self.precisions_cholesky_ = P / h
            return
        # every row of a tied state carries the shared shape: its first, once
        C = self._distinct(covariances(state, shared=self._tied))
        cov = P_inv.T @ C @ P_inv  # P⁻ᵀ C_i P⁻¹
        self.precisions_cholesky_ = _precision_cholesky(cov)
        self.covariances_ = cov
        if self._tied:
            self.covariances_, self.precisions_cholesky_ = cov[0], self.precisions_cholesky_[0]

    # --- the flow --------------------------------------------------------------------------
    def score_samples(self, X) -> np.ndarray:
        """Log density of the fitted mixture at the rows of ``X``, in the units of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            A lazy dask array for a dask array ``X``.
        """
        check_is_fitted(self)
        with session(self.backend, X, arrays_only=True):
            data = as_data(X, estimator=self, dtype=self.means_.dtype, reset=False)
        # in memory, or every chunk on its worker: the in-memory formula of the fitted mode
        return data.map_rows(self._log_density, self.backend, self.means_.shape[0])

    def _log_density(self, X: np.ndarray, backend) -> np.ndarray:
        """``score_samples`` on validated in-memory rows, with the given engine."""
        logw = self._log_weights(self.weights_, np.float64)
        d = X.shape[1]
        if np.ndim(self.covariances_) == 3:  # "full"
            P = self.precisions_cholesky_
            log_det = np.log(np.diagonal(P, axis1=1, axis2=2)).sum(axis=1)
            L = backend.shaped_logsumexp(X, self.means_, P.astype(X.dtype),
                                         (logw + log_det).astype(X.dtype))
            return L - np.asarray(0.5 * d * np.log(2.0 * np.pi), dtype=X.dtype)
        if np.ndim(self.covariances_) == 2:  # "data", "tied": one shape, whitened away
            P = self.precisions_cholesky_  # P Pᵀ = covariances_⁻¹
            L = backend.logsumexp(Kernel("gaussian", 1.0),
                                  (X.astype(np.float64) @ P).astype(X.dtype),
                                  (self.means_.astype(np.float64) @ P).astype(X.dtype),
                                  logw.astype(X.dtype))
            log_norm = 0.5 * d * np.log(2.0 * np.pi) - np.log(np.diag(P)).sum()
            return L - np.asarray(log_norm, dtype=X.dtype)
        L = backend.logsumexp(
            self._kernel(), X, self.means_, self._log_weights(self.weights_, X.dtype)
        )
        return L - np.asarray(0.5 * d * np.log(2.0 * np.pi * self.bandwidth_**2),
                              dtype=X.dtype)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Mean log-likelihood of ``X`` under the fitted mixture (weighted by
        ``sample_weight`` when given).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        float
        """
        check_is_fitted(self)
        with session(self.backend, X, sample_weight, arrays_only=True):
            data = as_data(X, sample_weight, estimator=self, dtype=self.means_.dtype,
                           reset=False)
            return self._mean_log_likelihood(data)

    def _sample_noise(self, rows: np.ndarray, rng) -> np.ndarray:
        """A draw of each drawn atom's component, ``N(0, covariances_)`` of that atom."""
        z = rng.standard_normal((rows.size, self.means_.shape[1]))
        cov = self.covariances_
        if cov.ndim == 1:  # isotropic: h for every component
            noise = z * self.bandwidth_
        elif cov.ndim == 2:  # one shape for all ("data", "tied")
            noise = z @ np.linalg.cholesky(cov).T
        else:
            noise = np.einsum("nde,ne->nd", np.linalg.cholesky(cov)[rows], z)
        return noise.astype(self.means_.dtype)

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Draw samples from the fitted mixture: an atom by weight, plus a draw of its
        component, ``N(0, covariances_)`` of that atom.

        The atoms are drawn by systematic resampling, in random order: in every batch of
        ``K = n_components_`` samples each atom ``j`` is drawn ``⌊K w_j⌋`` or ``⌈K w_j⌉``
        times (fewer than ``K`` samples, or a last cut batch, are a random part of a
        batch).  Each sample is a draw of the mixture, but the samples of one call are not
        independent: together they carry the weights without the clumps of independent
        draws (some atoms drawn twice, others not at all), which gave a lower energy
        distance to held-out rows (design page, "Sampling the mixture").

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None

        Returns
        -------
        ndarray of shape (n_samples, n_features)
        """
        return self._draw_atoms(n_samples, random_state)


def _data_covariance(data: Data, reg_covar: float):
    """The weighted mean and covariance of the rows, the latter as ``scipy.stats.gaussian_kde``
    computes it (``np.cov`` with ``aweights``, unbiased), plus ``reg_covar`` times the mean
    variance on the diagonal: positive definite for rank-deficient data and ``d > n``.  Data
    without any spread get the identity."""
    mean, cov = data.mean_covariance()
    n_eff = data.effective_size()
    if n_eff > 1.0:
        cov *= n_eff / (n_eff - 1.0)
    d = data.n_features
    scale = float(np.trace(cov)) / d
    scale = scale if scale > 0 else 1.0
    return mean, cov + (reg_covar * scale) * np.eye(d)
