"""``sample`` of the MMD samplers: new points of the fitted distribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ..data import Data, as_data, held_here, session
from ..kernels import _seed_from
from ._draws import systematic_draw
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
# smoothing="auto" is the smallest width of this geometric grid (in units of the shapes)
# whose samples sit at least _NEW_ROW_RATIO times as far from the training rows as new rows
# of the data do (medians of the distance to the nearest training row, over _FLOOR_DRAWS
# samples and as many rows).  The fidelity of the samples is best at small widths (the local
# shapes carry the data's structure), so the width is only as large as being new requires.
# Against the leave-one-out likelihood width (widened to the same floor), over iris, wine,
# breast cancer, diabetes, digits PCA16, china colours and the 2-D mixture (3 seeds), it
# gives a lower or equal two-sample AUC and energy distance on every set but one
# (benchmarks/notes/sampling-research.md).  The estimate from the training rows alone is
# within about 5% of the ratio on held-out rows, hence 0.95.
_WIDTHS = np.geomspace(0.02, 4.0, 48)
_NEW_ROW_RATIO = 0.95
_FLOOR_DRAWS = 4000
# The local shapes come from at most this many training rows (drawn by weight above).
_SHAPE_MAX_ROWS = 20_000
# squared distances per block of a nearest-row search or of a mixture's density
_BLOCK_ENTRIES = 2**22
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
    """The weighted covariance of the ``_NEIGHBOURS`` training rows nearest each atom, with
    ``_SHRINK`` of its mean variance on the diagonal."""
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
    return shapes


def _mixture_log_density(points: np.ndarray, centres: np.ndarray, factors: np.ndarray,
                         weights: np.ndarray) -> np.ndarray:
    """``log Σ_i w_i N(points; c_i, F_i F_iᵀ)`` for lower-triangular ``F_i``, by blocks of
    components (one batched product each)."""
    n, r = points.shape
    inverse = np.linalg.inv(factors)
    log_norm = (np.log(np.maximum(weights, np.finfo(float).tiny))
                - np.sum(np.log(np.diagonal(factors, axis1=1, axis2=2)), axis=1)
                - 0.5 * r * np.log(2.0 * np.pi))
    per_component = np.empty((n, centres.shape[0]))
    step = max(1, _BLOCK_ENTRIES // max(n * r, 1))
    for s in range(0, centres.shape[0], step):
        z = np.einsum("irs,ns->inr", inverse[s : s + step], points)
        z -= np.einsum("irs,is->ir", inverse[s : s + step], centres[s : s + step])[:, None, :]
        per_component[:, s : s + step] = -0.5 * np.einsum("inr,inr->ni", z, z)
    return logsumexp(per_component + log_norm[None, :], axis=1)


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
    shapes = _local_shapes(z_atoms, rows, row_w)
    centres = z_atoms - w @ z_atoms
    spread = (centres * w[:, None]).T @ centres  # the atoms' covariance, the same at any h
    mean_shape = np.tensordot(w, shapes, axes=1)

    def at_width(h: float) -> _Smoothed:
        # Smoothing adds h² S_i to the spread around each atom, which then widens the whole
        # measure; a last linear map T makes its covariance the data's again (the identity
        # here).  The atoms stay where they are: shrinking each toward the mean of its
        # neighbours to keep the local spread (a local form of Silverman's shrunk smoothed
        # bootstrap) is a step of mean shift, which crowds the samples into the modes: on the
        # built-in 2-D mixture their distance to the closest training row then stays at 0.87
        # of a new row's at any width, and the width could not be chosen to reach 1.
        tval, tvec = np.linalg.eigh(spread + h * h * mean_shape)
        T = (tvec / np.sqrt(np.maximum(tval, _RANK_TOL * tval.max()))) @ tvec.T
        factors = np.linalg.cholesky(h * h * (T @ shapes @ T.T))
        return _Smoothed(mean, whiten, colour, log_jacobian, centres @ T, factors, w, h)

    if not isinstance(width, str):
        return at_width(float(width))
    atoms_here = z_atoms[w > 0] @ colour.T  # in the data's units, less the data's mean
    return at_width(_new_row_width(at_width, w, r, rows @ colour.T, row_w, atoms_here, rng))


def _nearest_distance(queries: np.ndarray, rows: np.ndarray, skip_self: bool = False):
    """The distance from each query to its nearest row (to its nearest other row, for
    ``skip_self``: the queries are then the first rows), from squared distances by blocks."""
    sq_rows = np.sum(rows * rows, axis=1)
    out = np.empty(queries.shape[0])
    step = max(1, _BLOCK_ENTRIES // max(rows.shape[0], 1))
    for s in range(0, queries.shape[0], step):
        q = queries[s : s + step]
        D = sq_rows[None, :] - 2.0 * q @ rows.T
        if skip_self:
            D[np.arange(q.shape[0]), np.arange(s, s + q.shape[0])] = np.inf
        out[s : s + step] = D.min(axis=1) + np.sum(q * q, axis=1)
    return np.sqrt(np.maximum(out, 0.0))


def _new_row_width(at_width, weights: np.ndarray, rank: int, rows: np.ndarray,
                   row_w: np.ndarray, atoms: np.ndarray, rng) -> float:
    """The smallest width of the grid whose samples are placed like new rows of the data:
    ``_NEW_ROW_RATIO`` times as far from the training ``rows`` as a row from its nearest
    other row (not copies of the rows), and as far from the ``atoms`` as the rows are (not
    clumps at the atoms); medians of the distance to the nearest, in the data's units.
    ``weights`` are the atoms' and ``rank`` the dimension of the whitened space that
    ``at_width`` draws in."""
    if rows.shape[0] < 3:
        return float(_WIDTHS[0])
    # a new row's distances, from at most _FLOOR_DRAWS rows drawn by weight; rows on an
    # atom (those a subsample start began from) are left out of the distance to the atoms:
    # a new row would not sit on one
    probe_rows = rng.choice(rows.shape[0], size=min(_FLOOR_DRAWS, rows.shape[0]),
                            replace=False, p=row_w / row_w.sum())
    order = np.concatenate([probe_rows, np.setdiff1d(np.arange(rows.shape[0]), probe_rows)])
    new_row = float(np.median(_nearest_distance(rows[probe_rows], rows[order],
                                                skip_self=True)))
    if new_row <= 0.0:
        return float(_WIDTHS[0])
    to_atoms = _nearest_distance(rows[probe_rows], atoms)
    off_atoms = to_atoms[to_atoms > 1e-6 * new_row]
    row_to_atom = float(np.median(off_atoms)) if off_atoms.size else 0.0
    # the same draws at every width (common random numbers), so that the distances grow
    # with the width as the spread does, not with the noise of fresh draws
    picks = systematic_draw(weights, _FLOOR_DRAWS, rng)
    normals = rng.standard_normal((_FLOOR_DRAWS, rank))

    def far_enough(width: float) -> bool:
        sm = at_width(width)
        Z = sm.centres[picks] + (sm.factors[picks] @ normals[:, :, None])[:, :, 0]
        samples = Z @ sm.colour.T
        return (float(np.median(_nearest_distance(samples, rows))) >= _NEW_ROW_RATIO * new_row
                and float(np.median(_nearest_distance(samples, atoms)))
                >= _NEW_ROW_RATIO * row_to_atom)

    # bisection for the first width of the grid far enough (the widest if none is)
    lo, hi = 0, _WIDTHS.size - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if far_enough(float(_WIDTHS[mid])):
            hi = mid
        else:
            lo = mid + 1
    return float(_WIDTHS[lo])


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
        return _mixture_log_density(Z, sm.centres, sm.factors, sm.weights) + sm.log_jacobian

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
        ``Σ_i w_i N(c_i, Σ_i)``: an atom by weight (systematic resampling), plus Gaussian
        noise shaped like the training rows around it (the covariance of its 20 nearest
        rows, a tenth of their mean variance on the diagonal) of a width ``smoothing_``
        chosen at fit as the smallest that places the samples like new rows of the data (or
        the ``smoothing`` parameter), then a linear map that makes the samples' mean and
        covariance the data's (design page, "Smoothed samples").  ``score`` and
        ``score_samples`` give this measure's log-density.

        ``method="transport"`` draws particles by weight (systematic resampling), moves
        each off its particle by Gaussian noise with a tenth of the fitted measure's
        standard deviation and moves them together for at most 20 iterations by the
        transport flow of :meth:`transform`, in batches of ``n_particles`` points (the
        earlier default: its samples stay near the training rows when there is a particle
        per row).  ``method="particles"`` returns the particles themselves, drawn by weight
        (systematic resampling; copies, with repeats).

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
        drawn = systematic_draw(w, n, rng)
        batches = []
        for start in range(0, n, N):
            rows = drawn[start : start + N]
            Z = atoms[rows] + (rng.standard_normal((rows.size, d)) @ root.T).astype(atoms.dtype)
            # one progress bar per batch would flood the terminal: the batches run quietly
            batches.append(self._transport_batch(Z))
        return np.concatenate(batches)

    def _sample_smoothed(self, n_samples, random_state) -> np.ndarray:
        n = self._check_n_samples(n_samples)
        check_is_fitted(self)
        sm = self._smoothed
        rng = np.random.default_rng(_seed_from(check_random_state(random_state)))
        rows = systematic_draw(sm.weights, n, rng)
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
