"""The mixture estimator, :class:`InclusiveKLFitter`: the estimator (``_estimator``), its
isotropic step (``_isotropic``), its learnt shapes (``_shaped``) and its restarts
(``_restarts``)."""

from ._estimator import InclusiveKLFitter

__all__ = ["InclusiveKLFitter"]
