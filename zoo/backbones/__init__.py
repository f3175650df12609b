"""Backbones: networks that map a per-position state (B, L, V_in) (or token ids) and times to logits (B, L, V)."""

from flowzoo.discover import import_submodules
from flowzoo.backbones.base import Backbone
from flowzoo.backbones.dit import DiT

__all__ = ["Backbone", "DiT"]
import_submodules(__name__, __path__)
