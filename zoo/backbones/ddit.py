"""The DDiT backbone of MDLM, Duo and FLM (SEDD's DiT lineage), parameter for parameter, so their checkpoints load.

Differences from flowzoo's own ``dit`` (why this is a separate backbone, not options of it): an embedding
table ``E`` (V_in, d) rather than a bias-free linear map, LayerNorm gains, a sinusoid of the raw time (no
x1000), rotate-half (GPT-NeoX) rotary, an output layer with its own LayerNorm and adaLN, an optional
attention soft-cap (FLM: 50), a second absolute time embedding instead of a gap embedding (FLM flow map),
and key names equal to the references' (``vocab_embed.embedding``, ``sigma_map.mlp.0.weight``, ...), so an
import is a rename of the prefix. One block, with c = silu(emb(s or t) [+ emb'(t)]):

    (sh1, sc1, g1, sh2, sc2, g2) = W_ada c
    x <- x + g1 * W_out Attn(rope(W_qkv (LN(x) (1 + sc1) + sh1)))
    x <- x + g2 * MLP(LN(x) (1 + sc2) + sh2)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowzoo.backbones.base import Backbone, use_plain_attention
from flowzoo.registry import register
from flowzoo.validation import check_choice

SOFT_INPUTS = ("linear", "softmax")
SOURCE_TIMES = ("none", "shared", "embedder")


def sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos(t f_i), sin(t f_i)] with f_i = max_period^(-i/half), t unscaled: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t -> Linear(SiLU(Linear(sinusoid(t)))): (B,) -> (B, dim)."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(t, self.freq_dim))


class LossWeighting(nn.Module):
    """FLM's learnable loss weight w(t) = MLP(emb(t)) (exact GELU): (B,) -> (B,). Kept so its weights import."""

    def __init__(self, cond_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.s_embed = TimestepEmbedder(cond_dim)
        self.mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.s_embed(t)).squeeze(-1)


class LayerNorm(nn.Module):
    """LayerNorm without bias, computed in float32: LN(x) * weight."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.layer_norm(x.float(), [x.shape[-1]])
        return x * self.weight


class Rotary(nn.Module):
    """Rotate-half (GPT-NeoX) rotary embedding: features [0, D/2) pair with [D/2, D); inv_freq is a buffer."""

    def __init__(self, head_dim: int, base: float = 10_000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, L, Dh) rotated in float32: lo' = lo cos - hi sin, hi' = hi cos + lo sin."""
        L = x.shape[-2]
        angles = torch.outer(torch.arange(L, device=x.device, dtype=torch.float32), self.inv_freq.float())  # (L, Dh/2)
        cos, sin = angles.cos(), angles.sin()
        lo, hi = x.float().chunk(2, dim=-1)
        return torch.cat([lo * cos - hi * sin, hi * cos + lo * sin], dim=-1).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DDiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, cond_dim: int, mlp_ratio: int, dropout: float, softcap: float | None) -> None:
        super().__init__()
        self.heads, self.softcap = heads, softcap
        self.norm1 = LayerNorm(width)
        self.attn_qkv = nn.Linear(width, 3 * width, bias=False)
        self.attn_out = nn.Linear(width, width, bias=False)
        self.norm2 = LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * width, width))
        self.dropout = nn.Dropout(dropout)
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * width)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def attention(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.attn_qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # each (B, H, L, Dh)
        q, k = rotary(q), rotary(k)
        if self.softcap is None and not use_plain_attention():
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # scores = c tanh(q.k / sqrt(Dh) / c): the scale applied before the cap (flash-attn's softcap)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            if self.softcap is not None:
                scores = self.softcap * torch.tanh(scores / self.softcap)
            y = scores.softmax(-1) @ v
        return self.attn_out(y.transpose(1, 2).reshape(B, L, D))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.dropout(self.attention(modulate(self.norm1(x), sh1, sc1), rotary))
        return x + g2[:, None] * self.dropout(self.mlp(modulate(self.norm2(x), sh2, sc2)))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = LayerNorm(width)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * width)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


