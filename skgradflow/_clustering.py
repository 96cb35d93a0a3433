"""Initial atoms of the mixture: cluster centres of the weighted samples."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus


def cluster_centers(init: str, X: np.ndarray, b: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` centres of the rows of ``X`` weighted by ``b``.

    ``init="kmeans++"``: k-means++ seeding; ``"kmeans"``: Lloyd's k-means from one k-means++
    seeding (scikit-learn's ``KMeans``, as ``GaussianMixture`` initialises).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2))]
    >>> centers = cluster_centers("kmeans", X, np.full(10, 0.1), 2, seed=0)
    >>> sorted(centers[:, 0].tolist())
    [0.0, 1.0]
    """
    if n >= X.shape[0]:
        # no more distinct rows than centres (repeated rows are merged into weights): every
        # row is a centre, and the rest are rows drawn again by weight
        extra = np.random.default_rng(seed).choice(X.shape[0], size=n - X.shape[0], p=b / b.sum())
        return np.concatenate([X, X[extra]]).astype(X.dtype, copy=False)
    if init == "kmeans++":
        centers, _ = kmeans_plusplus(X, n, sample_weight=b, random_state=seed)
    else:
        kmeans = KMeans(n, n_init=1, random_state=seed).fit(X, sample_weight=b)
        centers = kmeans.cluster_centers_
    return centers.astype(X.dtype, copy=False)
