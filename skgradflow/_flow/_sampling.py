"""``sample`` of the MMD samplers: new points of the fitted distribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import logsumexp
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ..data import Data, as_data, held_here, session
from ..kernels import _seed_from
from ._state import FlowState

# sample(method="transport") moves each batch of jittered particle draws for at most this
# many iterations: they start next to the fitted measure, and on a 3-mode test the energy
# distance to held-out data of 20 iterations is within 7% of 500 (and 10% better than none).
_SAMPLE_ITERATIONS = 20

# The smoothed measure (sample(method="smooth"), score, score_samples).  The shape of the
# component of an atom is the covariance of its _NEIGHBOURS nearest training rows, with
# _SHRINK of their mean variance on the diagonal (so that a shape is never singular): with the
# training rows of breast cancer (30 features) as atoms, the classifier two-sample AUC of the
# samples is 0.58 with these local shapes (seed 0) against 0.83 with the data's shape for every
# atom (two seeds), and k = 5 without shrinkage gives near-copies
# (benchmarks/notes/sampling-research.md).
_NEIGHBOURS = 20
_SHRINK = 0.1
# The width is chosen over this geometric grid (in units of the shapes) by the leave-one-out
# log-likelihood of the atoms, on at most _LOO_MAX_ATOMS atoms drawn by weight.
_WIDTHS = np.geomspace(0.02, 4.0, 48)
_LOO_MAX_ATOMS = 2000
# The local shapes come from at most this many training rows (drawn by weight above).
_SHAPE_MAX_ROWS = 20_000
# Directions of the data with a variance below this fraction of the largest get no spread.
_RANK_TOL = 1e-10


@dataclass
class _Smoothed:
    """The smoothed measure ``Σ_i w_i N(c_i, F_i F_iᵀ)`` in the whitened coordinates
    ``z = W (x - mean)`` of the data's positive-variance subspace (``x = mean + B z``)."""

    mean: np.ndarray  # (d,)
    whiten: np.ndarray  # W, (r, d)
    colour: np.ndarray  # B, (d, r)
    log_jacobian: float  # log |det W| on the subspace
    centres: np.ndarray  # (N, r)
    factors: np.ndarray  # (N, r, r), lower triangular
    weights: np.ndarray  # (N,)
    width: float


def _local_shapes(atoms: np.ndarray, rows: np.ndarray, row_weights: np.ndarray):
    """The weighted mean and covariance of the ``_NEIGHBOURS`` training rows nearest each
    atom, the covariance with ``_SHRINK`` of its mean variance on the diagonal."""
    from sklearn.neighbors import NearestNeighbors

    k = min(_NEIGHBOURS, rows.shape[0])
    index = NearestNeighbors(n_neighbors=k).fit(rows)
    near = index.kneighbors(atoms, return_distance=False)
    pts, wts = rows[near], row_weights[near]  # (N, k, r), (N, k)
    wts = wts / wts.sum(axis=1, keepdims=True)
    local_mean = np.einsum("nk,nkr->nr", wts, pts)
    centred = pts - local_mean[:, None, :]
    local = np.einsum("nk,nki,nkj->nij", wts, centred, centred)
    r = rows.shape[1]
    # toward the local mean variance, not the data's covariance: between-mode spread mixed
    # into every shape would widen each mode of multimodal data
    scale = np.trace(local, axis1=1, axis2=2) / r
    scale = np.maximum(scale, 1e-6)  # an atom whose neighbours coincide: a small ball
    shapes = (1.0 - _SHRINK) * local + _SHRINK * scale[:, None, None] * np.eye(r)[None]
    return local_mean, shapes


def _component_log_density(points: np.ndarray, centre: np.ndarray, factor: np.ndarray):
    """``log N(points; centre, F Fᵀ)`` for a lower-triangular ``F``."""
    z = solve_triangular(factor, (points - centre).T, lower=True)
    log_det = 2.0 * np.sum(np.log(np.diagonal(factor)))
    r = points.shape[1]
    return -0.5 * np.sum(z * z, axis=0) - 0.5 * log_det - 0.5 * r * np.log(2.0 * np.pi)


