"""Sequence classification with a pooled linear head: the ``classifier`` reward's network (docs/rewards.md)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from flowzoo.errors import DataError
from flowzoo.objectives.base import Objective
from flowzoo.registry import register


@register("objective", "classify")
class Classify(Objective):
    """Cross-entropy of a sequence classifier: logit_c(x) = w_c . mean_l h_l(x) + b_c, loss -log softmax(logit(x))_y.

    h_l is the backbone's final hidden state at position l (read at no time, the clean sequence) and (w_c, b_c) is
    row c of the backbone's output layer: as that layer is affine, mean_l of its outputs restricted to the first
    C = len(``classes``) entries is exactly a linear head on the mean-pooled hidden state, with no extra weights, so
    the classifier is an ordinary flowzoo model (save_pretrained, load_checkpoint, ``flowzoo classifier fit``). Its
    batches are labelled (``{"input_ids", "labels"}``, e.g. the ``shakespeare_plays`` data). A soft state (B, L, V)
    enters through the input embedding (x @ W_emb), so the class log-probabilities are differentiable in x.
    Logged: ``loss`` and ``accuracy``.
    """

    reads_labels = True  # FlowLM hands it the labels of a labelled data module's batches

    def __init__(self, classes: Sequence[str] = ("0", "1")) -> None:
        super().__init__()
        self.classes = [str(c) for c in classes]
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classify needs at least two distinct classes, got {list(classes)}")

    def class_logits(self, model, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) of token ids (B, L) or soft states (B, L, V) (padded to the backbone's input alphabet)."""
        C = len(self.classes)
        if C > model.vocab_size:
            raise ValueError(f"classify reads {C} classes off the output layer's first rows, more than its {model.vocab_size}")
        if x.is_floating_point() and model.path.extra_tokens:
            x = F.pad(x, (0, model.path.extra_tokens))
        return model.logits(x, None)[..., :C].float().mean(1)  # (B, C): the pooled linear head

    def forward(self, model, x1, labels=None):
        if labels is None:
            raise DataError("the classify objective trains on labelled rows (token ids and a class): use a labelled data "
                            "module such as --data=shakespeare_plays (flowzoo classifier fit)")
        logits = self.class_logits(model, x1)
        return {"loss": F.cross_entropy(logits, labels), "accuracy": (logits.argmax(-1) == labels).float().mean()}

    def check_data(self, datamodule) -> None:
        """The data's classes must be these, in this order (labels are indices into both)."""
        classes = getattr(datamodule, "classes", None)
        if classes is None:
            raise DataError(f"the classify objective needs a labelled data module (with classes), got {type(datamodule).__name__}")
        if list(classes) != self.classes:
            raise DataError(f"the data's classes {list(classes)} differ from the objective's {self.classes}: "
                            f"set --model.objective.init_args.classes={list(classes)}")
