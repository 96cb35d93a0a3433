"""Plots of a fitted flow (requires matplotlib: ``pip install skgradflow[plot]``).

The plotting functions draw on a given or new Axes and return it; :func:`animate_path`
writes an animation of a recorded path to a file.  All work with any matplotlib backend,
headless ones included, and accept a fitted ``Pipeline`` whose last step is one of the
estimators.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._atomic import atomic_path
from .inspection import fitted_measure, split_pipeline


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
    original_units: bool | None = None,
    **scatter_kwargs: Any,
):
    """Scatter the fitted particles (or mixture atoms) with marker area proportional to
    weight.

    Particles whose weight is below ``zero_weight / n_particles`` are drawn as hollow
    markers of the base size, so that particles a reweighting flow emptied stay visible.

    Parameters
    ----------
    estimator : fitted IFTSampler, WFRMMDFlow or InclusiveKLFitter, or Pipeline ending in one
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
    original_units : bool or None, default=None
        For a Pipeline: draw the atoms mapped back through the ``inverse_transform`` of the
        steps before the estimator, over ``data`` in the units it was given in.  ``None``
        does so when every such step has ``inverse_transform``, and otherwise draws the
        atoms (and ``data``, passed through the steps' ``transform``) in the estimator's
        own space.
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
    transformers, final = split_pipeline(estimator)
    check_is_fitted(final)
    if original_units is None:
        original_units = transformers is None or all(
            hasattr(step, "inverse_transform") for _, step in transformers.steps
            if step != "passthrough"
        )
    atoms, weights = fitted_measure(estimator, original_units=original_units)
    if data is not None:
        data = np.asarray(data)
        if transformers is not None and not original_units:
            data = transformers.transform(data)
    if label is None:
        kind = "atoms" if hasattr(final, "means_") else "particles"
        label = f"{kind} (area ∝ weight)"
    ax = _axes(ax)
    _scatter_measure(ax, atoms, weights, dims, size, zero_weight, data, color, label,
                     data_label, scatter_kwargs)
    return ax


def _scatter_measure(ax, atoms, weights, dims, size, zero_weight, data, color, label,
                     data_label, scatter_kwargs):
    """Draw ``data`` in grey, then the weighted atoms (filled) and the emptied ones
    (hollow); returns the two atom collections."""
    i, j = dims
    relative = weights * len(weights)
    full = relative >= zero_weight
    if data is not None:
        ax.scatter(data[:, i], data[:, j], s=4, c="0.8", linewidths=0, label=data_label)
    filled = ax.scatter(atoms[full, i], atoms[full, j], s=size * relative[full], c=[color],
                        alpha=0.75, linewidths=0, label=label, **scatter_kwargs)
    hollow = ax.scatter(atoms[~full, i], atoms[~full, j], s=size, facecolors="none",
                        edgecolors=[color], linewidths=0.8, label="(near-)zero weight",
                        **scatter_kwargs)
    ax.set_xlabel(f"feature {i}")
    ax.set_ylabel(f"feature {j}")
    return filled, hollow


def plot_loss_curve(estimator, ax=None, *, log: bool = True, label: str | None = None,
                    **plot_kwargs: Any):
    """Plot ``loss_curve_`` (the energy before the first and after each iteration).

    Parameters
    ----------
    estimator : fitted IFTSampler, WFRMMDFlow or InclusiveKLFitter, or Pipeline ending in one
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
    _, final = split_pipeline(estimator)
    check_is_fitted(final)
    ax = _axes(ax)
    curve = np.asarray(final.loss_curve_)
    ax.plot(np.arange(curve.size), curve, label=label or type(final).__name__,
            **plot_kwargs)
    if log and np.all(curve > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("energy")
    return ax


def animate_path(
    path,
    filename,
    *,
    dims: tuple[int, int] = (0, 1),
    data: np.ndarray | None = None,
    size: float = 20.0,
    zero_weight: float = 1e-2,
    color: Any = "C3",
    fps: int = 10,
    dpi: int = 80,
    title: str = "iteration {n_iter}",
):
    """Write an animation of a recorded path: one frame per recorded iteration, the atoms
    drawn as by :func:`plot_particles`.

    Parameters
    ----------
    path : PathRecorder
        A :class:`skgradflow.callbacks.PathRecorder` that was passed as ``callback`` to a
        fit, or any object with lists ``atoms``, ``weights`` and ``n_iter`` of equal length.
    filename : str or path-like
        ``.gif`` is written by Pillow (which comes with matplotlib); other extensions
        (``.mp4``, ...) by matplotlib's default writer for them (ffmpeg for ``.mp4``).
        The file is written whole or not at all: to a temporary file in the same folder,
        renamed onto ``filename`` when complete.
    dims : pair of int, default=(0, 1)
    data : array-like of shape (n_samples, n_features), optional
        Points drawn underneath in every frame.
    size, zero_weight, color
        As in :func:`plot_particles`.
    fps : int, default=10
    dpi : int, default=80
    title : str, default="iteration {n_iter}"
        Frame title, formatted with ``n_iter`` and ``energy`` (when recorded).

    Returns
    -------
    matplotlib.animation.FuncAnimation

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skgradflow import IFTSampler
    >>> from skgradflow.callbacks import PathRecorder
    >>> from skgradflow.plotting import animate_path
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> path = PathRecorder(every=5)
    >>> _ = IFTSampler(n_particles=30, max_iter=20, tol=0, callback=path).fit(X)
    >>> out = os.path.join(tempfile.mkdtemp(), "path.gif")
    >>> anim = animate_path(path, out, data=X)
    >>> os.path.getsize(out) > 0
    True
    """
    from matplotlib import animation

    atoms, weights, n_iter = list(path.atoms), list(path.weights), list(path.n_iter)
    if not atoms or not (len(atoms) == len(weights) == len(n_iter)):
        raise ValueError(
            "path must hold at least one recorded state, with as many atoms, weights and "
            f"n_iter; got {len(atoms)}, {len(weights)} and {len(n_iter)}."
        )
    energy = list(getattr(path, "energy", [None] * len(atoms)))
    ax = _axes(None)
    fig = ax.figure
    data = None if data is None else np.asarray(data)
    i, j = dims
    stacked = np.concatenate([a[:, [i, j]] for a in atoms] +
                             ([data[:, [i, j]]] if data is not None else []))
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-12)

    def draw(k):
        ax.clear()
        _scatter_measure(ax, np.asarray(atoms[k]), np.asarray(weights[k]), dims, size,
                         zero_weight, data, color, "atoms (area ∝ weight)", "data", {})
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(title.format(n_iter=n_iter[k], energy=energy[k]))
        return ax.collections

    anim = animation.FuncAnimation(fig, draw, frames=len(atoms), interval=1000 / fps,
                                   blit=False)
    # written beside filename and renamed onto it: a writer that fails (no ffmpeg, a full
    # disk, Ctrl-C) leaves no half-written animation; the temporary name keeps the extension
    # by which the writers choose the format
    with atomic_path(filename) as tmp:
        if str(filename).lower().endswith(".gif"):
            anim.save(tmp, writer=animation.PillowWriter(fps=fps), dpi=dpi)
        else:
            anim.save(tmp, fps=fps, dpi=dpi)
    return anim
