"""skgradflow: kernel-approximated Wasserstein and Fisher–Rao gradient flows for scikit-learn."""

from . import metrics
from .ift import IFTSampler

__version__ = "0.1.0"

__all__ = ["IFTSampler", "metrics", "__version__"]