def _loo_width(atoms: np.ndarray, w: np.ndarray, roots: np.ndarray, rng) -> float:
    """The width ``h`` of the grid with the highest leave-one-out log-likelihood of the
    atoms: ``Σ_j w_j log Σ_{i≠j} w_i/(1-w_j) N(x_j; x_i, h² S_i)``.

    Pairs of identical atoms are left out with the atom itself: a repeated atom would
    otherwise make any width near 0 infinitely likely."""
    # atoms of weight 0 (many, after IFT's weight steps) add nothing to either sum
    positive = w > 0
    atoms, w, roots = atoms[positive], w[positive] / w[positive].sum(), roots[positive]
    if atoms.shape[0] > _LOO_MAX_ATOMS:
        keep = rng.choice(atoms.shape[0], size=_LOO_MAX_ATOMS, replace=False, p=w)
        atoms, w, roots = atoms[keep], np.full(_LOO_MAX_ATOMS, 1.0 / _LOO_MAX_ATOMS), roots[keep]
    N, r = atoms.shape
    if N < 2:
        return 1.0
    # sq[j, i] = |S_i^{-1/2} (x_j - x_i)|², log_det[i] = log det S_i
    sq = np.empty((N, N))
    for i in range(N):
        z = solve_triangular(roots[i], (atoms - atoms[i]).T, lower=True)
        sq[:, i] = np.sum(z * z, axis=0)
    log_det = 2.0 * np.sum(np.log(np.diagonal(roots, axis1=1, axis2=2)), axis=1)
    same = sq <= 0.0
    np.fill_diagonal(same, True)
    log_w = np.log(np.maximum(w, np.finfo(float).tiny))
    alone = same.all(axis=1)  # atoms with no distinct neighbour say nothing about h
    if alone.all():
        return 1.0
    best, best_ll = float(_WIDTHS[-1]), -np.inf
    for h in _WIDTHS:
        L = -0.5 * sq / (h * h) - 0.5 * log_det[None, :] - r * np.log(h) + log_w[None, :]
        L[same] = -np.inf
        ll = logsumexp(L[~alone], axis=1) - np.log(np.sum(np.where(same, 0.0, w), axis=1)[~alone])
        value = float(w[~alone] @ ll)
        if value > best_ll:
            best, best_ll = float(h), value
    return best


def smoothed_measure(atoms: np.ndarray, w: np.ndarray, data: Data, width, rng) -> _Smoothed:
    """The smoothed measure of the fitted atoms (see ``_MMDSampling.sample``)."""
    mean, cov = data.mean_covariance()
    eigval, eigvec = np.linalg.eigh(cov)
    positive = eigval > _RANK_TOL * max(float(eigval.max()), 0.0)
    if not positive.any():  # every row the same: no direction to spread in
        positive = np.zeros_like(positive)
    vals, vecs = eigval[positive], eigvec[:, positive]
    whiten, colour = (vecs / np.sqrt(vals)).T, vecs * np.sqrt(vals)
    log_jacobian = -0.5 * float(np.sum(np.log(vals)))
    if data.n_samples > _SHAPE_MAX_ROWS:
        rows, row_w = data.draw(_SHAPE_MAX_ROWS, rng), np.full(_SHAPE_MAX_ROWS, 1.0)
    else:
        rows, row_w = data.to_host(), np.asarray(data.weights, dtype=np.float64)
    rows = (np.asarray(rows, dtype=np.float64) - mean) @ whiten.T
    z_atoms = (atoms.astype(np.float64) - mean) @ whiten.T
    w = w / w.sum()
    r = z_atoms.shape[1]
    if r == 0:
        return _Smoothed(mean, whiten, colour, log_jacobian, z_atoms,
                         np.zeros((atoms.shape[0], 0, 0)), w, 0.0)
    local_mean, shapes = _local_shapes(z_atoms, rows, row_w)
    roots = np.linalg.cholesky(shapes)
    h = _loo_width(z_atoms, w, roots, rng) if isinstance(width, str) else float(width)
    # Smoothing adds h² S_i to the spread around each atom.  Each atom is first moved toward
    # the mean of its neighbours by a = 1/√(1+h²), and its noise scaled by a, so that the
    # spread within a neighbourhood stays about what it was (Silverman's shrunk smoothed
    # bootstrap, done locally: shrinking toward the data's mean would pull separate modes
    # together).  A last linear map T then makes the covariance the data's exactly
    # (the identity here); T is close to the identity.
    a = 1.0 / np.sqrt(1.0 + h * h)
    centres = local_mean + a * (z_atoms - local_mean)
    noise = (a * h) ** 2 * shapes
    centres = centres - w @ centres
    total = (centres * w[:, None]).T @ centres + np.einsum("n,nij->ij", w, noise)
    tval, tvec = np.linalg.eigh(total)
    T = (tvec / np.sqrt(np.maximum(tval, _RANK_TOL * tval.max()))) @ tvec.T
    factors = np.linalg.cholesky(np.einsum("ij,njk,lk->nil", T, noise, T))
    return _Smoothed(mean, whiten, colour, log_jacobian, centres @ T, factors, w, h)


