"""The state a sampler or a training step carries: dense (B, L, V), or embedded (B, L, D).

The network reads a continuous state x (B, L, V) only through its input embedding e = x W_in^T (B, L, D),
and every flow-map step of the linear path is a convex combination x <- a x + b delta with
delta = softmax(cap(h W_out^T + b_out)). The embedding is linear, so the same step runs on embeddings,
e <- a e + b delta W_in^T, without any (B, L, V) tensor: the prior x0 = sigma eps enters as
``noisy_embedding`` (eps drawn from a seed inside the kernel), delta W_in^T is ``softmax_embedding``, the
cross-entropy is ``linear_cross_entropy`` from the trunk's final hidden state h (``backbone.hidden``), and
argmax decoding reads the last step's logits chunk by chunk.

This module is the one seam where the fast kernels are chosen (as an attention processor is swapped in a
model): :func:`new_state` gives a :class:`DenseState` or an :class:`EmbeddedState`, which offer the same
operations, so each sampler has one loop and each flow-map objective one body:

* sampling: ``prior``, ``predict`` (D_t or delta_{s,t}: a (B, L, V) tensor, or the hidden state h (B, L, D)
  it comes from), ``in_state`` (the prediction as a point of the state space), ``fresh_noise``,
  ``euler_step``, ``decode``;
* training: ``noisy`` (x_t of a block of the batch, known positions at their ``clean`` point), ``value``, ``head_loss`` (a :class:`LossTerm`),
  ``mixture`` / ``entropy`` (a two-piece target), ``resolve`` (the dense state computes everything at once;
  the embedded one embeds the batch's blocks together with one seed and computes every loss through one
  output projection).

The functions below (``hidden``, ``delta_embedding``, ``noisy_state_embedding``, ``lm_cross_entropy``, ...)
are the embedded state's pieces, also used by MDLM / AR (ids through the trunk) and the fused lsd part.

The switch ``fused`` (True / False / None = automatic) of objectives and samplers is :class:`FusedSwitch`:
the kernels dispatch themselves (Triton on CUDA, the chunked PyTorch reference elsewhere); automatic =
embedded whenever :meth:`FusedSwitch.fused_refusal` finds nothing, ``model.logits`` is FlowLM's own (not
replaced on the instance or a subclass) and :meth:`FusedSwitch.auto_fused` agrees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowzoo.kernels import (
    CrossEntropyPart,
    TeacherTarget,
    draw_seed,
    linear_argmax,
    linear_cross_entropy,
    noisy_embedding,
    shared_head_losses,
    softmax_embedding,
    use_triton,
)
from flowzoo.paths.base import expand_time
from flowzoo.validation import check_choice, check_times, check_tokens, on_host

__all__ = [
    "DECODES",
    "DenseState",
    "EmbeddedSampling",
    "EmbeddedState",
    "FusedSwitch",
    "LossTerm",
    "check_decode",
    "check_switch",
    "decode_hidden",
    "decode_tokens",
    "delta_embedding",
    "fresh_noise_embedding",
    "hidden",
    "lm_cross_entropy",
    "mixture_entropy",
    "noise_seed",
    "noisy_state_embedding",
    "prior_embedding",
    "new_state",
    "self_condition_feedback",
    "self_conditioned",
]

DECODES = ("argmax", "sample")

# (row, column) entries per temporary of mixture_entropy: 4 MiB in float32 on the CPU (as the kernels'
# chunked references), 64 MiB on an accelerator (fewer Python steps)
ENTROPY_BUDGET = {"cpu": 1 << 20, "other": 1 << 24}


# ---------------------------------------------------------------------------------------------- switch


def check_switch(fused) -> bool | None:
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"fused must be true, false or null (automatic), got {fused!r}")
    return fused


class FusedSwitch:
    """Mixin for objectives and samplers with the ``fused`` switch. ``fused`` is True, False or None (automatic).

    ``needs_linear_path``: the component embeds a noisy state of the linear path (flow matching, flow maps,
    the samplers); MDLM and AR feed ids and only need the trunk and the categorical head.
    """

    fused: bool | None = False  # components that never set the switch keep the dense state
    needs_linear_path: bool = False
    passes_self_condition: bool = False  # hands a self-conditioning backbone its previous prediction (dense state only)

    def fused_refusal(self, parts) -> tuple[str, str] | None:
        """(kind, reason) when the kernels cannot compute this component with ``parts``; None when they can."""
        from flowzoo.heads.categorical import CategoricalHead
        from flowzoo.paths.linear import LinearPath

        backbone = parts.get("backbone")
        if backbone is not None:
            if not callable(getattr(backbone, "hidden", None)):
                return "backbone", "the kernels need the trunk's final hidden state (a backbone with hidden(), e.g. dit)"
            if backbone.in_dim is not None and not (hasattr(backbone, "embed") and hasattr(backbone, "unembed")):
                return "backbone", "the kernels need the backbone's embed / unembed linear projections (dit)"
            if self.passes_self_condition and getattr(backbone, "self_condition", False):
                return "backbone", "self-conditioning (the previous prediction as an input) runs on the dense state"
            nonlinear = getattr(backbone, "nonlinear_input_refusal", None)
            if self.needs_linear_path and callable(nonlinear) and nonlinear():
                return "backbone", nonlinear()
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


class EmbeddedSampling(FusedSwitch):
    """The samplers' switch ``fused``: True (embeddings everywhere; the chunked references on the CPU), False
    (the dense (B, L, V) state), None (automatic: embeddings where the kernels run on Triton, i.e. CUDA, and the
    dense state elsewhere, so that CPU results do not change with the switch)."""

    needs_linear_path = True

    def set_fused(self, fused) -> None:
        self.fused = check_switch(fused)

    def incompatibility(self, parts):
        return self.fused_incompatibility(parts)

    def auto_fused(self, model) -> bool:
        return use_triton(model.backbone.embed.weight)

    def state(self, model) -> "DenseState | EmbeddedState":
        """The state this call carries (the seam): embedded when :meth:`use_fused`, dense otherwise."""
        return new_state(model, self.use_fused(model))


def self_conditioned(model) -> bool:
    """Whether ``model``'s backbone reads a previous prediction (``self_condition``, CDCD / Plaid)."""
    return bool(getattr(getattr(model, "backbone", None), "self_condition", False))


