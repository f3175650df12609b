"""A DiT-style transformer: adaLN-zero conditioning on a time embedding, rotary positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowzoo.backbones.base import Backbone, use_plain_attention
from flowzoo.backbones.jvp import jvp_segment
from flowzoo.registry import register
from flowzoo.validation import check_choice


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DiT): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedder(nn.Module):
    """t -> MLP(sinusoid(t)); ``zero_init`` makes the output start at 0 (used for the s-embedder)."""

    def __init__(self, dim: int, freq_dim: int = 256, zero_init: bool = False) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        if zero_init:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


def rotary_tables(length: int, head_dim: int, start: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (L, head_dim/2) for positions start .. start+L-1."""
    inv = 1.0 / (10_000 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the head dimension; x: (B, H, L, Dh)."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, cache: dict | None, start: int) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # each (B, H, L, Dh)
        cos, sin = rotary_tables(L, D // self.heads, start, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        causal = self.causal and L > 1
        if causal and k.shape[2] != L:  # new queries attend to all cached keys and causally among themselves
            mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - L)
        else:
            mask = None
        if use_plain_attention():
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if causal:
                full = mask if mask is not None else torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~full, float("-inf"))
            y = scores.softmax(-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, cond_dim: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = Attention(width, heads, causal)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.dropout = nn.Dropout(dropout)
        self.ada = nn.Linear(cond_dim, 6 * width)  # adaLN-zero: shift, scale, gate for attention and MLP
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cache: dict | None, start: int) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.dropout(self.attn(modulate(self.norm1(x), sh1, sc1), cache, start))
        x = x + g2[:, None] * self.dropout(self.mlp(modulate(self.norm2(x), sh2, sc2)))
        return x


MAIN_TIMES = ("target", "source")
INPUT_PROJECTIONS = ("linear", "normalized", "softmax")


def project_state(x: torch.Tensor, projection: str, temperature: float) -> torch.Tensor:
    """The state x (B, L, V_in) as the input projection reads it, before W_in: x itself (``linear``),
    x / ||x||_2 per position (``normalized``) or softmax(x / T) (``softmax``), in float32."""
    if projection == "normalized":
        return x.float() / x.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (B, L, V_in), unit norm per position
    if projection == "softmax":
        return torch.softmax(x.float() / temperature, dim=-1)  # (B, L, V_in), on the simplex
    return x


