"""The Wasserstein–Fisher–Rao flow of the inclusive KL over a Gaussian kernel mixture.

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
from scipy.special import logsumexp
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import _BaseParticleFlow, _Evaluation, _Problem, _validate_X
from .backends import LOG_TINY, Targets, resolve_backend
from .backends._dask import as_dask_engine, dask_session, is_dask_array
from .backends._dask import log_density as dask_log_density
from .kernels import Kernel


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
        ``GridSearchCV`` (``score`` is the held-out log-likelihood).
    alpha : float, default=1.0
        Rate of the transport of the atoms.
    beta : float, default=1.0
        Rate of the reweighting.
    step_size : float or "auto", default="auto"
        Time step ``τ``.  ``"auto"`` starts from the smaller of ``τα = h²/2`` and
        ``τβ = 1`` (the mirror step of the log-likelihood is monotone for ``τβ ≤ 1``)
        and halves ``τ`` whenever a step lowers the likelihood.
    max_iter : int, default=300
    tol : float, default=1e-3
        Stop when the mean loss of the last 10 iterations is below that of the 10 before
        them by less than ``tol`` times the decrease achieved since the start (the
        log-likelihood flattens well before 1e-4 would be met).
    init : {"kmeans++", "subsample"} or array of shape (n_components, n_features), \
default="kmeans++"
        Initial atoms: k-means++ seeding (weighted by ``sample_weight``), a draw of
        sample rows by weight, or given positions.  The initial weights are uniform.
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
        ``True`` stops the run.
    warm_start : bool, default=False
        When ``True`` and the estimator is fitted, ``fit`` resumes from ``means_``,
        ``weights_`` and ``step_size_`` (``init`` is ignored).

    Attributes
    ----------
    means_ : ndarray of shape (n_components, n_features)
        The atoms, in the dtype of ``X``.
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
        iteration.
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
    """

    _parameter_constraints: dict = {
        **_BaseParticleFlow._parameter_constraints,
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"),
                         StrOptions({"auto"})],
        "init": [StrOptions({"kmeans++", "subsample"}), "array-like"],
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
        alpha: float = 1.0,
        beta: float = 1.0,
        step_size: float | str = "auto",
        max_iter: int = 300,
        tol: float = 1e-3,
        init="kmeans++",
        batch_size: int | None = None,
        backend: str = "auto",
        random_state=None,
        verbose: int = 0,
        callback=None,
        warm_start: bool = False,
    ) -> None:
        self.n_components = n_components
        self.bandwidth = bandwidth
        self.alpha = alpha
        self.beta = beta
        self.step_size = step_size
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.batch_size = batch_size
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.warm_start = warm_start

    def _kernel(self, bandwidth: float | None = None) -> Kernel:
        return Kernel("gaussian", self.bandwidth_ if bandwidth is None else bandwidth)

    def _auto_step_size(self, problem: _Problem, ev: _Evaluation) -> float:
        h = self.bandwidth_
        steps = [0.5 * h * h / self.alpha] if self.alpha > 0 else []
        steps += [1.0 / self.beta] if self.beta > 0 else []
        return min(steps, default=1.0)

    # --- the flow --------------------------------------------------------------------------
    def _log_norm(self, d: int) -> float:
        """``log`` of the normalising constant ``(2π h²)^(d/2)`` of ``φ_h``."""
        return 0.5 * d * np.log(2.0 * np.pi * self.bandwidth_**2)

    @staticmethod
    def _log_weights(w: np.ndarray, dtype) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(w), LOG_TINY).astype(dtype)

    def _evaluate(self, problem: _Problem, x, w, targets: Targets, carry=None) -> _Evaluation:
        # L_m = log Σ_i w_i exp(-|y_m - x_i|²/(2h²)), so log μ(y_m) = L_m - log norm
        L = targets.log_mixture(problem.kernel, x, self._log_weights(w, x.dtype))
        mean, magnitude = targets.average(L, self._log_norm(x.shape[1]))
        return _Evaluation(-mean, magnitude, {"L": L})

    def _step(self, problem: _Problem, x, w, ev: _Evaluation, targets: Targets, tau: float):
        kernel, h = problem.kernel, self.bandwidth_
        L = ev.cache["L"]
        if self.alpha > 0:
            _, pull = targets.responsibility_moments(kernel, x, L)
            x = x + (tau * self.alpha / h**2) * pull
            if self.beta > 0:  # L at the moved atoms, for R at the new positions
                L = targets.log_mixture(kernel, x, self._log_weights(w, x.dtype))
        if self.beta > 0:
            R, _ = targets.responsibility_moments(kernel, x, L)
            with np.errstate(divide="ignore"):
                log_w = np.log(w) + (tau * self.beta) * (R.astype(np.float64) - 1.0)
            w = np.exp(log_w - logsumexp(log_w))
        # the weights changed after the last LogSumExp: the evaluation starts afresh
        return x, w, None

    # --- the fitted density ----------------------------------------------------------------
    def score_samples(self, X) -> np.ndarray:
        """Log density of the fitted mixture at the rows of ``X``.

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
            return dask_log_density(X, self.means_, self._log_weights(self.weights_, X.dtype),
                                    self._kernel(), as_dask_engine(self.backend).inner,
                                    self._log_norm(X.shape[1]))
        X = _validate_X(self, X, dtype=self.means_.dtype, reset=False)
        backend = resolve_backend(self.backend, X.shape[0] * self.means_.shape[0])
        L = backend.logsumexp(
            self._kernel(), X, self.means_, self._log_weights(self.weights_, X.dtype)
        )
        return L - np.asarray(self._log_norm(X.shape[1]), dtype=X.dtype)

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
        """Draw samples from the fitted mixture: an atom by weight, plus ``N(0, h² I)``.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None

        Returns
        -------
        ndarray of shape (n_samples, n_features)
        """
        return super().sample(n_samples, random_state)
