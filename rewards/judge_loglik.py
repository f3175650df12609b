"""``judge_loglik``: the log-likelihood of a sequence under an autoregressive judge (fluency)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowzoo.errors import CheckpointError
from flowzoo.registry import register
from flowzoo.rewards.network import NetworkReward


@register("reward", "judge_loglik")
class JudgeLogLikelihood(NetworkReward):
    """Log-likelihood under an AR judge: r(x) = sum_l sum_v x^l_v log p_J(v | BOS, x^{<l}) (``per_token``: / L).

    ``checkpoint`` names a flowzoo AR model (``flowzoo judge fit``: ar objective, causal backbone) trained on the
    scored model's tokenizer. On token ids it is the judge's exact log p_J(x) = sum_l log p_J(x_l | BOS, x_<l); on a
    soft state the judge reads [BOS, x^0, ..., x^{L-2}] through its input embedding (x^l @ W_emb, teacher-forced) and
    the soft rows are the targets, so r is differentiable in x and equals the exact log-likelihood on one-hots.
    """

    def __init__(self, checkpoint: str = "", per_token: bool = False) -> None:
        super().__init__(checkpoint)
        self.per_token = bool(per_token)

    def check_network(self, network) -> None:
        path = network.path
        if not getattr(network.backbone, "causal", False) or not hasattr(path, "shift_right") or not hasattr(network.head, "log_probs"):
            raise CheckpointError(
                f"reward 'judge_loglik': {self.checkpoint} is not an autoregressive judge (it needs the autoregressive path, "
                "a causal backbone and a categorical head; train one with `flowzoo judge fit`)"
            )

    def log_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """log p_J(. | BOS, x^{<l}) (B, L, V) of a soft state (B, L, V), teacher-forced through the judge's embedding."""
        judge = self.network_on(probs.device)
        B, _, V = probs.shape
        bos = F.one_hot(torch.full((B, 1), judge.path.bos_id(V), device=probs.device), V + judge.path.extra_tokens)
        inputs = torch.cat([bos.to(probs.dtype), self.embedded_input(probs[:, :-1])], dim=1)  # (B, L, V + 1)
        return judge.head.log_probs(judge.logits(inputs, None)).float()

    def score(self, probs: torch.Tensor) -> torch.Tensor:
        ll = (probs.float() * self.log_probs(probs)).sum(-1)  # (B, L): sum_v x^l_v log p_J(v | x^{<l})
        return ll.mean(1) if self.per_token else ll.sum(1)

    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        judge = self.network_on(tokens.device)
        with torch.no_grad():
            logits = judge.logits(judge.path.shift_right(tokens, judge.vocab_size), None)  # (B, L, V)
            ll = judge.head.log_probs(logits).float().gather(-1, tokens[..., None]).squeeze(-1)  # (B, L)
        return ll.mean(1) if self.per_token else ll.sum(1)