def self_condition_feedback(first: torch.Tensor, share: float) -> torch.Tensor:
    """Self-conditioning's training input D^: the first pass's detached prediction ``first`` (B, L, V) on a random
    ``share`` of the rows, 0 (no feedback) on the rest."""
    chosen = torch.rand(first.shape[0], device=first.device) < share  # (B,)
    return first * chosen[:, None, None].to(first.dtype)


def reproducible_logits(logits):
    """Mark a model class's ``logits`` method (FlowLM.logits: backbone(x, t, s) on network times) as the one the
    kernels reproduce; automatic ``fused`` then applies to its instances unless a subclass or the instance
    replaces the method."""
    logits.reproducible_by_kernels = True
    return logits


def _plain_logits(model) -> bool:
    """Whether ``model.logits`` is the marked method (FlowLM's own), which the kernels reproduce."""
    method = getattr(getattr(model, "logits", None), "__func__", None)
    return getattr(method, "reproducible_by_kernels", False)


# ---------------------------------------------------------------------------------------------- decoding


def check_decode(decode: str, temperature: float) -> None:
    check_choice(decode, DECODES, "decode")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def decode_tokens(prediction: torch.Tensor, decode: str, temperature: float, generator=None) -> torch.Tensor:
    """Tokens (B, L) from a per-position prediction (B, L, V): its argmax, or a draw from p^(1/T) in float64."""
    if decode == "argmax":
        return prediction.argmax(-1)
    probs = prediction.double().clamp_min(0)
    if temperature != 1.0:  # p^(1/T), normalised in log space so small T cannot underflow
        probs = torch.softmax(probs.clamp_min(1e-300).log() / temperature, dim=-1)
    flat = torch.multinomial(probs.flatten(0, 1), 1, generator=generator)
    return flat.view(prediction.shape[:2])


def decode_hidden(model, h: torch.Tensor, decode: str, temperature: float, generator=None) -> torch.Tensor:
    """Tokens (B, L) from the last step's hidden state. ``argmax``: the argmax of the capped logits
    cap(h W_out^T + b) (the softmax keeps the order), read in chunks of V, so no (B, L, V) tensor exists;
    ``sample``: a draw from the head's prediction (B, L, V), as :func:`decode_tokens` does."""
    unembed = model.backbone.unembed
    if decode != "argmax":
        return decode_tokens(model.head.denoise(unembed(h).float()), decode, temperature, generator)
    return linear_argmax(h, unembed.weight, unembed.bias, softcap=model.head.softcap)


# ---------------------------------------------------------------------------------------------- embedded pieces


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
    ``path.flow_map(e, delta_embedding(model, h), s, t)`` on embeddings.
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


def fresh_noise_embedding(model, ids: torch.Tensor, scale, generator=None) -> torch.Tensor:
    """scale z W_in^T (B, L, D) for fresh noise z ~ N(0, I) (B, L, V) drawn inside the kernel; scale a float or (B,)."""
    return noisy_embedding(ids, model.backbone.embed.weight, scale, 0.0, seed=draw_seed(generator))


