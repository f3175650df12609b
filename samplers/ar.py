"""Left-to-right sampling with a key/value cache, temperature and nucleus (top-p) truncation."""

from __future__ import annotations

import torch

from flowzoo.paths.autoregressive import causal_incompatibility
from flowzoo.errors import PromptError
from flowzoo.progress import progress
from flowzoo.registry import register
from flowzoo.samplers.ancestral import sample_categorical
from flowzoo.samplers.base import SampleOutput, Sampler


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (always the top one); renormalise."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each token
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


@register("sampler", "ar")
class ARSampler(Sampler):
    """x_i ~ top_p(softmax(logits_i / temperature)) given BOS, x_<i; with ``cache`` each step feeds one new
    position and reuses the keys/values of the prefix (L network calls of one position each)."""

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, cache: bool = True) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        self.temperature, self.top_p, self.cache = temperature, top_p, cache

    def incompatibility(self, parts):
        return causal_incompatibility(parts)

    def prompt_refusal(self, prompt):
        if not prompt.is_prefix:
            return ("an autoregressive model cannot infill: it reads only the tokens to the left of each position, so a "
                    "known token after a hole cannot condition the hole; give a prefix (--prompt), or use a parallel "
                    "model (flow, flow map, MDLM) for holes")
        return None

    def _next(self, model, logits: torch.Tensor, generator) -> torch.Tensor:
        """One token per row from the last position's logits (B, V), drawn in float64."""
        probs = torch.softmax(model.head.log_probs(logits).double() / self.temperature, dim=-1)
        return sample_categorical(nucleus(probs, self.top_p), generator)

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None, prompt=None):
        """With a prefix prompt x_<K, BOS + x_<K go through the network at once (filling the cache) and
        x_i ~ p(x_i | BOS, x_<i) is drawn for i >= K: L - K network calls."""
        seq = model.path.sample_prior(num_samples, 1, model.vocab_size, device=model.device)  # (B, 1): BOS
        first = 0
        if prompt is not None:
            refusal = self.prompt_refusal(prompt)
            if refusal:
                raise PromptError(refusal)
            first = prompt.prefix_length
            seq = torch.cat([seq, prompt.known[:, :first]], dim=1)
        cache = model.backbone.new_cache() if self.cache else None
        fed = 0  # positions whose keys/values are in the cache
        for i in progress(range(first, length), desc="ar"):
            if cache is not None:  # only the new positions; keys/values of earlier ones are cached
                logits = model.backbone(seq[:, fed:], None, None, cache=cache, start=fed)
                fed = seq.shape[1]
            else:
                logits = model.backbone(seq, None, None)
            token = self._next(model, logits[:, -1], generator)
            seq = torch.cat([seq, token[:, None]], dim=1)
        return SampleOutput(seq[:, 1:], nfe=length - first)
