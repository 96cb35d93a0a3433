"""The spherical Interaction-Force Transport (IFT) flow (Gladin, Dvurechensky, Mielke and
Zhu, NeurIPS 2024).

PDE: ``∂_t μ = α div(μ ∇K(μ - π)) - β (μ - π)``, projected to keep mass 1.  One JKO
splitting step of length ``τ``:

1. Wasserstein step: ``x_i ← x_i - τα ∇f(x_i)``, ``f`` the MMD witness (``_flow/_mmd.py``).
2. MMD step on the weights, at the new positions, with ``η = τβ``::

       w ← argmin_{w ∈ Δ} ½ wᵀKw - wᵀc + 1/(2η) (w - w⁻)ᵀ K (w - w⁻),  K = K_xx, c = K_xy b

   solved by ``weight_steps`` iterations of FISTA warm-started at ``w⁻``, step ``1/L``,
   ``L = (1 + 1/η) max_i Σ_j |K_ij|``.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval

from ._flow import Problem, _BaseMMDFlow


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based, O(n log n)).

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow.ift import project_simplex
    >>> project_simplex(np.array([0.5, 0.8, -0.3]))
    array([0.35, 0.65, 0.  ])
    """
    if not np.all(np.isfinite(v)):
        # a diverging step: NaN weights, which the flow rejects with a step_size error
        return np.full(v.shape, np.nan)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    ind = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / ind > 0)[0][-1]
    w = np.maximum(v - css[rho] / (rho + 1.0), 0.0)
    return w / w.sum()