class _MMDSampling:
    """``sample``, ``score_samples`` and ``score`` of the smoothed fitted measure (mixed
    into the MMD flow base)."""

    def _fit(self, data: Data):
        super()._fit(data)
        atoms, w = self._fitted_measure()
        rng = np.random.default_rng(_seed_from(check_random_state(self.random_state)))
        self._smoothed = smoothed_measure(atoms, w, data, self.smoothing, rng)
        self.smoothing_ = self._smoothed.width
        return self

    def score_samples(self, X) -> np.ndarray:
        """Log-density of the smoothed fitted measure (what ``sample`` draws from) at ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            ``log p(x)``, with ``p`` the density on the subspace in which the training
            data varies (a constant feature adds nothing; a point off that subspace gets
            the density of its projection).
        """
        check_is_fitted(self)
        with session(self.backend, X, arrays_only=True):
            X = as_data(X, estimator=self, reset=False).to_host()
        return self._log_density(np.asarray(X, dtype=np.float64))

    def _log_density(self, X: np.ndarray) -> np.ndarray:
        sm = self._smoothed
        if sm.centres.shape[1] == 0:
            raise ValueError(
                "The training data has no spread (every row the same): the smoothed "
                "measure has no density. Fit on rows that differ."
            )
        Z = (X - sm.mean) @ sm.whiten.T
        log_w = np.log(np.maximum(sm.weights, np.finfo(float).tiny))
        per_atom = np.stack([
            _component_log_density(Z, c, F) for c, F in zip(sm.centres, sm.factors,
                                                              strict=True)
        ], axis=1)
        return logsumexp(per_atom + log_w[None, :], axis=1) + sm.log_jacobian

    def score(self, X, y=None, sample_weight=None) -> float:
        """Mean log-likelihood of ``X`` under the smoothed fitted measure.

        Higher is better.  It is the density ``sample`` draws from, so a fit whose samples
        copy its training rows (a width near 0) scores far below one that generalises, on
        held-out rows: what ``GridSearchCV`` needs.  The energy distance to ``X``, which
        rewards copies of the training rows, stays available as
        ``scoring=make_distribution_scorer()``.

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
            data = as_data(X, sample_weight, estimator=self, reset=False)
            rows, b = data.to_host(), np.asarray(data.weights, dtype=np.float64)
        return float(b @ self._log_density(np.asarray(rows, dtype=np.float64)) / b.sum())

    def sample(self, n_samples: int = 1, random_state: Any = None, *,
               method: str = "smooth") -> np.ndarray:
        """Draw new samples of the fitted distribution.

        ``method="smooth"`` (default) draws from the smoothed fitted measure
        ``Σ_i w_i N(c_i, Σ_i)``: an atom by weight, plus Gaussian noise shaped like the
        training rows around it (the covariance of its 20 nearest rows, with a tenth of
        the data's covariance mixed in), of a width ``smoothing_`` chosen at fit by the
        leave-one-out likelihood of the atoms (or the ``smoothing`` parameter); the atoms
        are then shrunk toward the data's mean so that the samples' mean and covariance
        are the data's (design page, "Smoothed samples").  ``score`` and
        ``score_samples`` give this measure's log-density.

        ``method="transport"`` draws particles by weight (systematic resampling), moves
        each off its particle by Gaussian noise with a tenth of the fitted measure's
        standard deviation and moves them together for at most 20 iterations by the
        transport flow of :meth:`transform`, in batches of ``n_particles`` points (the
        earlier default: its samples stay near the training rows when there is a particle
        per row).  ``method="particles"`` returns weighted draws of the particles themselves
        (copies, with repeats).

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Makes the draw reproducible.
        method : {"smooth", "transport", "particles"}, default="smooth"

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
        if method not in ("smooth", "transport", "particles"):
            raise ValueError(
                f"method must be 'smooth', 'transport' or 'particles'; got {method!r}."
            )
        if method == "smooth":
            return self._sample_smoothed(n_samples, random_state)

        if method == "particles":
            return self._draw_atoms(n_samples, random_state)
        n = self._check_n_samples(n_samples)
        atoms, w = self._fitted_measure()
        rng = np.random.default_rng(_seed_from(check_random_state(random_state)))
        N, d = atoms.shape
        # the noise is shaped like the fitted measure, so that a direction in which it does
        # not spread (a constant feature, data on a line) gets none
        root = 0.1 * held_here(atoms, w).moments()[1]
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
            moved = self._transport_batch(Z)
            batches.append(moved[: n - start])
        return np.concatenate(batches)

    def _sample_smoothed(self, n_samples, random_state) -> np.ndarray:
        n = self._check_n_samples(n_samples)
        check_is_fitted(self)
        sm = self._smoothed
        rng = np.random.default_rng(_seed_from(check_random_state(random_state)))
        N = sm.weights.shape[0]
        cumulative = np.cumsum(sm.weights)
        # systematic resampling in batches of N: each atom ⌊N w_i⌋ or ⌈N w_i⌉ times a batch,
        # so that the samples carry the fitted weights without the noise of independent
        # draws (the mass of separated modes: 1000 independent draws on gmm2d give an energy
        # distance 5x that of real rows, systematic ones 0.8x), in random order so that a
        # last, cut batch is a random part of a whole one
        batches = []
        for _ in range(0, n, N):
            u = (rng.uniform() + np.arange(N)) / N
            batch = np.minimum(np.searchsorted(cumulative, u * cumulative[-1]), N - 1)
            batches.append(rng.permutation(batch))
        rows = np.concatenate(batches)[:n]
        noise = np.einsum("nij,nj->ni", sm.factors[rows],
                          rng.standard_normal((n, sm.centres.shape[1])))
        Z = sm.centres[rows] + noise
        return (sm.mean + Z @ sm.colour.T).astype(self.particles_.dtype)

    def _transport_batch(self, Z: np.ndarray) -> np.ndarray:
        """The jittered draws ``Z`` after at most ``_SAMPLE_ITERATIONS`` iterations of the
        transport part of the flow (weights fixed) onto the fitted measure, at the final
        bandwidth; quiet, and without a ConvergenceWarning (the cap is deliberate)."""
        if self.alpha == 0:
            return Z
        atoms, b = self._fitted_measure()
        # the fitted measure is small: every iteration uses all of it, whatever batch_size
        problem = self._make_problem(held_here(atoms.astype(Z.dtype), b), self._kernel(),
                                     Z.shape[0], np.random.default_rng(0), update_weights=False,
                                     minibatches=False)
        self._prepare(problem, Z.shape[0])
        # points that start in place make no progress to compare with: the scale of the
        # energies of the fit stands in for it
        scale = float(abs(self.loss_curve_[0] - self.loss_curve_[-1]))
        start = FlowState(Z, np.full(Z.shape[0], 1.0 / Z.shape[0]))
        state, *_ = self._run_flow(problem, start, f"{type(self).__name__}.sample", scale,
                                   max_iter=_SAMPLE_ITERATIONS, verbose=0, warn=False)
        return state.atoms
