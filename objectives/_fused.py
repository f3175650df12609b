"""The fused training path of the cross-entropy objectives: flowzoo.kernels instead of (B, L, V) tensors.

An objective with the switch ``fused`` (True / False / None = automatic) runs its loss from the trunk's
final hidden state h (``backbone.hidden``): the noisy state x_t = (1-t) sigma x0 + t onehot(x1) of the
linear path enters as its embedding x_t W_in^T = noisy_embedding(x1, W_in, (1-t) sigma, t, seed) (x0
drawn from ``seed`` inside the kernel), and the cross-entropy of softmax(cap(h W_out^T + b)) is
linear_cross_entropy (logits never whole). The kernels dispatch themselves: Triton on CUDA, the chunked
PyTorch reference elsewhere. Automatic = fused whenever :meth:`FusedSwitch.fused_refusal` finds nothing
and ``model.logits`` is FlowLM's own (not replaced on the instance or a subclass).
"""

from __future__ import annotations

import torch

from flowzoo.kernels import draw_seed, linear_cross_entropy, noisy_embedding, softmax_embedding
from flowzoo.validation import check_times, check_tokens, on_host

__all__ = ["FusedSwitch", "delta_embedding", "hidden", "lm_cross_entropy", "mixture_entropy", "noise_seed", "noisy_state_embedding"]

# (row, column) entries per temporary of mixture_entropy: 4 MiB in float32 on the CPU (as the kernels'
# chunked references), 64 MiB on an accelerator (fewer Python steps)
ENTROPY_BUDGET = {"cpu": 1 << 20, "other": 1 << 24}


def check_switch(fused) -> bool | None:
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"fused must be true, false or null (automatic), got {fused!r}")
    return fused


class FusedSwitch:
    """Mixin for objectives with the ``fused`` switch. ``fused`` is True, False or None (automatic).

    ``needs_linear_path``: the objective embeds a noisy state of the linear path (flow matching, flow maps);
    MDLM and AR feed ids and only need the trunk and the categorical head.
    """

    fused: bool | None = False  # objectives that never set the switch keep the reference path
    needs_linear_path: bool = False

    def fused_refusal(self, parts) -> tuple[str, str] | None:
        """(kind, reason) when the kernels cannot compute this objective with ``parts``; None when they can."""
        from flowzoo.heads.categorical import CategoricalHead
        from flowzoo.paths.linear import LinearPath

        backbone = parts.get("backbone")
        if backbone is not None:
            if not callable(getattr(backbone, "hidden", None)):
                return "backbone", "the kernels need the trunk's final hidden state (a backbone with hidden(), e.g. dit)"
            if backbone.in_dim is not None and not (hasattr(backbone, "embed") and hasattr(backbone, "unembed")):
                return "backbone", "the kernels need the backbone's embed / unembed linear projections (dit)"
        if not isinstance(parts.get("head"), CategoricalHead):
            return "head", "the kernels compute the categorical head's cross-entropy (--model.head=categorical)"
        if self.needs_linear_path and not isinstance(parts.get("path"), LinearPath):
            return "path", "the noisy-embedding kernel draws the linear path's Gaussian noise (--model.path=linear)"
        return None

    def fused_incompatibility(self, parts) -> tuple[str, str] | None:
        """For ``incompatibility``: refuse fused=true with parts the kernels cannot handle."""
        if self.fused is not True:
            return None
        found = self.fused_refusal(parts)
        if found is None:
            return None
        return found[0], f"fused=true cannot be used here: {found[1]} (set fused=false, or leave it unset to choose automatically)"

    def use_fused(self, model) -> bool:
        """Whether this call runs the kernels (automatic: whenever the model's parts allow it and :meth:`auto_fused`)."""
        if self.fused is False:
            return False
        if self.fused is None and not _plain_logits(model):
            return False  # a model whose logits() was replaced (a wrapper, a test double) keeps its own logits
        parts = {kind: getattr(model, kind, None) for kind in ("backbone", "path", "head")}
        found = self.fused_refusal(parts)
        if found is None:
            return self.fused is True or self.auto_fused(model)
        if self.fused:
            raise ValueError(f"fused=true cannot be used with this {found[0]}: {found[1]}")
        return False

    def auto_fused(self, model) -> bool:
        """Automatic choice once the parts allow the kernels: always for the objectives (their references are lean)."""
        return True


