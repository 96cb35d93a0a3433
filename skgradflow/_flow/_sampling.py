"""``sample`` of the MMD samplers: new points of the fitted distribution."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from ..data import held_here
from ..kernels import _seed_from

# sample(method="transport") moves each batch of jittered particle draws for at most this
# many iterations: they start next to the fitted measure, and on a 3-mode test the energy
# distance to held-out data of 20 iterations is within 7% of 500 (and 10% better than none).
_SAMPLE_ITERATIONS = 20


class _MMDSampling:
    """``sample`` (mixed into the MMD flow base)."""

    def sample(self, n_samples: int = 1, random_state: Any = None, *,
               method: str = "transport") -> np.ndarray:
        """Draw new samples of the fitted distribution.

        ``method="transport"`` (default) returns new, distinct points: draws of the
        particles by weight (systematic resampling: each particle ``⌊N w_i⌋`` or
        ``⌈N w_i⌉`` times in a batch of ``N``), each moved off its particle by Gaussian
        noise with a tenth of the fitted measure's standard deviation in every direction,
        then moved together
        for at most 20 iterations by the transport part of the flow (weights fixed) onto the
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
            moved = self._move(Z, f"{type(self).__name__}.sample", max_iter=_SAMPLE_ITERATIONS,
                               verbose=0, warn=False, final=True)
            batches.append(moved[: n - start])
        return np.concatenate(batches)
