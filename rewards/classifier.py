"""``classifier``: log p(class | x) (or the class logit) of a flowzoo sequence classifier."""

from __future__ import annotations

import torch

from flowzoo.errors import CheckpointError
from flowzoo.registry import register
from flowzoo.rewards.network import NetworkReward
from flowzoo.validation import check_choice

OUTPUTS = ("log_prob", "logit")


@register("reward", "classifier")
class ClassifierReward(NetworkReward):
    """r(x) = log p(c | x) = log softmax(logit(x))_c of a sequence classifier (``output="logit"``: logit_c(x)).

    ``checkpoint`` names a flowzoo model trained with the ``classify`` objective (``flowzoo classifier fit``: a
    backbone and a pooled linear head, logit(x) = W mean_l h_l(x) + b) on the scored model's tokenizer; ``target``
    is the class, by name (``tragedy``) or index. A soft state (B, L, V) enters through the classifier's input
    embedding (x @ W_emb), so r is differentiable in x; on one-hots it is the classifier's reading of the ids.
    """

    def __init__(self, checkpoint: str = "", target: str | int = 1, output: str = "log_prob") -> None:
        super().__init__(checkpoint)
        check_choice(output, OUTPUTS, "output", where="reward 'classifier'")
        self.target, self.output = target, output
        self.index: int | None = None

    def check_network(self, network) -> None:
        classes = getattr(network.objective, "classes", None)
        if getattr(network.objective, "registry_name", "") != "classify" or classes is None:
            raise CheckpointError(f"reward 'classifier': {self.checkpoint} is not a sequence classifier (a model trained with the "
                                  "classify objective; train one with `flowzoo classifier fit`)")
        target = str(self.target)
        if target in classes:
            self.index = classes.index(target)
        elif target.lstrip("-").isdigit() and 0 <= int(target) < len(classes):
            self.index = int(target)
        else:
            raise ValueError(f"reward 'classifier': target {self.target!r} is not a class of {self.checkpoint}; its classes: "
                             f"{', '.join(classes)} (or their indices 0..{len(classes) - 1})")

    def read(self, x: torch.Tensor) -> torch.Tensor:
        network = self.network_on(x.device)
        logits = network.objective.class_logits(network, x.float() if x.is_floating_point() else x)  # (B, C)
        return logits.log_softmax(-1)[:, self.index] if self.output == "log_prob" else logits[:, self.index]

    def score(self, probs: torch.Tensor) -> torch.Tensor:
        return self.read(probs)

    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.read(tokens)