@register("backbone", "dit")
class DiT(Backbone):
    """DiT transformer: adaLN-zero on emb(t) + emb(t - s), rotary positions; bidirectional or causal.

    ``main_time`` says which time of a map call (s, t) the main time embedder reads: ``target``, c = emb(t) +
    emb_gap(t - s) (the default), or ``source``, c = emb(s) + emb_gap(t - s) (FLM's). On the diagonal s = t both
    are emb(t) + emb_gap(0), so a flow is the same network either way; ``source`` lets a map copied from a flow
    start as the flow's Euler step (:meth:`euler_step_init`).

    ``self_condition`` (CDCD, Plaid): the trunk also reads a previous prediction D^ (B, L, V_out) of the clean
    tokens, h_0 = x W_in^T + D^ W_sc^T with W_sc zero-initialised; no D^ (``self_cond=None``) is D^ = 0.

    ``input_projection`` says how a float state x (B, L, V_in) enters the trunk (ids always embed as rows of W_in):

    * ``linear`` (the default, FLM's): e = x W_in^T. On the linear path ||x_t||^2 ~ (1 - t)^2 sigma^2 V + t^2, so
      the input's scale falls by sigma sqrt(V) from noise to data;
    * ``normalized``: e = (x / ||x||_2) W_in^T per position: the input has norm 1 at every t (a one-hot's, so a
      clean token reads as its row of W_in); the realised-norm form of CDCD / EDM's c_in = 1 / sqrt(sigma_t^2 + 1);
    * ``softmax``: e = softmax(x / T) W_in^T with T = ``input_temperature`` (SSD-LM, TESS: the network reads the
      probabilities of the noisy simplex state; their logits of +-K, K = 5, are T = 1 / (2K) = 0.1 on the one-hot
      scale; Duo's relaxation is the DDiT's ``soft_input: softmax``).

    Only ``linear`` is linear in x, which the fused kernels need (they embed x_t W_in^T without building x_t): the
    other two run on the dense state (``FusedSwitch.fused_refusal`` says so; automatic ``fused`` falls back).
    """

    def __init__(
        self,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        cond_dim: int = 128,
        dropout: float = 0.0,
        causal: bool = False,
        main_time: str = "target",
        self_condition: bool = False,
        input_projection: str = "linear",
        input_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        check_choice(main_time, MAIN_TIMES, "main_time")
        check_choice(input_projection, INPUT_PROJECTIONS, "input_projection")
        if not input_temperature > 0:
            raise ValueError(f"input_temperature must be positive, got {input_temperature}")
        self.main_time, self.self_condition = main_time, bool(self_condition)
        self.input_projection, self.input_temperature = input_projection, float(input_temperature)
        self.width, self.depth, self.heads = width, depth, heads
        self.cond_dim, self.causal = cond_dim, causal
        self.t_embed = TimeEmbedder(cond_dim)
        # the gap embedder starts at zero; a flow only ever reads it at t - s = 0, where training makes it a constant
        self.gap_embed = TimeEmbedder(cond_dim, zero_init=True)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, cond_dim, dropout, causal) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_ada = nn.Linear(cond_dim, 2 * width)
        nn.init.zeros_(self.final_ada.weight)
        nn.init.zeros_(self.final_ada.bias)

    def bind(self, in_dim: int, out_dim: int) -> "DiT":
        """Create the input projection (V_in -> width) and the zero-initialised output layer (width -> V_out)."""
        self.in_dim, self.out_dim = in_dim, out_dim
        self.embed = nn.Linear(in_dim, self.width, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.unembed = nn.Linear(self.width, out_dim)
        nn.init.zeros_(self.unembed.weight)
        nn.init.zeros_(self.unembed.bias)
        if self.self_condition:  # W_sc: the previous prediction's embedding, zero at the start
            self.self_embed = nn.Linear(out_dim, self.width, bias=False)
            nn.init.zeros_(self.self_embed.weight)
        return self

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> rows of W_in; (B, L, V_in) states -> P(x) W_in^T with P the ``input_projection``
        (:func:`project_state`: x, x / ||x||, softmax(x / T)). Both (B, L, width)."""
        if x.dtype in (torch.int64, torch.int32):
            return F.embedding(x, self.embed.weight.t())
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"backbone expects states of shape (B, L, {self.in_dim}), got {tuple(x.shape)}")
        x = project_state(x, self.input_projection, self.input_temperature)
        return self.embed(x.to(self.embed.weight.dtype) if not torch.is_autocast_enabled() else x)

    def nonlinear_input_refusal(self) -> str | None:
        """Why an input embedding cannot be computed outside this backbone as x W_in^T (the fused kernels' e), or None."""
        if self.input_projection == "linear":
            return None
        return (f"input_projection={self.input_projection} is not linear in the state x, and the fused kernels embed "
                "x W_in^T without building x: it runs on the dense state")

    def condition(self, batch: int, t: torch.Tensor | None, s: torch.Tensor | None, device) -> torch.Tensor:
        if t is None:  # AR: no time; the modulation reduces to its learned biases
            return torch.zeros(batch, self.cond_dim, device=device)
        s = t if s is None else s
        return self.t_embed(s if self.main_time == "source" else t) + self.gap_embed(t - s)

    def euler_step_refusal(self) -> str | None:
        """Why :meth:`euler_step_init` cannot make this backbone start as its flow's Euler step, or None."""
        if self.main_time != "source":
            return ("the flow's Euler step reads the flow at the source time s, and this DiT's main time embedder reads the "
                    "target time t: set --model.backbone.init_args.main_time=source")
        return None

    @torch.no_grad()
    def euler_step_init(self) -> None:
        """Make a copy of a flow read delta_{s,t}(x) = D_s(x) for every s <= t: the map X_{s,t} is then the flow's
        Euler step x + (t - s) b_s(x) (FLM's student initialisation).

        A flow is only ever called at s = t, so its gap embedder's output g0 = emb_gap(0) is a constant (not zero
        once trained). Zeroing the gap embedder's output layer and adding g0 to the main embedder's output bias
        gives c(s, t) = emb(s) + g0, the flow's own conditioning at s (``main_time="source"``).
        """
        refusal = self.euler_step_refusal()
        if refusal:
            raise ValueError(refusal)
        out = self.gap_embed.mlp[-1]
        g0 = self.gap_embed(torch.zeros(1, device=out.weight.device))[0]  # (cond_dim,)
        out.weight.zero_()
        out.bias.zero_()
        self.t_embed.mlp[-1].bias.add_(g0.to(self.t_embed.mlp[-1].bias.dtype))

    def forward(self, x, t=None, s=None, cache=None, start=0, *, self_cond=None):
        return self.unembed(self.hidden(x, t, s, cache, start, self_cond=self_cond)).float()  # (B, L, V_out)

    def hidden(self, x, t=None, s=None, cache=None, start=0, *, embedded: bool = False, self_cond=None) -> torch.Tensor:
        """Final hidden state h (B, L, width) after the final adaLN modulation: logits = unembed(h).

        ``x`` as in :meth:`forward`, or with ``embedded=True`` an input embedding e = x W_in^T (B, L, width)
        computed elsewhere (the fused kernels embed a noisy state without building it). ``self_cond``: the previous
        prediction D^ (B, L, V_out) of a ``self_condition`` backbone, added to the trunk's input as D^ W_sc^T.
        """
        h = self._trunk_input(x, embedded)  # (B, L, width)
        if self_cond is not None:
            h = h + self.self_conditioning(self_cond, h)
        c = F.silu(self.condition(h.shape[0], t, s, h.device))
        for i, block in enumerate(self.blocks):
            h = block(h, c, None if cache is None else cache[i], start)
        return self._final(h, c)

    def hidden_jvp(self, e, t, s, t_dot, *, checkpoint: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, dh): :meth:`hidden` of an input embedding e (B, L, width) at network times (t, s), and its
        forward-mode derivative along t_dot (B,) with e and s held fixed, both (B, L, width).

        Block by block with :func:`flowzoo.backbones.jvp.jvp_segment`: with ``checkpoint`` the backward pass
        recomputes each block's jvp and the graph keeps only the blocks' inputs (exact gradients).
        """
        h = self._trunk_input(e, embedded=True)
        c, c_dot = torch.func.jvp(lambda tt: F.silu(self.condition(h.shape[0], tt, s, h.device)), (t,), (t_dot,))
        h_dot = torch.zeros_like(h)  # e does not depend on t
        for block in self.blocks:
            h, h_dot = jvp_segment(lambda x, cc, block=block: block(x, cc, None, 0), (h, c), (h_dot, c_dot),
                                   tuple(block.parameters()), checkpoint)
        return jvp_segment(self._final, (h, c), (h_dot, c_dot), tuple(self.final_ada.parameters()), checkpoint)

    def self_conditioning(self, previous: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """D^ W_sc^T (B, L, width) for the previous prediction D^ (B, L, V_out): the one place self-conditioning
        enters the network."""
        if not self.self_condition:
            raise ValueError("this DiT was built without self-conditioning: set --model.backbone.init_args.self_condition=true")
        if previous.shape != (*h.shape[:2], self.out_dim):
            raise ValueError(f"the self-conditioning prediction must have shape {(*h.shape[:2], self.out_dim)}, got {tuple(previous.shape)}")
        weight = self.self_embed.weight
        return self.self_embed(previous.to(weight.dtype) if not torch.is_autocast_enabled() else previous)

    def _trunk_input(self, x, embedded: bool) -> torch.Tensor:
        if self.in_dim is None:
            raise RuntimeError("DiT.bind(in_dim, out_dim) must be called before forward")
        if not embedded:
            return self.embed_input(x)
        refusal = self.nonlinear_input_refusal()
        if refusal:
            raise ValueError(f"an input embedding given to the trunk (embedded=True) is x W_in^T, but {refusal}")
        if x.dim() != 3 or x.shape[-1] != self.width:
            raise ValueError(f"an input embedding must have shape (B, L, {self.width}), got {tuple(x.shape)}")
        return x if torch.is_autocast_enabled() else x.to(self.embed.weight.dtype)

    def _final(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.final_ada(c).chunk(2, dim=-1)  # the final adaLN modulation
        return modulate(self.final_norm(h), shift, scale)

    def new_cache(self) -> list[dict]:
        """An empty key/value cache, one dict per block, for incremental causal decoding."""
        return [{} for _ in self.blocks]
