"""What a flow shows its ``callback`` after every iteration, and a callback that records it.

Every estimator takes ``callback=``: a callable called as ``callback(state)`` after each
iteration of ``fit``, with a :class:`FlowState`.  Returning ``True`` stops the run there
(``n_iter_`` then counts the iterations run, and no ``ConvergenceWarning`` is raised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FlowState:
    """The state of a flow after an iteration.

    The arrays are read-only views of the run's own state: copy them to keep them (as
    :class:`PathRecorder` does).

    Attributes
    ----------
    n_iter : int
        Iterations done so far (1 after the first).
    atoms : ndarray of shape (n_atoms, n_features)
        The particles (MMD samplers) or mixture means (``InclusiveKLFitter``); also
        available as ``particles`` and ``means``.
    weights : ndarray of shape (n_atoms,)
        float64.
    energy : float
        The energy the flow minimises (``loss_curve_[n_iter]``).
    step_size : float
        The step size of this iteration.
    """

    n_iter: int
    atoms: np.ndarray
    weights: np.ndarray
    energy: float
    step_size: float

    @property
    def particles(self) -> np.ndarray:
        """The atoms, under the MMD samplers' name."""
        return self.atoms

    @property
    def means(self) -> np.ndarray:
        """The atoms, under the mixture's name."""
        return self.atoms


def make_state(n_iter: int, atoms: np.ndarray, weights: np.ndarray, energy: float,
               step_size: float) -> FlowState:
    """A :class:`FlowState` over read-only views, so that a callback cannot change the run."""
    atoms, weights = atoms.view(), weights.view()
    atoms.flags.writeable = False
    weights.flags.writeable = False
    return FlowState(int(n_iter), atoms, weights, float(energy), float(step_size))


@dataclass
class PathRecorder:
    """A callback that keeps a copy of the state every ``every`` iterations.

    Parameters
    ----------
    every : int, default=1
        Record iterations ``every, 2·every, ...`` (and none in between).
    max_iter : int or None, default=None
        Stop the run after this many iterations (``None``: never stop it).

    Attributes
    ----------
    n_iter : list of int
    atoms : list of ndarray
    weights : list of ndarray
    energy : list of float
    step_size : list of float

    Examples
    --------
    >>> import numpy as np
    >>> from skgradflow import IFTSampler
    >>> from skgradflow.callbacks import PathRecorder
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> path = PathRecorder(every=5)
    >>> est = IFTSampler(n_particles=30, max_iter=20, tol=0, callback=path).fit(X)
    >>> path.n_iter
    [5, 10, 15, 20]
    >>> np.stack(path.atoms).shape
    (4, 30, 2)
    """

    every: int = 1
    max_iter: int | None = None
    n_iter: list = field(default_factory=list)
    atoms: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    step_size: list = field(default_factory=list)

    def reset(self) -> None:
        """Forget what was recorded (a recorder otherwise accumulates over fits)."""
        for name in ("n_iter", "atoms", "weights", "energy", "step_size"):
            getattr(self, name).clear()

    def __call__(self, state: FlowState) -> bool:
        if state.n_iter % self.every == 0:
            self.n_iter.append(state.n_iter)
            self.atoms.append(np.array(state.atoms))
            self.weights.append(np.array(state.weights))
            self.energy.append(state.energy)
            self.step_size.append(state.step_size)
        return self.max_iter is not None and state.n_iter >= self.max_iter
