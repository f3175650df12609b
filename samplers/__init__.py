"""Samplers: turn a trained model into token sequences."""

from flowzoo.discover import import_submodules
from flowzoo.samplers.base import Sampler, SampleOutput
from flowzoo.samplers.euler import EulerSampler

__all__ = ["Sampler", "SampleOutput", "EulerSampler"]
import_submodules(__name__, __path__)
