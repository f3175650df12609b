"""Sample-quality metrics as ``torchmetrics`` Metrics: every state is a sum (``dist_reduce_fx="sum"``),
so under DDP each process updates on its own samples and ``compute()`` reduces over all of them.

- :class:`GenerativePerplexity`: exp(sum of judge NLL / scored tokens) of decoded samples under a judge
  causal LM (see :mod:`flowzoo.judges` for retokenisation and chunking).
- :class:`UnigramEntropy`: mean over samples of H(sample) = -sum_v p_v log p_v, p_v the share of token v
  in the sample (nats), as ``record_entropy`` in MDLM/Duo: low values expose mode collapse.
- :class:`MarkovQuality`: valid-transition rate, exact NLL per transition under the true chain, gap to
  the entropy rate H (what ``MarkovChain.evaluate`` returns, accumulated).
- :class:`ValidationLoss`: the token-weighted mean of the validation loss a model logs, and exp of it
  (a perplexity bound where the loss is a NELBO or an exact NLL: ``mdlm``, ``ar``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from flowzoo.judges import Judge, check_eos, load_judge


def _sum_state(metric: Metric, name: str) -> None:
    metric.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")


class GenerativePerplexity(Metric):
    """exp(sum_i -log p_judge(y_i | y_<i) / N) over the judge-tokenised samples (N scored tokens).

    ``judge`` is a :class:`flowzoo.judges.Judge`, a ``transformers`` name or directory (``gpt2-large``),
    or a flowzoo AR checkpoint. ``update`` takes decoded texts (retokenised with the judge's
    tokenizer), or a (B, L) tensor of ids already in the judge's vocabulary. ``eos``: what happens to the
    judge's EOS id, ``all`` (every token scored, the default), ``first`` (MDLM / Duo: EOS ids after the first of
    each piece not scored) or ``truncate`` (each sample cut after its first EOS); see :mod:`flowzoo.judges`.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, judge: "Judge | str", device: str | torch.device = "cpu", batch_size: int = 8, eos: str = "all", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eos = check_eos(eos)
        # a plain attribute (not a registered submodule): the judge's weights stay out of state_dict
        self.__dict__["judge"] = load_judge(judge, device=device, batch_size=batch_size)
        _sum_state(self, "total_nll")
        _sum_state(self, "num_tokens")

    def update(self, samples: "Sequence[str] | torch.Tensor") -> None:
        if isinstance(samples, torch.Tensor):
            sequences = samples.detach().cpu().long().tolist()
        else:
            sequences = self.judge.encode(list(samples))
        total, count = self.judge.score(sequences, eos=self.eos)
        self.total_nll += total
        self.num_tokens += count

    def compute(self) -> torch.Tensor:
        if self.num_tokens == 0:
            raise ValueError("generative perplexity of no scored tokens: samples must give at least two judge tokens")
        return torch.exp(self.total_nll / self.num_tokens)


class CompletionPerplexity(GenerativePerplexity):
    """GenPPL of completions scored on the completion only: exp(sum NLL(y | prompt) / number of completion tokens)
    under the causal judge, with NLL(y | prompt) = NLL(prompt + y) - NLL(prompt) (the chain rule; exact when the
    judge's tokens of the prompt are a prefix of those of the whole text, both within its context)."""

    def update(self, prompts: Sequence[str], texts: Sequence[str]) -> None:  # type: ignore[override]
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
        whole, n_whole = self.judge.score(self.judge.encode(list(texts)), eos=self.eos)
        prefix, n_prefix = self.judge.score(self.judge.encode(list(prompts)), eos=self.eos)
        self.total_nll += whole - prefix
        self.num_tokens += n_whole - n_prefix


class UnigramEntropy(Metric):
    """Mean over samples of the entropy (nats) of each sample's token histogram: -sum_v (n_v/L) log(n_v/L)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _sum_state(self, "total_entropy")
        _sum_state(self, "num_samples")

    def update(self, tokens: torch.Tensor) -> None:
        tokens = tokens.long()  # (B, L)
        counts = torch.zeros(tokens.shape[0], int(tokens.max()) + 1, dtype=torch.float64, device=tokens.device)
        counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.float64))  # (B, V) histogram
        p = counts / tokens.shape[1]
        self.total_entropy += torch.special.entr(p).sum()
        self.num_samples += tokens.shape[0]

    def compute(self) -> torch.Tensor:
        return self.total_entropy / self.num_samples


class MarkovQuality(Metric):
    """Under the true chain P: valid rate mean[P(y_i|y_{i-1}) > 0], NLL mean[-log max(P, floor)], NLL - H, and the
    total variation of the sample's bigrams to pi(a) P(b|a) (``MarkovChain.bigram_tv``)."""

    full_state_update = False

    def __init__(self, chain: Any, floor: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.__dict__["chain"] = chain
        self.floor = floor
        _sum_state(self, "valid")
        _sum_state(self, "total_nll")
        _sum_state(self, "num_transitions")
        V = chain.num_states
        self.add_state("bigrams", default=torch.zeros(V, V, dtype=torch.float64), dist_reduce_fx="sum")  # (V, V) counts

    def update(self, tokens: torch.Tensor) -> None:
        x = tokens.detach().cpu().long().numpy()
        probs = self.chain.transition[x[:, :-1], x[:, 1:]]  # (B, L-1)
        self.valid += float((probs > 0).sum())
        self.total_nll += float(-np.log(np.maximum(probs, self.floor)).sum())
        self.num_transitions += probs.size
        self.bigrams += torch.from_numpy(self.chain.bigram_counts(x)).to(self.bigrams)

    def compute(self) -> dict[str, torch.Tensor]:
        nll = self.total_nll / self.num_transitions
        H = torch.tensor(self.chain.entropy_rate(), dtype=torch.float64, device=nll.device)
        tv = torch.tensor(self.chain.bigram_tv(self.bigrams.cpu().numpy()), dtype=torch.float64, device=nll.device)
        return {"valid_transitions": self.valid / self.num_transitions, "nll": nll, "entropy_rate": H, "nll_gap": nll - H,
                "bigram_tv": tv}


class ValidationLoss(Metric):
    """Weighted mean of per-batch losses sum_b w_b l_b / sum_b w_b, and exp of it."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _sum_state(self, "total")
        _sum_state(self, "weight")

    def update(self, loss: torch.Tensor | float, weight: float = 1.0) -> None:
        self.total += float(loss) * weight
        self.weight += weight

    def compute(self) -> dict[str, torch.Tensor]:
        mean = self.total / self.weight
        return {"loss": mean, "ppl_bound": torch.exp(mean) if mean < 700 else torch.tensor(math.inf)}