@register("backbone", "ddit")
class DDiT(Backbone):
    """The DDiT of MDLM / Duo / FLM (reference key names): embedding table, rotate-half rotary, adaLN, own final layer.

    ``soft_input`` says how a float state (B, L, V_in) is embedded: ``linear`` x E (FLM), ``softmax``
    softmax(x) E (Duo). ``attn_softcap`` caps attention scores (FLM: 50). ``source_time`` says what a call
    with a source time s (a flow map from s to t) conditions on: ``none`` emb(t), s ignored (a flow: MDLM, Duo,
    FLM); ``shared`` emb(s) + emb(t) (FLM's maps without a second embedder); ``embedder`` emb(s) + emb'(t)
    with FLM's second embedder ``sigma_map_prime``, whose last layer starts at zero, so a map initialised from
    a flow starts as that flow at the source time. ``time_scale`` multiplies the network time before the sinusoid
    (MDLM's sigma = -log(eps) x flowzoo's masked-path network time). ``extra_outputs`` output rows beyond
    V_out (MDLM's [MASK] column) are kept in the weights and dropped from the logits. ``loss_weighting``
    keeps FLM's learnable loss weight module (:meth:`loss_weight`).
    """

    def __init__(
        self,
        width: int = 768,
        depth: int = 12,
        heads: int = 12,
        cond_dim: int = 128,
        mlp_ratio: int = 4,
        dropout: float = 0.1,
        attn_softcap: float | None = None,
        soft_input: str = "linear",
        source_time: str = "none",
        time_scale: float = 1.0,
        extra_outputs: int = 0,
        loss_weighting: bool = False,
    ) -> None:
        super().__init__()
        if width % heads or (width // heads) % 2:
            raise ValueError(f"width {width} must be divisible by heads {heads} into an even head size")
        check_choice(soft_input, SOFT_INPUTS, "soft_input")
        if attn_softcap is not None and attn_softcap <= 0:
            raise ValueError(f"attn_softcap must be positive or null, got {attn_softcap}")
        check_choice(source_time, SOURCE_TIMES, "source_time")
        if extra_outputs < 0:
            raise ValueError(f"extra_outputs must be >= 0, got {extra_outputs}")
        self.width, self.depth, self.heads, self.cond_dim = width, depth, heads, cond_dim
        self.soft_input, self.time_scale, self.extra_outputs = soft_input, time_scale, extra_outputs
        self.source_time = source_time
        self.causal = False
        self.vocab_embed = nn.Module()  # holds ``embedding`` once bound; first, as in the references' parameter order
        self._mlp_ratio, self._dropout, self._softcap = mlp_ratio, dropout, attn_softcap
        self.sigma_map = TimestepEmbedder(cond_dim)
        self.sigma_map_prime = TimestepEmbedder(cond_dim) if source_time == "embedder" else None
        if self.sigma_map_prime is not None:
            nn.init.zeros_(self.sigma_map_prime.mlp[-1].weight)
            nn.init.zeros_(self.sigma_map_prime.mlp[-1].bias)
        self.rotary_emb = Rotary(width // heads)
        self.learnable_loss_weighting = LossWeighting(cond_dim) if loss_weighting else None

    def bind(self, in_dim: int, out_dim: int) -> "DDiT":
        """The embedding table E (in_dim, width), the blocks and the output layer (width -> out_dim + extra_outputs)."""
        self.in_dim, self.out_dim = in_dim, out_dim
        self.vocab_embed.embedding = nn.Parameter(torch.empty(in_dim, self.width))
        nn.init.kaiming_uniform_(self.vocab_embed.embedding, a=math.sqrt(5))
        self.blocks = nn.ModuleList(
            DDiTBlock(self.width, self.heads, self.cond_dim, self._mlp_ratio, self._dropout, self._softcap) for _ in range(self.depth)
        )
        self.output_layer = FinalLayer(self.width, out_dim + self.extra_outputs, self.cond_dim)
        return self

    # --- pieces ------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> rows of E; (B, L, V_in) float -> x E or softmax(x) E; (B, L, k) ids with ``weights``
        (B, L, k) -> sum_j w_j E[x_j] (Duo's top-k bags). All (B, L, width)."""
        if self.in_dim is None:
            raise RuntimeError("DDiT.bind(in_dim, out_dim) must be called before forward")
        table = self.vocab_embed.embedding
        if weights is not None:
            B, L, k = x.shape
            bag = F.embedding_bag(x.reshape(-1, k), table.float(), per_sample_weights=weights.reshape(-1, k).float(), mode="sum")
            return bag.view(B, L, -1)
        if not x.is_floating_point():
            return table[x]
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"backbone expects states of shape (B, L, {self.in_dim}), got {tuple(x.shape)}")
        probs = x.float().softmax(-1) if self.soft_input == "softmax" else x.float()
        return (probs @ table.float()).to(x.dtype)

    def condition(self, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """silu(emb(t)) for a flow (or ``source_time='none'``); silu(emb(s) + emb'(t)) for a map from s to t
        (emb' = ``sigma_map_prime``, or emb itself with ``source_time='shared'``)."""
        if s is None or self.source_time == "none":
            return F.silu(self.sigma_map(self.time_scale * t))
        second = self.sigma_map_prime if self.sigma_map_prime is not None else self.sigma_map
        return F.silu(self.sigma_map(self.time_scale * s) + second(self.time_scale * t))

    def neutral_extras(self, keys) -> list[str]:
        """Of ``keys`` (weights a flow lacks), those that leave the function unchanged when zero: the second
        embedder when its last layer is zero (then emb'(t) = 0). Distillation copies a flow into such a map."""
        prime = self.sigma_map_prime
        if prime is None or prime.mlp[-1].weight.count_nonzero() or prime.mlp[-1].bias.count_nonzero():
            return []
        return [k for k in keys if k.startswith("sigma_map_prime.")]

    def euler_step_refusal(self) -> str | None:
        """Why :meth:`euler_step_init` cannot make this backbone start as its flow's Euler step, or None."""
        if self.source_time != "embedder":
            return ("the flow's Euler step reads the flow at the source time s alone, which this DDiT can express only with "
                    "FLM's second time embedder: set --model.backbone.init_args.source_time=embedder")
        return None

    @torch.no_grad()
    def euler_step_init(self) -> None:
        """Make a copy of a flow read delta_{s,t}(x) = D_s(x): zero the second embedder's output layer (FLM's
        student initialisation), so c = silu(emb(s) + 0), the flow's conditioning at s, and X_{s,t} is the flow's
        Euler step."""
        refusal = self.euler_step_refusal()
        if refusal:
            raise ValueError(refusal)
        self.sigma_map_prime.mlp[-1].weight.zero_()
        self.sigma_map_prime.mlp[-1].bias.zero_()

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """FLM's learnable loss weight w(t) (B,)."""
        if self.learnable_loss_weighting is None:
            raise RuntimeError("this DDiT was built without loss_weighting")
        return self.learnable_loss_weighting(t)

    def forward(self, x, t=None, s=None, cache=None, start=0, *, weights=None):
        """Logits (B, L, V_out) over the first V_out output rows (the extra rows are not a prediction)."""
        return self.forward_all(x, t, s, cache, start, weights=weights)[..., : self.out_dim]

    def forward_all(self, x, t=None, s=None, cache=None, start=0, *, weights=None) -> torch.Tensor:
        """All out_dim + extra_outputs logits (B, L, V_out + extra), as the reference returns them."""
        if cache is not None or start:
            raise ValueError("the ddit backbone is bidirectional: it has no key/value cache")
        if t is None:
            raise ValueError("the ddit backbone is always conditioned on a time t")
        h = self.embed(x, weights)
        c = self.condition(t, s)
        for block in self.blocks:
            h = block(h, c, self.rotary_emb)
        return self.output_layer(h, c).float()
