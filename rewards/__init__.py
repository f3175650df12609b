"""Rewards r(x) -> (B,) on sequences, for reward fine-tuning, steering and best-of-N (see docs/rewards.md).

Each is a registered component of kind ``reward``; a new reward is one file with its registration.
"""

from flowzoo.discover import import_submodules
from flowzoo.rewards.base import Reward, RewardNotDifferentiableError
from flowzoo.rewards.tilted_chain import TiltedChain

__all__ = ["Reward", "RewardNotDifferentiableError", "TiltedChain"]
import_submodules(__name__, __path__)
