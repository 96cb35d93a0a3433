"""The machinery every particle flow estimator shares.

``_state``: the loop's state, problem and evaluation; ``_loop``: the time-stepping loop;
``_estimator``: the estimator base (validation through the data layer, initialisation,
phases, warm starts); ``_mmd``: the MMD energy of the two samplers, with their
``transform`` (``_matching``) and ``sample`` (``_sampling``).
"""

from ._estimator import _BaseParticleFlow
from ._mmd import _BaseMMDFlow
from ._state import Evaluation, FlowState, Problem

__all__ = ["_BaseParticleFlow", "_BaseMMDFlow", "Evaluation", "FlowState", "Problem"]
