"""What one run of a flow works on: its state, the problem it solves and the evaluation of
the energy at a state."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import Backend, Targets
from ..kernels import Kernel


@dataclass(frozen=True)
class FlowState:
    """The state of a flow: the atoms, their weights and, for a mixture that learns a shape
    per atom, the Cholesky factors of the shapes (the factor, not the covariance: rounded to
    float32, ``L Lᵀ`` stays positive definite where the covariance itself need not)."""

    atoms: np.ndarray  # (n, d), in the dtype of the data
    weights: np.ndarray  # (n,), float64
    shapes: np.ndarray | None = None  # (n, d, d) Cholesky factors, in the dtype of the atoms

    def is_finite(self) -> bool:
        return bool(np.all(np.isfinite(self.atoms)) and np.all(np.isfinite(self.weights))
                    and (self.shapes is None or np.all(np.isfinite(self.shapes))))

    def replace(self, **changes) -> FlowState:
        return dataclasses.replace(self, **changes)


@dataclass
class Problem:
    """Everything one run of a flow needs, besides its state: the engine, the kernel and
    the targets, bound to the engine once for the whole run."""

    backend: Backend
    kernel: Kernel
    bound: Targets  # all the targets, weights float64 summing to 1
    batch_size: int | None
    rng: np.random.Generator
    update_weights: bool = True
    const: float = 0.0
    # the targets' effective number 1/Σb², from which a flow derives the statistical
    # resolution of its energy (see _loop._is_resolved)
    effective_size: float = 1.0

    @property
    def stochastic(self) -> bool:
        return self.batch_size is not None and self.batch_size < self.bound.n_samples

    def targets(self) -> Targets:
        """The targets of one iteration: all of them, or a fresh minibatch drawn by weight."""
        if not self.stochastic:
            return self.bound
        return self.bound.minibatch(self.batch_size, self.rng)


@dataclass
class Evaluation:
    """The energy at a state, and what the next step reuses from the same reduction."""

    energy: float
    magnitude: float  # size of the terms the energy is a difference of (round-off scale)
    cache: dict[str, Any]