def prior_embedding(model, num_samples: int, length: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, e0): zero ids (B, L) and e0 = x0 W_in^T for the prior x0 = sigma eps (B, L, D), eps from a seed."""
    ids = torch.zeros(num_samples, length, dtype=torch.long, device=model.device)
    return ids, fresh_noise_embedding(model, ids, model.path.sigma, generator)


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


# ---------------------------------------------------------------------------------------------- the seam


class LossTerm:
    """A per-token loss (*rows) of one part of a batch: ``value`` is set when the state computes it (at once on the
    dense state; at :meth:`EmbeddedState.resolve` on the embedded one, where every part shares one output
    projection). ``logits``: the (B, L, V) logits the loss was computed from, where asked for (dense state only)."""

    def __init__(self, value: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> None:
        self.value, self.logits = value, logits


class DenseState:
    """The state x itself (B, L, V): the network reads it whole and predictions are (B, L, V) tensors.

    Works with any continuous path and head (and with test doubles that only define ``logits``). Sampling:
    ``prior``, ``predict``, ``in_state``, ``fresh_noise``, ``euler_step``, ``decode``; training: ``noisy``,
    ``value``, ``head_loss``, ``mixture``, ``entropy``, ``resolve``, all computed at once.
    """

    embedded = False

    def __init__(self, model) -> None:
        self.model = model

    # --- sampling
    def prior(self, num_samples: int, length: int, generator=None) -> torch.Tensor:
        """x0 ~ p_0 (B, L, V), drawn by the path."""
        m = self.model
        return m.path.sample_prior(num_samples, length, m.vocab_size, generator=generator, device=m.device)

    def predict(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head's prediction (B, L, V): D_t(x) (``model.denoise``) when s is None, else delta_{s,t}(x);
        ``self_cond``: the previous prediction (B, L, V) a self-conditioning backbone reads."""
        if self_cond is not None:
            return self.model.denoise(x, t, s, self_cond=self_cond)
        if s is None:
            return self.model.denoise(x, t)
        return self.model.head.denoise(self.model.logits(x, t, s))

    def in_state(self, prediction: torch.Tensor) -> torch.Tensor:
        """The prediction as a point of the state space: itself."""
        return prediction

    def clean(self, ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The clean point of tokens ``ids`` (B, L) in the state space: onehot(ids) (B, L, V), dtype of ``like``."""
        return F.one_hot(ids, like.shape[-1]).to(like.dtype)

    def fresh_noise(self, x: torch.Tensor, scale: torch.Tensor, generator=None) -> torch.Tensor:
        """scale z (B, L, V) for fresh z ~ N(0, I); scale (B,)."""
        return expand_time(scale) * torch.randn(x.shape, generator=generator, device=x.device)

    def euler_step(self, x: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """x + (t' - t) b_t(x) with the path's velocity b_t from D_t = ``prediction``, times (B,); paths on the
        simplex (dirichlet) project back onto it."""
        path = self.model.path
        x = x + expand_time(t_next - t) * path.velocity(x, prediction, t)
        if hasattr(path, "project"):
            x = path.project(x)
        return x

    def decode(self, prediction: torch.Tensor, decode: str, temperature: float, generator=None):
        """(tokens (B, L), the prediction decoded (B, L, V))."""
        return decode_tokens(prediction, decode, temperature, generator), prediction

    # --- training
    def noisy(self, x1: torch.Tensor, t: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        """x_t ~ p_t(. | x1) (B, L, V) for clean ids x1 (B, L), drawn now by the path; the ``known`` positions
        (B, L) (a prompt in training, flowzoo.prompt.condition_mask) at their clean point onehot(x1)."""
        x = self.model.path.sample(x1, t, self.model.vocab_size)
        if known is not None:
            x = torch.where(known[..., None], self.clean(x1, x), x)
        return x

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The state tensor behind ``x`` (here: ``x``)."""
        return x

    def head_loss(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, target, keep_logits: bool = False,
                  self_cond: torch.Tensor | None = None) -> LossTerm:
        """loss_head(prediction at (s, t) of x, target) per token (B, L): the head's CE (or MSE), computed now.
        ``keep_logits``: the term keeps the (B, L, V) logits (else they are freed as soon as autograd allows);
        ``self_cond``: the previous prediction (B, L, V) a self-conditioning backbone reads."""
        logits = self.model.logits(x, t, s) if self_cond is None else self.model.logits(x, t, s, self_cond=self_cond)
        return LossTerm(self.model.head.loss(logits, target), logits if keep_logits else None)

    def mixture(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """w a + (1 - w) b (B, L, V) of two predictions, w (B,)."""
        g = expand_time(weight)
        return g * a + (1 - g) * b

    def entropy(self, target: torch.Tensor) -> torch.Tensor:
        """H(T) = -sum_v T_v log T_v per token (B, L)."""
        return -(target * target.clamp_min(1e-30).log()).sum(-1)

    def resolve(self) -> None:
        """Nothing is pending on the dense state."""


class _Rows:
    """Rows [start, stop) of the batch registered with :meth:`EmbeddedState.noisy`, embedded at first use."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop


def _joined_rows(blocks: list[torch.Tensor]) -> torch.Tensor:
    """The row blocks stacked (B, L): a view when they are consecutive rows of one tensor (no copy of the batch's
    ids, as the flow-map objectives register x1[:n] and x1[n:]), else their concatenation."""
    first = blocks[0]
    if len(blocks) == 1:
        return first
    storage, start, stride = first.untyped_storage().data_ptr(), first.storage_offset(), first.stride()
    done, consecutive = 0, True
    for block in blocks:
        consecutive &= (block.untyped_storage().data_ptr() == storage and block.stride() == stride
                        and block.shape[1:] == first.shape[1:] and block.storage_offset() == start + stride[0] * done)
        done += block.shape[0]
    if consecutive:
        return first.as_strided((done, *first.shape[1:]), stride, start)
    return torch.cat(blocks)


class EmbeddedState:
    """The state as its input embedding e = x W_in^T (B, L, D) on the linear path with the categorical head;
    predictions are the trunk's hidden states h (B, L, D), so no (B, L, V) tensor exists.

    Sampling: the last step's logits are read chunk by chunk (``decode="sample"`` builds the last prediction).
    Training: the rows of a batch registered with :meth:`noisy` are embedded together at their first use (one
    seed, one ``noisy_embedding`` call: :meth:`value`), and the losses added with :meth:`head_loss` /
    :meth:`add_part` go through one output projection at :meth:`resolve` (``shared_head_losses``: one W_out
    gradient buffer for the batch).
    """

    embedded = True

    def __init__(self, model) -> None:
        self.model = model
        self.ids = None  # zero ids (B, L) for the noise kernel, set by prior()
        self._blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []  # (ids, times, known) of noisy()
        self._embedding = None  # (B, L, D), made at the first value()
        self._deferred: list = []  # work on registered rows, run (in order) once they are embedded
        self._parts: list = []  # (kernels part, LossTerm), computed at resolve()

    # --- sampling
    def prior(self, num_samples: int, length: int, generator=None) -> torch.Tensor:
        """e0 = x0 W_in^T (B, L, D) for x0 = sigma eps, eps drawn from a seed inside the kernel."""
        self.ids, e = prior_embedding(self.model, num_samples, length, generator)
        return e

    def predict(self, e: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None, self_cond=None) -> torch.Tensor:
        """The hidden state h (B, L, D) whose head gives D_t (s None: at (t, t)) or delta_{s,t}. Self-conditioning
        runs on the dense state (``FusedSwitch.fused_refusal``): ``self_cond`` is refused."""
        if self_cond is not None:
            raise ValueError("self-conditioning runs on the dense state (fused=false)")
        return hidden(self.model, self.value(e), t, t if s is None else s, embedded=True)

    def in_state(self, h: torch.Tensor) -> torch.Tensor:
        """The prediction as a point of the state space: delta W_in^T (B, L, D) (``softmax_embedding``)."""
        return delta_embedding(self.model, h)

    def clean(self, ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The clean point of tokens ``ids`` (B, L) in the state space: onehot(ids) W_in^T = W_in[:, ids] (B, L, D)."""
        return F.embedding(ids, self.model.backbone.embed.weight.t()).to(like.dtype)

    def fresh_noise(self, e: torch.Tensor, scale: torch.Tensor, generator=None) -> torch.Tensor:
        """scale z W_in^T (B, L, D) for fresh z ~ N(0, I) (B, L, V) drawn inside the kernel; scale (B,)."""
        return fresh_noise_embedding(self.model, self.ids, scale, generator)

    def euler_step(self, e: torch.Tensor, h: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """The Euler step of the linear path, x + (t'-t)(D_t - x)/(1-t), is the flow map X_{t,t'} with delta = D_t,
        which is linear in the state: e <- a e + b D_t W_in^T (``path.flow_map`` on embeddings)."""
        return self.model.path.flow_map(e, self.in_state(h), t, t_next)

    def decode(self, h: torch.Tensor, decode: str, temperature: float, generator=None):
        """(tokens (B, L), None): argmax read chunk by chunk from h, or a draw from the prediction built once."""
        return decode_hidden(self.model, h, decode, temperature, generator), None

    # --- training
    def noisy(self, x1: torch.Tensor, t: torch.Tensor, known: torch.Tensor | None = None) -> _Rows:
        """Register the rows x_t W_in^T of clean ids x1 (m, L) at times t (m,), the ``known`` positions (m, L) at
        their clean point W_in[:, x1]; they are embedded with every other registered row at the first :meth:`value`
        (so the noise seed is drawn after all the batch's times)."""
        if self._embedding is not None:
            raise RuntimeError("EmbeddedState.noisy: the batch was already embedded; register every row first")
        start = sum(ids.shape[0] for ids, _, _ in self._blocks)
        self._blocks.append((x1, t, known))
        return _Rows(start, start + x1.shape[0])

    def value(self, x) -> torch.Tensor:
        """The embedding (m, L, D) behind registered rows (embedding the batch on first use), or ``x`` itself."""
        if not isinstance(x, _Rows):
            return x
        if self._embedding is None:
            self._embed()
        return self._embedding[x.start:x.stop]

    def _embed(self) -> None:
        """x_t W_in^T (B, L, D) of every registered row with one seed, then the work that waited for it."""
        ids = _joined_rows([x1 for x1, _, _ in self._blocks])
        t = torch.cat([t for _, t, _ in self._blocks]) if len(self._blocks) > 1 else self._blocks[0][1]
        self._embedding = noisy_state_embedding(self.model, ids, t, noise_seed())
        if any(known is not None for _, _, known in self._blocks):
            known = torch.cat([torch.zeros_like(x1, dtype=torch.bool) if known is None else known for x1, _, known in self._blocks])
            self._embedding = torch.where(known[..., None], self.clean(ids, self._embedding), self._embedding)
        deferred, self._deferred = self._deferred, []
        for work in deferred:
            work()

    def head_loss(self, x, t: torch.Tensor, s: torch.Tensor, target, keep_logits: bool = False, self_cond=None) -> LossTerm:
        """The categorical head's CE (against ids or a :class:`TeacherTarget`) of the hidden state at (s, t) of x, as
        a kernels part; its value comes at :meth:`resolve`. On rows not yet embedded the trunk runs once they are.
        There are no logits to keep (``keep_logits`` is refused), and self-conditioning runs on the dense state."""
        if keep_logits:
            raise ValueError("the embedded state never forms the (B, L, V) logits")
        if self_cond is not None:
            raise ValueError("self-conditioning runs on the dense state (fused=false)")
        term = LossTerm()

        def add():
            h = hidden(self.model, self.value(x), t, s, embedded=True)
            self._parts.append((CrossEntropyPart(h, target, self.model.head.softcap), term))

        if isinstance(x, _Rows) and self._embedding is None:
            self._deferred.append(add)
        else:
            add()
        return term

    def add_part(self, part) -> LossTerm:
        """A kernels part (e.g. ``LagrangianPart``) of this batch's shared output projection; value at :meth:`resolve`."""
        term = LossTerm()
        self._parts.append((part, term))
        return term

    def mixture(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> TeacherTarget:
        """The target w softmax(head(a)) + (1 - w) softmax(head(b)) of two hidden states, w (m,), as a
        :class:`TeacherTarget` (built tile by tile inside the kernels)."""
        return TeacherTarget(torch.stack([a, b]), torch.stack([weight, 1 - weight])[:, :, None])  # (2, m, L, D), (2, m, 1)

    def entropy(self, target: TeacherTarget) -> torch.Tensor:
        """H(T) per token of a :class:`TeacherTarget` mixture, chunked over V (:func:`mixture_entropy`)."""
        return mixture_entropy(self.model, target.hidden, target.mix)

    def resolve(self) -> None:
        """Embed the batch if no loss asked for it yet, then compute every part through one output projection."""
        if self._blocks and self._embedding is None:
            self._embed()
        if self._parts:
            unembed = self.model.backbone.unembed
            losses = shared_head_losses(unembed.weight, unembed.bias, [part for part, _ in self._parts])
            for (_, term), loss in zip(self._parts, losses):
                term.value = loss
            self._parts = []


def new_state(model, embedded: bool) -> DenseState | EmbeddedState:
    """A fresh state for one sampling call or one training batch of ``model``: :class:`EmbeddedState` (the
    kernels) or :class:`DenseState`."""
    return EmbeddedState(model) if embedded else DenseState(model)
