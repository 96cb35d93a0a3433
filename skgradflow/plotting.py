"""Plots of a fitted flow (requires matplotlib: ``pip install skgradflow[plot]``).

Both functions draw on a given or new Axes, return it, and work with any matplotlib
backend, headless ones included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted


def _axes(ax):
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "skgradflow.plotting needs matplotlib: pip install 'skgradflow[plot]'"
        ) from exc
    if ax is None:
        _, ax = plt.subplots()
    return ax


def plot_particles(
    estimator,
    ax=None,
    *,
    dims: tuple[int, int] = (0, 1),
    size: float = 20.0,
    zero_weight: float = 1e-2,
    data: np.ndarray | None = None,
    color: Any = "C3",
    label: str | None = None,
    data_label: str = "data",
    **scatter_kwargs: Any,
):
    """Scatter the fitted particles (or mixture atoms) with marker area proportional to
    weight.

    Particles whose weight is below ``zero_weight / n_particles`` are drawn as hollow
    markers of the base size, so that particles a reweighting flow emptied stay visible.

    Parameters
    ----------
    estimator : fitted IFTSampler, WFRMMDFlow or InclusiveKLFitter
    ax : matplotlib Axes, optional
        Drawn on a new figure when omitted.
    dims : pair of int, default=(0, 1)
        The two features to show.
    size : float, default=20.0
        Marker area (points²) of a particle of weight ``1 / n_particles``.
    zero_weight : float, default=1e-2
        Relative weight below which a particle is drawn hollow.
    data : array-like of shape (n_samples, n_features), optional
        Points drawn underneath in light grey (e.g. the training data).
    color : matplotlib color, default="C3"
    label : str, optional
        Legend label of the weighted atoms; "particles (area ∝ weight)" or, for a
        mixture, "atoms (area ∝ weight)" by default.  The emptied ones are labelled
        "(near-)zero weight".
    data_label : str, default="data"
        Legend label of ``data``.
    **scatter_kwargs
        Passed to ``Axes.scatter`` for the particles.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from skgradflow import IFTSampler
    >>> from skgradflow.plotting import plot_particles
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> sampler = IFTSampler(n_particles=50, max_iter=30, tol=0, random_state=0).fit(X)
    >>> ax = plot_particles(sampler, data=X)
    >>> len(ax.collections)  # data, filled particles, hollow particles
    3
    """
    check_is_fitted(estimator)
    ax = _axes(ax)
    atoms, weights = estimator._fitted_measure()
    i, j = dims
    relative = weights * len(weights)
    full = relative >= zero_weight
    if data is not None:
        data = np.asarray(data)
        ax.scatter(data[:, i], data[:, j], s=4, c="0.8", linewidths=0, label=data_label)
    if label is None:
        kind = "atoms" if estimator._atoms_attr == "means_" else "particles"
        label = f"{kind} (area ∝ weight)"
    ax.scatter(atoms[full, i], atoms[full, j], s=size * relative[full], c=[color], alpha=0.75,
               linewidths=0, label=label, **scatter_kwargs)
    ax.scatter(atoms[~full, i], atoms[~full, j], s=size, facecolors="none", edgecolors=[color],
               linewidths=0.8, label="(near-)zero weight", **scatter_kwargs)
    ax.set_xlabel(f"feature {i}")
    ax.set_ylabel(f"feature {j}")
    return ax


def plot_loss_curve(estimator, ax=None, *, log: bool = True, label: str | None = None,
                    **plot_kwargs: Any):
    """Plot ``loss_curve_`` (the energy before the first and after each iteration).

    Parameters
    ----------
    estimator : fitted IFTSampler, WFRMMDFlow or InclusiveKLFitter
    ax : matplotlib Axes, optional
    log : bool, default=True
        Logarithmic energy axis (only when every value is positive).
    label : str, optional
        Legend label; the estimator's class name by default.
    **plot_kwargs
        Passed to ``Axes.plot``.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from skgradflow import IFTSampler
    >>> from skgradflow.plotting import plot_loss_curve
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> sampler = IFTSampler(n_particles=50, max_iter=30, tol=0, random_state=0).fit(X)
    >>> ax = plot_loss_curve(sampler)
    >>> len(ax.lines)
    1
    """
    check_is_fitted(estimator)
    ax = _axes(ax)
    curve = np.asarray(estimator.loss_curve_)
    ax.plot(np.arange(curve.size), curve, label=label or type(estimator).__name__,
            **plot_kwargs)
    if log and np.all(curve > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("energy")
    return ax
