"""skgradflow: kernel-approximated Wasserstein and Fisher–Rao gradient flows for scikit-learn."""

from . import metrics
from .ift import IFTSampler
from .mixture import InclusiveKLFitter
from .wfr import WFRMMDFlow

__version__ = "0.1.0"

__all__ = ["IFTSampler", "InclusiveKLFitter", "WFRMMDFlow", "metrics", "__version__"]
