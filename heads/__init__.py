"""VFM heads: how logits become a denoiser prediction and a training loss."""

from flowzoo.discover import import_submodules
from flowzoo.heads.base import Head
from flowzoo.heads.categorical import CategoricalHead
from flowzoo.heads.gaussian import GaussianHead

__all__ = ["Head", "CategoricalHead", "GaussianHead"]
import_submodules(__name__, __path__)
