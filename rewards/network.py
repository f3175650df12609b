"""Rewards read off a trained flowzoo model (an AR judge, a sequence classifier), named by its checkpoint."""

from __future__ import annotations

import torch

from flowzoo.errors import CheckpointError, FlowzooError
from flowzoo.rewards.base import Reward


class NetworkReward(Reward):
    """A reward that reads a frozen flowzoo model (``checkpoint``: a .ckpt, save_pretrained folder or Hub id).

    The network is not loaded when the reward is built: whoever binds the reward to a model resolves it
    (:meth:`resolve`, loading the checkpoint as a model of that model's class: ``flowzoo sample --reward``,
    best-of-N, steering and, for training objectives, :mod:`flowzoo.teachers` before the first loss), or hands one
    over with :meth:`attach`. It is frozen and kept outside any module tree (never trained, never saved with the
    model it scores). It must share the scored model's vocabulary: a soft state (B, L, V) enters it through its own
    input embedding, x @ W_emb, so the reward is differentiable in x.
    """

    def __init__(self, checkpoint: str = "") -> None:
        super().__init__()
        if not checkpoint:
            raise ValueError(f"reward {self.registry_name!r} needs checkpoint=PATH (a flowzoo .ckpt, save_pretrained folder or Hub id)")
        self.checkpoint = str(checkpoint)
        self.network = None

    def check_network(self, network) -> None:
        """Refuse a network this reward cannot read (a CheckpointError naming what is wrong)."""

    def attach(self, network) -> "NetworkReward":
        """Use an already loaded model (checked, frozen, in eval mode); returns ``self``."""
        self.check_network(network)
        if self.vocab_size is not None and network.vocab_size != self.vocab_size:
            raise CheckpointError(f"reward {self.registry_name!r}: {self.checkpoint} has a vocabulary of {network.vocab_size} "
                                  f"tokens, the scored model {self.vocab_size}: they must share one tokenizer")
        network.eval()
        for p in network.parameters():
            p.requires_grad_(False)
        self.network = network
        return self

    def bind(self, vocab_size, vocabulary=None, decode=None):
        super().bind(vocab_size, vocabulary, decode)
        if self.network is not None and self.network.vocab_size != vocab_size:
            raise CheckpointError(f"reward {self.registry_name!r}: {self.checkpoint} has a vocabulary of {self.network.vocab_size} "
                                  f"tokens, the scored model {vocab_size}: they must share one tokenizer")
        return self

    def resolve(self, model) -> "NetworkReward":
        """Load ``checkpoint`` (once) as a model of ``model``'s class, onto its device."""
        if self.network is None:
            from flowzoo.checkpoints.pretrained import load_checkpoint

            self.attach(load_checkpoint(self.checkpoint, model_class=type(model)))
        return self

    def network_on(self, device: torch.device):
        """The network, moved to ``device`` on first use there."""
        if self.network is None:
            raise FlowzooError(
                f"reward {self.registry_name!r} has not loaded {self.checkpoint}: flowzoo loads it where the reward is bound to a "
                "model (flowzoo sample --reward, best-of-N, steering, the reward objectives); in Python call reward.resolve(model)"
            )
        weight = next(self.network.parameters(), None)
        if weight is not None and weight.device != device:
            self.network.to(device)
        return self.network

    def embedded_input(self, probs: torch.Tensor) -> torch.Tensor:
        """A soft state (B, L, V) widened with zero columns to the network's input alphabet (V + its extra tokens)."""
        extra = self.network.path.extra_tokens
        return torch.nn.functional.pad(probs, (0, extra)) if extra else probs
