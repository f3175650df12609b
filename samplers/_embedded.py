"""Sampling on input embeddings: the linear path's state x (B, L, V) carried as e = x W_in^T (B, L, D).

Each step of the flow-map sampler, and of Euler on the linear path (the flow map on the diagonal), is a
convex combination x <- a x + b delta with delta = softmax(cap(h W_out^T + b_out)), and the network reads x
only through x W_in^T. The embedding is linear, so the step is e <- a e + b softmax_embedding(h) (the
flow-map-step kernel: neither the logits nor delta exist as (B, L, V) tensors); the prior x0 = sigma eps
enters as noisy_embedding (eps drawn from a seed inside the kernel), and argmax decoding reads the last
step's logits chunk by chunk: no (B, L, V) tensor exists (``decode="sample"`` builds the last prediction).
"""

from __future__ import annotations

import torch

from flowzoo.kernels import draw_seed, noisy_embedding, softmax_embedding, use_triton
from flowzoo.kernels.cross_entropy import _logits_chunk, chunk_columns
from flowzoo.objectives._fused import FusedSwitch, _plain_logits, check_switch
from flowzoo.samplers.base import decode_tokens


class EmbeddedSampling(FusedSwitch):
    """Mixin for samplers with the switch ``fused``: True (embeddings everywhere; the chunked references on the
    CPU), False (the dense (B, L, V) state), None (automatic: embeddings where the kernels run on Triton, i.e.
    CUDA, and the dense state elsewhere, so that CPU results do not change with the switch)."""

    needs_linear_path = True

    def set_fused(self, fused) -> None:
        self.fused = check_switch(fused)

    def incompatibility(self, parts):
        return self.fused_incompatibility(parts)

    def use_embedded(self, model) -> bool:
        if self.fused is False:
            return False
        parts = {kind: getattr(model, kind, None) for kind in ("backbone", "path", "head")}
        found = self.fused_refusal(parts)
        if self.fused is True:
            if found is not None:
                raise ValueError(f"fused=true cannot be used with this {found[0]}: {found[1]}")
            return True
        return found is None and _plain_logits(model) and use_triton(model.backbone.embed.weight)


def prior_embedding(model, num_samples: int, length: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, e0): zero ids (B, L) and e0 = x0 W_in^T for the prior x0 = sigma eps (B, L, D), eps from a seed."""
    ids = torch.zeros(num_samples, length, dtype=torch.long, device=model.device)
    weight = model.backbone.embed.weight
    return ids, noisy_embedding(ids, weight, model.path.sigma, 0.0, seed=draw_seed(generator))


def delta_embedding(model, h: torch.Tensor) -> torch.Tensor:
    """delta W_in^T (B, L, D) for delta = softmax(cap(h W_out^T + b_out)), chunked over V."""
    unembed = model.backbone.unembed
    return softmax_embedding(h, unembed.weight, unembed.bias, model.backbone.embed.weight, softcap=model.head.softcap)


def fresh_noise_embedding(model, ids: torch.Tensor, scale: torch.Tensor, generator=None) -> torch.Tensor:
    """scale z W_in^T (B, L, D) for fresh noise z ~ N(0, I) (B, L, V) drawn inside the kernel; scale (B,)."""
    return noisy_embedding(ids, model.backbone.embed.weight, scale, 0.0, seed=draw_seed(generator))


def decode_hidden(model, h: torch.Tensor, decode: str, temperature: float, generator=None) -> torch.Tensor:
    """Tokens (B, L) from the last step's hidden state. ``argmax``: the argmax of the capped logits
    cap(h W_out^T + b) (the softmax keeps the order), read in chunks of V, so no (B, L, V) tensor exists;
    ``sample``: a draw from the head's prediction (B, L, V), as :func:`decode_tokens` does."""
    unembed = model.backbone.unembed
    if decode != "argmax":
        return decode_tokens(model.head.denoise(unembed(h).float()), decode, temperature, generator)
    rows = h.reshape(-1, h.shape[-1]).float()
    best = torch.full((rows.shape[0],), float("-inf"), device=h.device)
    index = torch.zeros(rows.shape[0], dtype=torch.long, device=h.device)
    step, V = chunk_columns(rows.shape[0]), unembed.weight.shape[0]
    for start in range(0, V, step):
        value, arg = _logits_chunk(rows, unembed.weight, unembed.bias, start, start + step, model.head.softcap).max(dim=-1)
        better = value > best  # the first maximum wins, as torch.argmax
        best, index = torch.where(better, value, best), torch.where(better, arg + start, index)
    return index.view(h.shape[:-1])
