"""Data modules over ``datasets``: synthetic Markov language, Shakespeare, Hub corpora."""

from flowzoo.discover import import_submodules
from flowzoo.data.base import TokenDataModule

__all__ = ["TokenDataModule"]
import_submodules(__name__, __path__)
