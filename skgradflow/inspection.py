"""The fitted measure of an estimator, or of a fitted ``Pipeline`` that ends in one.

Helpers here read public attributes only (``particles_`` or ``means_``, ``weights_``), so
they work on any fitted estimator of this package and on a ``Pipeline`` whose last step is
one, such as ``make_pipeline(StandardScaler(), IFTSampler())``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted


def split_pipeline(estimator) -> tuple[Pipeline | None, Any]:
    """``(transformers, final)``: the steps before the last of a ``Pipeline`` (``None``
    when there are none, or for a bare estimator) and the estimator that holds the
    measure."""
    if isinstance(estimator, Pipeline):
        final = estimator[-1]
        return (estimator[:-1] if len(estimator) > 1 else None), final
    return None, estimator


def _atoms(final) -> np.ndarray:
    for name in ("particles_", "means_"):
        if hasattr(final, name):
            return getattr(final, name)
    raise TypeError(
        "estimator must be a fitted IFTSampler, WFRMMDFlow or InclusiveKLFitter, or a "
        f"Pipeline ending in one; got {type(final).__name__}, which has neither "
        "particles_ nor means_."
    )


def _inverse(transformers: Pipeline, Z: np.ndarray) -> np.ndarray:
    missing = [name for name, step in transformers.steps
               if step != "passthrough" and not hasattr(step, "inverse_transform")]
    if missing:
        raise TypeError(
            "original_units=True needs inverse_transform on every step before the "
            f"estimator; {missing} have none. Use original_units=False for the measure in "
            "the estimator's own space."
        )
    return transformers.inverse_transform(Z)


def fitted_measure(estimator, *, original_units: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The fitted atoms and their weights (normalised to sum to 1).

    Parameters
    ----------
    estimator : fitted estimator of this package, or Pipeline ending in one
    original_units : bool, default=False
        For a Pipeline: map the atoms back through the ``inverse_transform`` of the steps
        before the estimator (e.g. undo a ``StandardScaler``).  Otherwise they are in the
        space the estimator was fitted in.

    Returns
    -------
    atoms : ndarray of shape (n_atoms, n_features)
    weights : ndarray of shape (n_atoms,)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skgradflow import IFTSampler
    >>> from skgradflow.inspection import fitted_measure
    >>> X = np.random.default_rng(0).normal(loc=100.0, size=(200, 2))
    >>> pipe = make_pipeline(StandardScaler(), IFTSampler(n_particles=20, max_iter=5, tol=0))
    >>> atoms, w = fitted_measure(pipe.fit(X), original_units=True)
    >>> bool(abs(atoms.mean() - 100) < 2), round(float(w.sum()), 12)
    (True, 1.0)
    """
    transformers, final = split_pipeline(estimator)
    check_is_fitted(final)
    atoms = _atoms(final)
    w = np.asarray(final.weights_, dtype=np.float64)
    if original_units and transformers is not None:
        atoms = _inverse(transformers, atoms)
    return atoms, w / w.sum()


def sample(estimator, n_samples: int = 1, *, random_state=None) -> np.ndarray:
    """Samples of a fitted estimator, in the units of the data a Pipeline was fitted on.

    For a Pipeline, the last step's ``sample`` is mapped back through the
    ``inverse_transform`` of the steps before it; for a bare estimator, this is its own
    ``sample``.

    Parameters
    ----------
    estimator : fitted estimator of this package, or Pipeline ending in one
    n_samples : int, default=1
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    ndarray of shape (n_samples, n_features)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skgradflow import InclusiveKLFitter
    >>> from skgradflow.inspection import sample
    >>> X = np.random.default_rng(0).normal(loc=[50.0, -5.0], size=(300, 2))
    >>> pipe = make_pipeline(StandardScaler(), InclusiveKLFitter(n_components=20)).fit(X)
    >>> new = sample(pipe, 1000, random_state=0)
    >>> np.round(new.mean(axis=0))
    array([50., -5.])
    """
    transformers, final = split_pipeline(estimator)
    Z = final.sample(n_samples, random_state=random_state)
    return Z if transformers is None else _inverse(transformers, Z)