def _plain_logits(model) -> bool:
    """Whether ``model.logits`` is FlowLM's own (backbone(x, t, s) on network times), which the kernels reproduce."""
    from flowzoo.module import FlowLM

    return getattr(getattr(model, "logits", None), "__func__", None) is FlowLM.logits


# ---------------------------------------------------------------------------------------------- trunk


def noise_seed() -> int:
    """A seed for the kernels' noise x0, drawn from torch's global generator (so torch.manual_seed fixes it)."""
    return draw_seed()


def hidden(model, x: torch.Tensor, t: torch.Tensor | None, s: torch.Tensor | None = None, embedded: bool = False):
    """The trunk's final hidden state (B, L, D) for ids (B, L), or an input embedding (B, L, D) with
    ``embedded``, at path times (t, s): FlowLM.logits without the output projection."""
    check_times(t, s, batch=x.shape[0], values=on_host(x))
    if not embedded:
        check_tokens(x, model.vocab_size + model.path.extra_tokens, values=on_host(x))
    nt = None if t is None else model.path.network_time(t)
    ns = None if s is None else model.path.network_time(s)
    return model.backbone.hidden(x, nt, ns, embedded=embedded)


def delta_embedding(model, h: torch.Tensor) -> torch.Tensor:
    """delta W_in^T (*rows, D) for the head's delta = softmax(cap(h W_out^T + b_out)), chunked over V.

    The embedding is linear, so a landing point X = a x + b delta embeds as a (x W_in^T) + b delta_embedding(h):
    ``flow_map(path, e, delta_embedding(model, h), s, t)`` on embeddings.
    """
    unembed = model.backbone.unembed
    return softmax_embedding(h, unembed.weight, unembed.bias, model.backbone.embed.weight, softcap=model.head.softcap)


def noisy_state_embedding(model, x1: torch.Tensor, t: torch.Tensor, seed: int) -> torch.Tensor:
    """x_t W_in^T (B, L, D) for the linear path's x_t = (1-t) sigma x0 + t onehot(x1), x0 from ``seed``.

    The embedding is linear in the state: a landing point a x_s + b delta embeds as a e_s + b delta W_in^T.
    """
    check_tokens(x1, model.vocab_size, values=on_host(x1))  # as LinearPath.sample does
    check_times(t, batch=x1.shape[0], values=on_host(t))
    return noisy_embedding(x1, model.backbone.embed.weight, (1 - t) * model.path.sigma, t, seed=seed)


def lm_cross_entropy(model, h: torch.Tensor, target) -> torch.Tensor:
    """Per-row CE of the categorical head softmax(cap(h W_out^T + b)) against ids / a TeacherTarget: (*rows)."""
    unembed = model.backbone.unembed
    return linear_cross_entropy(h, unembed.weight, unembed.bias, target, softcap=model.head.softcap)


@torch.no_grad()
def mixture_entropy(model, hidden_k: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """H(T) = -sum_v T_v log T_v per row for T = sum_k mix_k softmax(cap(h_k W_out^T + b)), chunked over V.

    hidden_k (K, *rows, D), mix (K, *rows); returns (*rows). Two passes (lse per teacher, then the sum), so
    no (rows, V) tensor exists; used to log KL = CE - H of the psd target.
    """
    unembed = model.backbone.unembed
    weight, bias, cap = unembed.weight, unembed.bias, model.head.softcap
    K, lead = hidden_k.shape[0], hidden_k.shape[1:-1]
    h = hidden_k.reshape(K, -1, hidden_k.shape[-1]).float()
    m = mix.expand(K, *lead).reshape(K, -1).float()
    V, R = weight.shape[0], h.shape[1]
    budget = ENTROPY_BUDGET["cpu" if h.device.type == "cpu" else "other"]
    step = max(1, min(V, budget // max(R * K, 1)))

    def logits(start):
        z = h @ weight[start:start + step].float().t()  # (K, R, C)
        if bias is not None:
            z = z + bias[start:start + step].float()
        return z if cap is None else cap * torch.tanh(z / cap)

    lse = torch.full((K, R), float("-inf"), device=h.device)
    for start in range(0, V, step):
        lse = torch.logaddexp(lse, torch.logsumexp(logits(start), dim=-1))
    entropy = torch.zeros(R, device=h.device)
    for start in range(0, V, step):
        T = (m[..., None] * torch.exp(logits(start) - lse[..., None])).sum(0)  # (R, C)
        entropy -= (T * T.clamp_min(1e-30).log()).sum(-1)
    return entropy.view(lead)
