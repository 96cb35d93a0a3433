"""``transform`` of the MMD samplers: another point set moved onto the fitted measure."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ..data import as_data, held_here, session
from ._loop import _phase_bandwidths, _phase_shares
from ._state import FlowState


class _MMDMatching:
    """``transform`` and the transport flow it runs (mixed into the MMD flow base)."""

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
        with session(self.backend, X):
            points = as_data(X, estimator=self, dtype=[np.float64, np.float32], reset=False,
                             copy=True)
            # the points interact: they are moved together, in memory
            moved = self._move(np.array(points.to_host()), f"{type(self).__name__}.transform")
            return points.wrap(moved)

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
                held_here(atoms.astype(Z.dtype), b), self._kernel(h), Z.shape[0], rng,
                update_weights=False, minibatches=False,
            )
            self._prepare(problem, Z.shape[0])
            state, *_ = self._run_flow(problem, FlowState(Z, w), desc, scale, max_iter=share,
                                       verbose=verbose, warn=warn and h == phases[-1])
            Z = state.atoms
        return Z
