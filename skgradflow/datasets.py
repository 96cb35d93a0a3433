"""Small built-in data sets for examples, tests and the command line.

Two synthetic 2-D targets, generated with NumPy from a seed, and the feature matrices of
four data sets bundled with scikit-learn (read from the installed package; nothing is
downloaded).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn import datasets as _sk

# The synthetic sets have this many rows: enough to look like a density, few enough that
# a flow on them runs in seconds with the NumPy backend.
_N_SYNTHETIC = 2000


def _gmm2d(random_state) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(random_state)
    # Unequal weights, so that a sampler must also get the mass of each mode right, not
    # only its location; means far apart relative to the spreads (well separated).
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    covs = np.array(
        [
            [[1.0, 0.0], [0.0, 1.0]],
            [[0.6, 0.3], [0.3, 0.6]],
            [[1.2, -0.4], [-0.4, 0.5]],
        ]
    )
    counts = np.round(weights * _N_SYNTHETIC).astype(int)
    counts[0] += _N_SYNTHETIC - counts.sum()
    parts = [
        rng.multivariate_normal(mean, cov, size=count, method="cholesky")
        for mean, cov, count in zip(means, covs, counts, strict=True)
    ]
    X = np.concatenate(parts)
    return X[rng.permutation(_N_SYNTHETIC)], ["x", "y"]


def _ring2d(random_state) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(random_state)
    theta = rng.uniform(0.0, 2.0 * np.pi, size=_N_SYNTHETIC)
    radius = 3.0 + 0.2 * rng.standard_normal(_N_SYNTHETIC)
    X = np.column_stack([radius * np.cos(theta), radius * np.sin(theta)])
    return X, ["x", "y"]


def _sklearn_loader(loader: Callable) -> Callable:
    def load(random_state) -> tuple[np.ndarray, list[str]]:
        bunch = loader()
        X = np.array(bunch.data, dtype=np.float64)
        return X, [str(name) for name in bunch.feature_names]

    return load


_LOADERS: dict[str, Callable] = {
    "gmm2d": _gmm2d,
    "ring2d": _ring2d,
    "iris": _sklearn_loader(_sk.load_iris),
    "wine": _sklearn_loader(_sk.load_wine),
    "breast_cancer": _sklearn_loader(_sk.load_breast_cancer),
    "digits": _sklearn_loader(_sk.load_digits),
}

_DESCRIPTIONS: dict[str, str] = {
    "gmm2d": "mixture of 3 well-separated Gaussians (weights 0.5, 0.3, 0.2)",
    "ring2d": "noisy ring of radius 3 (radial noise 0.2)",
    "iris": "scikit-learn's iris measurements (features only)",
    "wine": "scikit-learn's wine recognition data (features only)",
    "breast_cancer": "scikit-learn's Wisconsin breast cancer data (features only)",
    "digits": "scikit-learn's 8x8 handwritten digits, pixel intensities (features only)",
}

#: Names accepted by :func:`load_builtin`.
BUILTIN_DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_builtin(
    name: str, random_state: int | np.random.Generator | None = 0
) -> tuple[np.ndarray, list[str]]:
    """Load a built-in data set: its feature matrix and feature names.

    Parameters
    ----------
    name : str
        One of :data:`BUILTIN_DATASETS`:

        - ``"gmm2d"``: 2000 rows from a mixture of three well-separated 2-D Gaussians
          with weights 0.5, 0.3 and 0.2;
        - ``"ring2d"``: 2000 rows on a ring of radius 3 with Gaussian radial noise
          (standard deviation 0.2);
        - ``"iris"``, ``"wine"``, ``"breast_cancer"``, ``"digits"``: the features of the
          data sets bundled with scikit-learn (the targets are dropped).
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the synthetic sets; the same seed gives the same rows.  Ignored by the
        scikit-learn sets, which are fixed.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype float64
        A new array; modifying it does not affect later calls.
    feature_names : list of str

    Raises
    ------
    ValueError
        If ``name`` is not a built-in data set.

    Examples
    --------
    >>> from skgradflow.datasets import load_builtin
    >>> X, names = load_builtin("gmm2d")
    >>> X.shape, names
    ((2000, 2), ['x', 'y'])
    >>> X2, _ = load_builtin("gmm2d", random_state=0)
    >>> bool((X == X2).all())
    True
    >>> load_builtin("iris")[0].shape
    (150, 4)
    """
    if name not in _LOADERS:
        raise ValueError(f"name must be one of {', '.join(BUILTIN_DATASETS)}; got {name!r}.")
    return _LOADERS[name](random_state)


def describe_builtin(name: str) -> str:
    """A one-line description of a built-in data set.

    Parameters
    ----------
    name : str
        One of :data:`BUILTIN_DATASETS`.

    Returns
    -------
    str

    Examples
    --------
    >>> from skgradflow.datasets import describe_builtin
    >>> describe_builtin("ring2d")
    'noisy ring of radius 3 (radial noise 0.2)'
    """
    if name not in _DESCRIPTIONS:
        raise ValueError(f"name must be one of {', '.join(BUILTIN_DATASETS)}; got {name!r}.")
    return _DESCRIPTIONS[name]
