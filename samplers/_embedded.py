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

from flowzoo.kernels import draw_seed, noisy_embedding, use_triton
from flowzoo.kernels.cross_entropy import _logits_chunk, chunk_columns
from flowzoo.objectives._fused import FusedSwitch, check_switch
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

    def auto_fused(self, model) -> bool:
        return use_triton(model.backbone.embed.weight)


def fresh_noise_embedding(model, ids: torch.Tensor, scale, generator=None) -> torch.Tensor:
    """scale z W_in^T (B, L, D) for fresh noise z ~ N(0, I) (B, L, V) drawn inside the kernel; scale a float or (B,)."""
    return noisy_embedding(ids, model.backbone.embed.weight, scale, 0.0, seed=draw_seed(generator))


def prior_embedding(model, num_samples: int, length: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, e0): zero ids (B, L) and e0 = x0 W_in^T for the prior x0 = sigma eps (B, L, D), eps from a seed."""
    ids = torch.zeros(num_samples, length, dtype=torch.long, device=model.device)
    return ids, fresh_noise_embedding(model, ids, model.path.sigma, generator)


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
