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
import warnings

import numpy as np
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import _BaseParticleFlow, _Evaluation, _Problem, _validate_X
from .backends import LOG_TINY, Targets, resolve_backend
from .backends._dask import _engine as dask_engine
from .backends._dask import as_dask_engine, dask_session, is_dask_array
from .kernels import Kernel, _seed_from


class InclusiveKLFitter(_BaseParticleFlow):
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
        ``init="kmeans++"``.  ``"auto"``: one per three distinct samples of positive weight
        (rounded up), at most 100, so that 50 samples get 17 components; with an ``init`` array, its
        number of rows.
    bandwidth : float or {"scott", "silverman", "median"}, default="scott"
        Standard deviation ``h`` of every component (see
        :func:`skgradflow.kernels.resolve_bandwidth`).  The rules assume a unimodal,
        roughly Gaussian shape and are too wide for thin or multimodal data: choose it by
        ``GridSearchCV`` (``score`` is the held-out log-likelihood).  With
        ``covariance="data"``, ``"tied"`` or ``"full"`` it is the factor ``h`` of ``h² Σ̂``
        (the rules see whitened data: ``"scott"`` is ``scipy.stats.gaussian_kde``'s factor).
    covariance : {"isotropic", "data", "tied", "full"}, default="isotropic"
        Shape of the components.  ``"isotropic"``: ``N(x_i, h² I)``.  ``"data"``: one shared
        shape ``N(x_i, h² Σ̂)``, ``Σ̂`` the weighted sample covariance (as
        ``scipy.stats.gaussian_kde``), the flow running in whitened coordinates.
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
    max_iter : int, default=300
    tol : float, default=1e-3
        Stop when the mean loss of the last 10 iterations is below that of the 10 before
        them by less than ``tol`` times the decrease achieved since the start (the
        log-likelihood flattens well before 1e-4 would be met).
    init : {"kmeans++", "kmeans", "subsample"} or array of shape (n_components, \
n_features), default="kmeans++"
        Initial atoms: k-means++ seeding (weighted by ``sample_weight``), Lloyd's k-means
        from such a seeding (``GaussianMixture``'s initialisation, which few ``"full"``
        components need: the likelihood has many local maxima), a draw of sample rows by
        weight, or given positions.  The initial weights are uniform.
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
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"),
                         StrOptions({"auto"})],
        "init": [StrOptions({"kmeans++", "kmeans", "subsample"}), "array-like"],
        "covariance": [StrOptions({"isotropic", "data", "tied", "full"})],
        "reg_covar": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
    }
    _atoms_attr = "means_"
    _n_atoms_param = "n_components"
    # "auto": one component per 3 samples, at most 100 (a mixture with as many components as
    # samples is a kernel density estimate, which the bandwidth alone regularises)
    _auto_samples_per_atom = 3
    _auto_max_atoms = 100
    # the LogSumExp over atoms and the reduction over targets, twice (before and after
    # the transport)
    _reductions_per_iteration = 4
    _sources_include_atoms = False

    def __init__(
        self,
        n_components: int | str = "auto",
        *,
        bandwidth: float | str = "scott",
        covariance: str = "isotropic",
        reg_covar: float = 1e-6,
        alpha: float = 1.0,
        beta: float = 1.0,
        step_size: float | str = "auto",
        max_iter: int = 300,
        tol: float = 1e-3,
        init="kmeans++",
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

    def _fit(self, X, sample_weight):
        resume = self.warm_start and hasattr(self, "weights_")
        if self.n_init == 1 or resume or not isinstance(self.init, str):
            return super()._fit(X, sample_weight)
        seeds = check_random_state(self.random_state).randint(np.iinfo(np.int32).max,
                                                              size=self.n_init)
        best, best_value, best_warnings = None, -np.inf, []
        for seed in seeds:
            # set_params hands the callback itself to the run: clone would deep-copy it
            run = clone(self).set_params(n_init=1, random_state=int(seed), warm_start=False,
                                         callback=self.callback)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run._fit(X, sample_weight)
            # the fit's objective at the end of the run; a minibatch run's loss is that of
            # its last batch, so it is scored on all the samples
            value = (-run.loss_curve_[-1] if self.batch_size is None
                     else run.score(X, sample_weight=sample_weight))
            if best is None or value > best_value:
                best, best_value, best_warnings = run, value, caught
        for caught in best_warnings:  # the kept run's warnings only, as GaussianMixture
            warnings.warn_explicit(caught.message, caught.category, caught.filename,
                                   caught.lineno)
        # the fitted state, and nothing else: scikit-learn's own private attributes (its
        # callback context) belong to this object, not to the runs
        fitted = [k for k in vars(self) if _is_fitted_attribute(k)]
        for key in fitted:
            delattr(self, key)  # nothing of an earlier fit survives (feature_names_in_)
        self.__dict__.update({k: v for k, v in vars(best).items() if _is_fitted_attribute(k)})
        return self

    def _auto_step_size(self, problem: _Problem, ev: _Evaluation) -> float:
        # in the whitened coordinates of "data" and "full", h is the kernel's scale there
        h = self.bandwidth_
        # the transport of "full" is an implicit step, monotone at any τα: τα = 1 takes
        # components about half way to their EM update
        limit = 1.0 if self.covariance in _LEARNT else 0.5 * h * h
        steps = [limit / self.alpha] if self.alpha > 0 else []
        steps += [1.0 / self.beta] if self.beta > 0 else []
        return min(steps, default=1.0)

    def _regrow_step(self, tau: float, start: float) -> float:
        # the learnt shapes share τ between a transport that is safe at any step and a
        # reweighting whose safe step shrinks while a component thins (its mass R_i grows):
        # a step halved there doubles back after each accepted one, up to where it started
        return min(2.0 * tau, start) if self.covariance in _LEARNT else tau

    # --- coordinates: whitened for "data" and "full" ------------------------------------
    def _working_coordinates(self, X: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``"isotropic"``: ``X``.  The shaped modes: ``(X - m) P``, with ``m`` the
        weighted mean and ``P`` the upper triangular square root of the inverse of the
        regularised weighted covariance (``P Pᵀ = Σ̂⁻¹``): there ``Σ̂`` is the identity, the
        kernel ``N(0, h² Σ̂)`` is ``N(0, h² I)``, and the bandwidth rules give the factor
        of ``scipy.stats.gaussian_kde``."""
        self._whiten = None
        if self.covariance == "isotropic":
            return X
        mean, cov = _data_covariance(X, b, self.reg_covar)
        P = _precision_cholesky(cov[None])[0]
        self._whiten = (mean, P, np.linalg.inv(P), float(np.log(np.diag(P)).sum()))
        return ((X.astype(np.float64) - mean) @ P).astype(X.dtype)

    def _to_working(self, atoms: np.ndarray) -> np.ndarray:
        mean, P, _, _ = self._whiten
        return ((atoms.astype(np.float64) - mean) @ P).astype(atoms.dtype)

    def _public_atoms(self, x: np.ndarray) -> np.ndarray:
        if self._whiten is None:
            return x
        mean, _, P_inv, _ = self._whiten
        d = P_inv.shape[0]
        return (x[:, :d].astype(np.float64) @ P_inv + mean).astype(x.dtype)

    @staticmethod
    def _pack(x: np.ndarray, C: np.ndarray) -> np.ndarray:
        """The state of ``"full"`` and ``"tied"``: each atom's position and the Cholesky
        factor of its
        covariance (whitened), in a row.  The factor, not the covariance: rounded to float32,
        ``L Lᵀ`` stays positive definite where ``C`` itself need not."""
        n, d = x.shape
        L = np.linalg.cholesky(C)
        return np.concatenate([x, L.reshape(n, d * d).astype(x.dtype)], axis=1)

    @staticmethod
    def _unpack(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and covariances ``L Lᵀ`` (float64) of the state of ``"full"``."""
        n, width = state.shape
        d = int(round((np.sqrt(1 + 4 * width) - 1) / 2))  # width = d + d²
        L = state[:, d:].astype(np.float64).reshape(n, d, d)
        return state[:, :d], L @ np.swapaxes(L, -1, -2)

    def _initial_particles(self, X: np.ndarray, b: np.ndarray, rng, n: int) -> np.ndarray:
        if self._whiten is not None and isinstance(self.init, str) and self.init != "subsample":
            # clusters in the units of X, as GaussianMixture seeds them: the Mahalanobis
            # distances of the whitened samples magnify their directions of least variance,
            # and k-means there ends in worse local maxima of the likelihood
            x = self._to_working(super()._initial_particles(self._public_atoms(X), b, rng, n))
        else:
            x = super()._initial_particles(X, b, rng, n)
        if self._whiten is not None and not isinstance(self.init, str):
            x = self._to_working(x)  # given in the units of X
        if self.covariance not in _LEARNT:
            return x
        h = self.bandwidth_
        return self._pack(x, np.broadcast_to(h * h * np.eye(X.shape[1]), (n, X.shape[1],
                                                                             X.shape[1])))

    def _warm_state(self, X: np.ndarray, n_atoms: int):
        resume = super()._warm_state(X, n_atoms)
        if resume is None or self.covariance == "isotropic":
            return resume
        fitted = np.ndim(self.covariances_)
        wanted = {"data": 2, "tied": 2, "full": 3}[self.covariance]
        if fitted != wanted:
            raise ValueError(
                f"warm_start=True resumes from a fit with covariance of {fitted} dimensions; "
                f"covariance={self.covariance!r} needs {wanted}. Set warm_start=False to "
                "start afresh."
            )
        atoms, w, tau = resume
        x = self._to_working(atoms)
        if self.covariance == "data":
            return x, w, tau
        _, P, _, _ = self._whiten
        shapes = np.broadcast_to(self.covariances_, (x.shape[0], *P.shape))
        C = np.einsum("de,nef,fg->ndg", P.T, shapes, P)  # Pᵀ Σ_i P
        return self._pack(x, C), w, tau

    def _after_fit(self) -> None:
        state, h, n = self.means_, self.bandwidth_, self.weights_.shape[0]
        if self.covariance == "isotropic":
            self.covariances_ = np.full(n, h * h)
            self.precisions_cholesky_ = np.full(n, 1.0 / h)
            return
        mean, P, P_inv, _ = self._whiten
        self.means_ = self._public_atoms(state)
        if self.covariance == "data":
            self.covariances_ = h * h * (P_inv.T @ P_inv)  # h² Σ̂ in the units of X
            self.precisions_cholesky_ = P / h
            return
        _, C = self._unpack(state)
        cov = np.einsum("ed,nef,fg->ndg", P_inv, C, P_inv)  # P⁻ᵀ C_i P⁻¹
        if self.covariance == "tied":  # every row of the state carries the shared shape
            cov = cov[:1]
        self.precisions_cholesky_ = _precision_cholesky(cov)
        self.covariances_ = cov
        if self.covariance == "tied":
            self.covariances_, self.precisions_cholesky_ = cov[0], self.precisions_cholesky_[0]

    # --- the flow --------------------------------------------------------------------------
    def _log_norm(self, d: int) -> float:
        """``log`` of the normalising constant of ``φ_h`` in the units of ``X``:
        ``(2π h²)^(d/2)``, times ``det Σ̂^(1/2)`` in the whitened coordinates."""
        log_norm = 0.5 * d * np.log(2.0 * np.pi * self.bandwidth_**2)
        return log_norm if self._whiten is None else log_norm - self._whiten[3]

    @staticmethod
    def _log_weights(w: np.ndarray, dtype) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(w), LOG_TINY).astype(dtype)

    def _evaluate(self, problem: _Problem, x, w, targets: Targets, carry=None) -> _Evaluation:
        if self.covariance in _LEARNT:
            return self._evaluate_full(x, w, targets)
        # L_m = log Σ_i w_i exp(-|y_m - x_i|²/(2h²)), so log μ(y_m) = L_m - log norm
        L = targets.log_mixture(problem.kernel, x, self._log_weights(w, x.dtype))
        mean, magnitude = targets.average(L, self._log_norm(x.shape[1]))
        return _Evaluation(-mean, magnitude, {"L": L})

    def _step(self, problem: _Problem, x, w, ev: _Evaluation, targets: Targets, tau: float):
        if self.covariance in _LEARNT:
            return self._step_full(x, w, ev, targets, tau)
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
        return x, w, None

    def _reweight(self, w: np.ndarray, R: np.ndarray, tau: float) -> np.ndarray:
        """Fisher–Rao: ``w_i ← w_i exp(τβ (R_i - 1))``, normalised."""
        with np.errstate(divide="ignore"):
            log_w = np.log(w) + (tau * self.beta) * (R.astype(np.float64) - 1.0)
        return np.exp(log_w - logsumexp(log_w))

    # --- "full": a covariance per atom -------------------------------------------------
    def _shapes(self, C: np.ndarray):
        """``P_i`` (``P_i P_iᵀ = C_i⁻¹``, float64) and ``log det P_i``, minus the ``N(0, C_i)``
        normaliser's ``(2π)^(d/2)``, which ``_evaluate_full`` subtracts once."""
        P = _precision_cholesky(C)
        return P, np.log(np.diagonal(P, axis1=1, axis2=2)).sum(axis=1)

    def _penalty(self, P: np.ndarray) -> float:
        """The ``reg_covar`` term of the learnt shapes' objective, ``(reg/2) Σ_i tr(C_i⁻¹)``
        (``(reg/2) tr(C⁻¹)`` for the one shape of ``"tied"``), ``tr(C_i⁻¹) = |P_i|²``."""
        P = P[:1] if self.covariance == "tied" else P
        return 0.5 * self.reg_covar * float(np.einsum("nde,nde->", P, P))

    def _evaluate_full(self, state, w, targets: Targets) -> _Evaluation:
        x, C = self._unpack(state)
        try:
            P, log_det = self._shapes(C)
        except np.linalg.LinAlgError:  # rounded past positive definiteness: a failed step
            return _Evaluation(np.inf, np.inf, {})
        # L_m = log Σ_i w_i det(P_i) exp(-|P_iᵀ(y_m - x_i)|²/2) = log μ(y_m) + (d/2) log 2π
        L = targets.log_mixture_shaped(x, P, self._log_weights(w, np.float64) + log_det)
        d = x.shape[1]
        shift = 0.5 * d * np.log(2.0 * np.pi) - self._whiten[3]
        mean, magnitude = targets.average(L, shift)
        # the objective the step lowers: -ℓ plus the reg_covar term
        energy = -mean + self._penalty(P)
        return _Evaluation(energy, magnitude, {"L": L, "P": P, "log_det": log_det})

    def _step_full(self, state, w, ev: _Evaluation, targets: Targets, tau: float):
        """One step of design page section "Shaped kernels": every component moves a
        fraction ``ρ_i = τα R_i / (1 + τα R_i)`` of the way to its EM update, then the
        Fisher–Rao reweighting."""
        x, C = self._unpack(state)
        L, P, log_det = ev.cache["L"], ev.cache["P"], ev.cache["log_det"]
        try:
            return self._transport_and_reweight(x, C, w, L, P, log_det, targets, tau)
        except np.linalg.LinAlgError:
            # a shape rounded past positive definiteness (float32 moments of a component
            # far thinner than the data): a failed step, which the safeguard retries shorter
            return np.full_like(state, np.nan), w, None

    def _transport_and_reweight(self, x, C, w, L, P, log_det, targets: Targets, tau: float):
        if self.alpha > 0:
            R, first, second = targets.responsibility_moments_shaped(x, P, log_det, L)
            dx, C = _component_step(C, R.astype(np.float64), first.astype(np.float64),
                                    second.astype(np.float64), tau * self.alpha,
                                    self.reg_covar, w, self.covariance == "tied")
            x = x + dx.astype(x.dtype)
            if self.beta > 0:
                P, log_det = self._shapes(C)
                L = targets.log_mixture_shaped(x, P, self._log_weights(w, np.float64) + log_det)
        if self.beta > 0:
            R = targets.responsibility_moments_shaped(x, P, log_det, L, second=False)[0]
            mass = w * R.astype(np.float64)  # Σ_m b_m γ_mi: EM's weights
            rho = tau * self.beta / (1.0 + tau * self.beta)
            w = (1.0 - rho) * w + rho * mass / mass.sum()
        return self._pack(x, C), w, None

    # --- the fitted density ----------------------------------------------------------------
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
        if is_dask_array(X):  # a lazy dask array with the row chunks of X
            with dask_session(self.backend, X, arrays_only=True):
                X = _validate_X(self, X, dtype=self.means_.dtype, reset=False)
            inner = as_dask_engine(self.backend).inner
            # every chunk on its worker, by the in-memory formula of the fitted mode
            return X.rechunk({1: -1}).map_blocks(
                _log_density_block, self, inner, drop_axis=1, dtype=X.dtype
            )
        X = _validate_X(self, X, dtype=self.means_.dtype, reset=False)
        engine = resolve_backend(self.backend, X.shape[0] * self.means_.shape[0])
        return self._log_density(X, engine)

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
        if is_dask_array(X):
            with dask_session(self.backend, X, sample_weight, arrays_only=True):
                log_density = self.score_samples(X).astype(np.float64)
                if sample_weight is None:
                    return float(log_density.mean().compute())
                b = self._check_sample_weight(sample_weight, X.rechunk({1: -1}))
                return float((b * log_density).sum().compute())
        log_density = self.score_samples(X).astype(np.float64)
        if sample_weight is None:
            return float(log_density.mean())
        return float(np.average(log_density, weights=self._check_sample_weight(sample_weight, X)))

    def _sample_noise(self, n_samples: int, n_features: int, rng) -> np.ndarray:
        noise = rng.standard_normal((n_samples, n_features)) * self.bandwidth_
        return noise.astype(self.means_.dtype)

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Draw samples from the fitted mixture: an atom by weight, plus a draw of its
        component, ``N(0, covariances_)`` of that atom.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None

        Returns
        -------
        ndarray of shape (n_samples, n_features)
        """
        if np.ndim(getattr(self, "covariances_", np.zeros(1))) == 1:
            return super().sample(n_samples, random_state)
        n = self._check_n_samples(n_samples)
        atoms, w = self._fitted_measure()
        rng = np.random.default_rng(_seed_from(check_random_state(random_state)))
        rows = rng.choice(atoms.shape[0], size=n, replace=True, p=w)
        z = rng.standard_normal((n, atoms.shape[1]))
        cov = self.covariances_
        if cov.ndim == 2:
            noise = z @ np.linalg.cholesky(cov).T
        else:
            noise = np.einsum("nde,ne->nd", np.linalg.cholesky(cov)[rows], z)
        return atoms[rows] + noise.astype(atoms.dtype)


def _is_fitted_attribute(name: str) -> bool:
    """What ``fit`` sets: the public ``name_`` attributes and the whitening."""
    return (name.endswith("_") and not name.startswith("__")) or name == "_whiten"


# the modes whose covariances the flow learns
_LEARNT = ("full", "tied")


def _data_covariance(X: np.ndarray, b: np.ndarray, reg_covar: float):
    """The weighted mean and covariance of the rows, the latter as ``scipy.stats.gaussian_kde``
    computes it (``np.cov`` with ``aweights``, unbiased), plus ``reg_covar`` times the mean
    variance on the diagonal: positive definite for rank-deficient data and ``d > n``.  Data
    without any spread get the identity."""
    Xd = X.astype(np.float64)
    mean = b @ Xd
    centred = Xd - mean
    cov = np.atleast_2d((centred * b[:, None]).T @ centred)
    n_eff = 1.0 / float(np.sum(b * b))
    if n_eff > 1.0:
        cov *= n_eff / (n_eff - 1.0)
    scale = float(np.trace(cov)) / X.shape[1]
    scale = scale if scale > 0 else 1.0
    cov = cov + (reg_covar * scale) * np.eye(X.shape[1])
    if is_dask_array(cov):  # d-sized results of Dask reductions: bring them here
        import dask

        mean, cov = dask.compute(mean, cov)
    return np.asarray(mean), np.asarray(cov)


def _precision_cholesky(C: np.ndarray) -> np.ndarray:
    """Upper triangular ``P_i`` with ``P_i P_iᵀ = C_i⁻¹`` (scikit-learn's
    ``precisions_cholesky_`` of the "full" type), for a stack of covariances."""
    L = np.linalg.cholesky(C)
    eye = np.broadcast_to(np.eye(C.shape[-1]), C.shape)
    return np.swapaxes(np.linalg.solve(L, eye), -1, -2)


def _component_step(C, R, first, second, t, reg_covar, w, tied=False):
    """The transport of every component ``(x_i, C_i)`` over a step of length ``t = τα``:
    the implicit Euler step of its natural-gradient flow, ``ẋ = F``,
    ``Ċ = M + (reg/w) I - R C``,

    ``x_i ← x_i + t F_i / (1 + t R_i)`` and
    ``C_i ← (C_i + t (M'_i + (reg/w_i) I)) / (1 + t R_i)``,

    a fraction ``ρ_i = t R_i / (1 + t R_i)`` of the way to the M-step of EM with the
    ``reg_covar`` term, ``(M'_i + (reg/w_i) I) / R_i``: ``F_i = Σ_m E_mi (y_m - x_i)``,
    ``M_i`` the same sum of ``(y_m - x_i)(y_m - x_i)ᵀ`` and ``M'_i`` that of the moved mean.
    ``tied`` (every ``C_i`` is one shared ``C``): the shared shape takes the step of the
    pooled scatter, ``C ← (C + t (Σ_i w_i M'_i + reg I)) / (1 + t r)`` with
    ``r = Σ_i w_i R_i = 1``, EM's tied M-step as ``t → ∞``.  Returns the moves of the means
    and the new covariances (float64)."""
    shrink = t / (1.0 + t * R)  # ρ_i / R_i, finite where R_i = 0
    dx = shrink[:, None] * first
    # the second moment about the moved mean, from the moments about the old one
    outer = first[:, :, None] * dx[:, None, :]
    moved = (second - outer - np.swapaxes(outer, -1, -2)
             + R[:, None, None] * dx[:, :, None] * dx[:, None, :])
    moved = _clip_to_psd(moved)
    eye = np.eye(C.shape[-1])
    if tied:
        rate = float(w @ R)
        pooled = np.einsum("i,ide->de", w, moved)
        shared = (C[0] + t * (pooled + reg_covar * eye)) / (1.0 + t * rate)
        C_new = np.broadcast_to(shared, C.shape)
    else:
        # the term weighs reg/w_i in component i's own step: a component whose weight
        # vanishes widens instead of collapsing onto the samples it still covers
        prior = reg_covar / np.maximum(w, np.finfo(np.float64).tiny)
        C_new = (C + t * (moved + prior[:, None, None] * eye)) / (1.0 + t * R)[:, None, None]
    return dx, 0.5 * (C_new + np.swapaxes(C_new, -1, -2))


def _clip_to_psd(M: np.ndarray) -> np.ndarray:
    """The symmetric part of every ``M_i``, negative eigenvalues set to 0: a sum of outer
    products is positive semi-definite, but from float32 moments of a thin component the
    expansion about the moved mean can round below 0."""
    M = 0.5 * (M + np.swapaxes(M, -1, -2))
    eigval, eigvec = np.linalg.eigh(M)
    if np.all(eigval >= 0):
        return M
    return (eigvec * np.maximum(eigval, 0.0)[:, None, :]) @ np.swapaxes(eigvec, -1, -2)


def _log_density_block(X, estimator: InclusiveKLFitter, inner) -> np.ndarray:
    """``score_samples`` of one chunk of a dask array, on its worker."""
    X = np.asarray(X)
    if X.shape[0] == 0:
        return np.zeros(0, dtype=X.dtype)
    # the worker's own engine, sized to its threads
    return estimator._log_density(X, dask_engine(inner, X.shape[0] * estimator.means_.shape[0]))