class IFTSampler(_BaseMMDFlow):
    """Interaction-Force Transport sampler: the spherical IFT gradient flow of the MMD.

    Particles move along the MMD witness (Wasserstein part, rate ``alpha``) while their
    weights follow an MMD-proximal step (the kernelised Fisher–Rao part, rate ``beta``) that
    moves mass from particles in over-covered regions to particles where the target has
    mass: "teleportation" that the pure MMD flow (``beta=0``) lacks.

    Parameters
    ----------
    n_particles : int or "auto", default="auto"
        Number of particles ``N``.  ``"auto"``: as many as the distinct samples of positive
        weight, at most 500 (each iteration costs ``N (N + n_samples)`` kernel pairs; fewer
        particles than rows gave worse samples on every data set measured, design page); with
        an ``init`` array, its number of rows; a warm start keeps the number it resumes
        from.
    kernel : {"gaussian", "laplacian", "imq", "energy"}, default="gaussian"
    bandwidth : float or {"anneal", "median", "scott", "silverman"}, default="anneal"
        Kernel length scale.  ``"median"`` is the median distance between target samples,
        robust in any dimension and good for transport; ``"scott"``/``"silverman"`` are
        the density-estimation rules (see :func:`skgradflow.kernels.resolve_bandwidth`),
        sharper, at the scale of the modes.  ``"anneal"`` runs the first tenth of
        ``max_iter`` at the median's bandwidth, which carries mass across the data, and
        the rest at Scott's (``n`` = the distinct samples), which resolves the modes; the
        second phase starts from the step size the first ended with, ``tol`` is consulted
        only after half of it.  A float or a
        rule is used for the whole run (what a ``GridSearchCV`` over ``bandwidth``
        compares).  For the energy kernel, which has no
        bandwidth, it is the length scale of the automatic step size.
    alpha : float, default=1.0
        Rate of the Wasserstein (transport) part; 0 moves no particle.
    beta : float, default=1.0
        Rate of the MMD (reweighting) part; 0 is the MMD flow of Arbel et al. (2019).
    step_size : float or "auto", default="auto"
        Time step ``τ``.  ``"auto"`` starts from ``τα = h²/2`` (``h/2`` for the energy
        kernel) and halves it whenever a step raises the energy; an explicit float is used
        as given.
    max_iter : int, default=500
    tol : float, default=1e-4
        Stop when the mean energy of the last 10 iterations is below that of the 10 before
        them by less than ``tol`` times the decrease achieved since the start, or (any
        ``tol > 0``, full batch) when the energy is below, or fell in those 10 iterations by
        less than, a hundredth of its statistical resolution ``(k(0) - E k(y, y'))/(2M)``:
        the energy between ``M`` rows and the law they are drawn from (design page).
    weight_steps : int, default=3
        FISTA iterations of the weight step, each one kernel matrix–vector product.
    conserve_mass : bool, default=True
        Weights on the simplex; ``False`` only keeps them non-negative (unbalanced IFT).
    init : {"gaussian", "subsample"} or array of shape (n_particles, n_features), \
default="subsample"
        Initial particles: a draw of distinct target rows by weight (the rows themselves
        when ``n_particles`` is their number), the target's moment-matched Gaussian, or given
        positions.  From the rows the flow starts on the data and stops within tens of
        iterations; from the Gaussian it has to carry the mass there, which in 10 or more
        dimensions takes far more than ``max_iter``.
    smoothing : float or "auto", default="auto"
        Width of the smoothing of the fitted measure that ``sample`` draws from and
        ``score`` evaluates, in units of the local shapes (see :meth:`sample`).
        ``"auto"``: the smallest width whose samples are placed like new rows of the data
        (as far from the training rows as a row is from its nearest other row, and from the
        particles as the rows are).  A small width gives near-copies of the particles.
    batch_size : int or None, default=None
        Targets per iteration: all, or a fresh minibatch drawn with ``sample_weight`` as
        probabilities.
    backend : {"auto", "numba", "keops", "numpy"}, a registered name or a Backend, default="auto"
        The engine of the kernel reductions (see :mod:`skgradflow.backends`).  ``"auto"``
        uses NumPy when the run evaluates fewer than 5·10⁸ kernel entries in all (where a
        first compile would dominate); above, KeOps on a GPU when KeOps runs there, else the
        Numba backend when Numba is installed (``pip install "skgradflow[numba]"``), else
        KeOps on the CPU; a KeOps that fails its one-time check (run in a child process) is
        never used, with one warning.  An instance, e.g. ``KeOpsBackend(device="cpu")``, is
        used as given.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
        Progress with the energy on stderr when positive.
    callback : callable or None, default=None
        Called as ``callback(state)`` after every iteration of ``fit``, with a
        :class:`skgradflow.callbacks.FlowState` (``n_iter``, ``particles``, ``weights``,
        ``energy``, ``step_size``); returning ``True`` stops the run (``n_iter_`` then
        counts the iterations run).  :class:`skgradflow.callbacks.PathRecorder` records
        a path.
    warm_start : bool, default=False
        When ``True`` and the estimator is fitted, ``fit`` resumes from ``particles_``,
        ``weights_`` and ``step_size_`` (``init`` is ignored): a fit of 30 iterations and a
        second of 30 give the state of one fit of 60 (full batch).  ``n_iter_`` and
        ``loss_curve_`` describe the last fit only.

    Attributes
    ----------
    particles_ : ndarray of shape (n_particles, n_features)
        Fitted particle positions, in the dtype of ``X``.
    weights_ : ndarray of shape (n_particles,)
        Fitted weights (float64; on the simplex when ``conserve_mass``).
    bandwidth_ : float
        The bandwidth at the end of the run (Scott's, for ``"anneal"``).
    bandwidth_schedule_ : ndarray of shape ``(n_iter_,)``
        The bandwidth of each iteration.  ``loss_curve_`` measures the energy at the
        bandwidth in force, so with ``"anneal"`` it jumps where the bandwidth changes.
    smoothing_ : float
        The width of the smoothing of the fitted measure (``smoothing``, or its
        automatic choice).
    step_size_ : float
        The step size at the end of the run.
    n_iter_ : int
    converged_ : bool
    loss_curve_ : ndarray of shape ``(n_iter_ + 1,)``
        The energy ``½ MMD²(μ, π̂)`` before the first and after each iteration.
    backend_ : str
        Where the reductions ran: ``"numpy"``, ``"numba-cpu"``, ``"keops-cpu"``,
        ``"keops-gpu"``, or the name of another registered backend.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape ``(n_features_in_,)``
        Defined when ``X`` has string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow import IFTSampler
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> sampler = IFTSampler(n_particles=100, max_iter=100, tol=0, random_state=0).fit(X)
    >>> sampler.sample(5, random_state=0).shape
    (5, 2)
    >>> bool(np.isclose(sampler.weights_.sum(), 1.0))
    True
    """

    _parameter_constraints: dict = {
        **_BaseMMDFlow._parameter_constraints,
        "weight_steps": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        n_particles: int | str = "auto",
        *,
        kernel: str = "gaussian",
        bandwidth: float | str = "anneal",
        alpha: float = 1.0,
        beta: float = 1.0,
        step_size: float | str = "auto",
        max_iter: int = 500,
        tol: float = 1e-4,
        weight_steps: int = 3,
        conserve_mass: bool = True,
        init="subsample",
        smoothing: float | str = "auto",
        batch_size: int | None = None,
        backend: str = "auto",
        random_state=None,
        verbose: int = 0,
        callback=None,
        warm_start: bool = False,
    ) -> None:
        self.n_particles = n_particles
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.alpha = alpha
        self.beta = beta
        self.step_size = step_size
        self.max_iter = max_iter
        self.tol = tol
        self.weight_steps = weight_steps
        self.conserve_mass = conserve_mass
        self.init = init
        self.smoothing = smoothing
        self.batch_size = batch_size
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.warm_start = warm_start

    def _weight_step(self, problem: Problem, x, w, targets, tau: float):
        dtype = x.dtype
        eta = tau * self.beta
        # At the new positions: K w⁻ - c, c = K_xy b and the row sums of K = K_xx.
        out, carry = self._reduce_at_moved(problem, x, w, targets, row_sums=True)
        c = out[:, 1]
        Kw_prev = out[:, 0] + c
        # Every kernel here has entries of one sign, so max_i Σ_j |K_ij| = max_i |(K 1)_i|.
        L = (1.0 + 1.0 / eta) * float(np.max(np.abs(out[:, 2])))
        project = project_simplex if self.conserve_mass else _project_nonnegative

        # FISTA on Q(w) = ½ wᵀKw - wᵀc + 1/(2η)(w - w⁻)ᵀK(w - w⁻), from y = w⁻
        y, Ky, w_old, t = w, Kw_prev, w, 1.0
        for k in range(self.weight_steps):
            grad = (1.0 + 1.0 / eta) * Ky - c - Kw_prev / eta
            w_new = project(y - grad / L)
            if k == self.weight_steps - 1:
                break
            t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            y = w_new + ((t - 1.0) / t_next) * (w_new - w_old)
            w_old, t = w_new, t_next
            Ky = problem.backend.matvec(
                problem.kernel, x, x, y.astype(dtype)[:, None]
            )[:, 0].astype(np.float64)
        return w_new, carry


def _project_nonnegative(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 0.0)
