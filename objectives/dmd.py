"""Distribution matching distillation (DMD) of the one-step map, on top of the two-stage ``distill`` losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowzoo.objectives._flowmap import one_step_logits
from flowzoo.objectives._teacher import SelfConditionedTeacher, require_self_conditioned
from flowzoo.objectives.distill import Distill
from flowzoo.registry import register
from flowzoo.state import self_condition_feedback
from flowzoo.validation import check_choice


SAMPLE_FORMS = ("argmax", "soft")
CRITIC_SELF_CONDITION_SHARE = 0.5  # with score_self_condition: the critic's rows trained on its first prediction, as the flow's
GRADIENTS_THROUGH = ("probs", "logits")


def generator_step_list(generator_steps: int | list[int] | tuple[int, ...]) -> list[int]:
    """``generator_steps`` (one step count, or a list of them) as a list of step counts."""
    return [generator_steps] if isinstance(generator_steps, int) else [int(k) for k in generator_steps]


def steps_per_sample(generator_steps: int | list[int] | tuple[int, ...], n: int) -> list[int]:
    """The map's step count k for each of n samples: ``generator_steps``' entries in contiguous blocks of
    ceil(n / K) samples (K entries), e.g. [1, 4] over 5 samples: [1, 1, 1, 4, 4]."""
    steps = generator_step_list(generator_steps)
    per = -(-n // len(steps))
    return [steps[i // per] for i in range(n)]


@register("objective", "dmd")
class DistributionMatching(Distill):
    """``distill``'s losses plus distribution matching of the one-step samples (DMD, Yin et al. 2024).

    Per-sample losses fit delta_{0,1}(eps) to where the teacher's ODE goes from eps, and where the student cannot
    resolve which branch that is they settle on the mixture of branches. DMD instead compares the law of the
    one-step samples x^ = delta_{0,1}(eps) (eps ~ prior) with the data's: noised along the path,
    x_t = (1-t) sigma eps' + t x^, the two laws have scores (t D_t(x) - x) / ((1-t) sigma)^2 with D^real the
    teacher's denoiser and D^fake a critic's, trained online on the one-step samples, so

        grad_x^ KL(p^fake_t || p^real_t) ~ w (D^fake_t - D^real_t)(x_t),   w = 1 / mean_{L,V} |x^ - D^real_t(x_t)|,

    applied as the loss 1/2 mean (x^ - sg[x^ - w (D^fake - D^real)])^2, times ``dmd_weight``, on ``num_generated``
    fresh samples a step (0: the batch size), t uniform in the path's uniform time within ``noise_range``. A list
    of ranges (bands) splits the samples among them, sample i in band i mod K, each band's loss weighted by its
    entry of ``band_weights`` (default 1): e.g. a low-noise band, where local validity shows, and a high-noise band,
    where which states a sample visits shows, with their own weights.
    ``samples="argmax"`` (default) makes x^ the one-hot of the sampler's argmax decode with a straight-through
    gradient (d loss / d delta := d loss / d x^): the compared laws are of sequences, as the data's are, so the
    gradient is about which token; ``"soft"`` compares the soft delta itself, whose gap to the teacher is then
    mostly "not a vertex" (sharpening, which leaves the argmax decode as it is). ``gradient_through="probs"``
    applies the step to delta (through the softmax, whose Jacobian p (g - <p, g>) scales the push toward a token
    by its current probability); ``"logits"`` applies it to the logits directly (the step sums to 0 over V, as a
    logit gradient does), so tokens the student gives little probability can still be pushed up.
    By default D^real and D^fake are one-pass reads (a self-conditioning network's D^ = 0) even with
    ``teacher_self_condition``, which applies to ``distill``'s losses only: so the two read alike and their difference
    starts at zero. ``score_self_condition`` (a self-conditioning teacher, CDCD / Plaid) reads both as the teacher was trained,
    D_t(x | sg[D_t(x | 0)]) (two passes each), and trains the critic so: on half its rows the second pass reads the
    first's detached prediction. They still read alike at the start, and D^real is then the teacher's better read.
    The critic starts as a copy of the teacher and takes ``critic_steps`` Adam steps (``critic_lr``, 0: the
    model's lr; the model's betas) per training step on CE(x^ || D^fake_t(x_t)) at the diagonal's times
    (:meth:`critic_loss`), each after the first on fresh one-step samples; the model owns the critic and its
    optimizer (``FlowLM.critic``, ``FlowLM.train_critic``, :class:`flowzoo.teachers.Critic`), this objective gives
    the losses. With ``gan_weight`` > 0 (DMD2's GAN term) the critic also carries a
    linear head d on its hidden states, one real-vs-generated logit per position of a noised sequence, trained on
    data rows against one-step samples; the map adds ``gan_weight`` * softplus(-d(x^_t)). The critic is
    kept out of the module tree and ``save_pretrained``, like the teacher; a training checkpoint keeps it, so a
    resumed run goes on with it (``FlowLM.on_save_checkpoint``); under DDP each rank trains its own.
    ``generator_steps`` (default (1,): one step) makes the compared samples k-step ones (DMD2's multi-step
    generator, by backward simulation): x_{t_{k-1}} comes from k - 1 jumps of the map along the flow-map sampler's
    grid without gradient, and x^ = delta_{t_{k-1},1}(x_{t_{k-1}}) takes the push, so the last jump of the k-step map
    is what learns. A list splits the samples into contiguous blocks, one per entry (e.g. [1, 4]: the 1-step and the
    4-step map both matched); the critic then learns the mixture of their laws.
    ``step_regression_weight`` > 0 (with a k > 1 among ``generator_steps``) adds DMD's paired regression loss with
    the map's own k-step sampler as the teacher: CE(sg[x^_k(eps)] || delta_{0,1}(eps)) on the rows of the largest
    k's block, x^_k(eps) their k-step sample from the same noise eps, so the 1-step map is pulled toward what the
    k-step map draws (the semigroup delta_{0,1} = delta_{t_{k-1},1} o ... o delta_{0,t_1}, read on its own samples).
    """

    def __init__(
        self,
        dmd_weight: float = 1.0,
        num_generated: int = 0,
        noise_range: tuple[float, float] | list[tuple[float, float]] = (0.02, 0.98),
        band_weights: list[float] | None = None,
        critic_steps: int = 1,
        critic_lr: float = 0.0,
        samples: str = "argmax",
        gradient_through: str = "probs",
        gan_weight: float = 0.0,
        score_self_condition: bool = False,
        generator_steps: int | list[int] | tuple[int, ...] = (1,),
        step_regression_weight: float = 0.0,
        **distill,
    ) -> None:
        super().__init__(**distill)
        steps = generator_step_list(generator_steps)
        if not steps or min(steps) < 1:
            raise ValueError(f"generator_steps must be a step count >= 1 or a list of them, got {generator_steps}")
        self.generator_steps = steps
        if step_regression_weight < 0 or (step_regression_weight and max(steps) == 1):
            raise ValueError(
                "step_regression_weight must be >= 0, and > 0 only with a multi-step block among generator_steps "
                f"(its k-step samples are the 1-step map's targets), got {step_regression_weight} with {steps}"
            )
        self.step_regression_weight = float(step_regression_weight)
        bands = [noise_range] if len(noise_range) == 2 and not isinstance(noise_range[0], (list, tuple)) else list(noise_range)
        if not bands or any(len(b) != 2 or not 0.0 <= b[0] <= b[1] <= 1.0 for b in bands):
            raise ValueError(f"noise_range must be a pair (lo, hi) or a list of pairs with 0 <= lo <= hi <= 1, got {noise_range}")
        band_weights = [1.0] * len(bands) if band_weights is None else [float(w) for w in band_weights]
        if len(band_weights) != len(bands) or min(band_weights) < 0:
            raise ValueError(f"band_weights needs one weight >= 0 per noise band ({len(bands)}), got {band_weights}")
        if dmd_weight < 0 or num_generated < 0 or critic_steps < 1 or critic_lr < 0 or gan_weight < 0:
            raise ValueError(
                "dmd needs dmd_weight >= 0, num_generated >= 0, critic_steps >= 1, critic_lr >= 0 and gan_weight >= 0, "
                f"got {dmd_weight}, {num_generated}, {critic_steps}, {critic_lr}, {gan_weight}"
            )
        self.gan_weight = float(gan_weight)
        self.dmd_weight, self.num_generated = dmd_weight, num_generated
        # not saved (they come from the config) but moved with the model, so no host-to-device copy a step
        self.register_buffer("noise_bands", torch.tensor(bands), persistent=False)  # (K, 2): lo, hi in uniform time
        self.register_buffer("band_weights", torch.tensor(band_weights), persistent=False)  # (K,)
        check_choice(samples, SAMPLE_FORMS, "samples")
        check_choice(gradient_through, GRADIENTS_THROUGH, "gradient_through")
        self.critic_steps, self.critic_lr, self.samples = critic_steps, critic_lr, samples
        self.gradient_through = gradient_through
        self.score_self_condition = bool(score_self_condition)

    def incompatibility(self, parts):
        found = super().incompatibility(parts)
        if found is None and not parts["path"].mean_denoiser:
            return "path", "dmd noises the one-step samples along the path, which needs the mean-denoiser (linear) path"
        if found is None and not parts["head"].on_simplex:
            return "head", "dmd compares denoisers on the simplex: it needs the categorical head"
        backbone = parts.get("backbone")  # given when the model is built (not when a sampler is swapped in)
        if found is None and self.gan_weight and backbone is not None and not hasattr(backbone, "hidden"):
            return "backbone", "dmd's gan_weight reads the critic's hidden states: it needs a backbone with hidden() (dit)"
        return found

    def forward(self, model, x1):
        out = super().forward(model, x1)  # distill's diagonal and map losses
        n = self.num_generated or x1.shape[0]
        found = self.distribution_loss(model, n, x1.shape[1], x1.device, data=x1)
        out.update({k: v.detach() for k, v in found.items()})
        out["loss"] = out["loss"] + self.dmd_weight * found["dmd"]
        if self.gan_weight:
            out["loss"] = out["loss"] + self.gan_weight * found["gan"]
        if self.step_regression_weight:
            out["loss"] = out["loss"] + self.step_regression_weight * found["step_regression"]
        return out

    def band_of(self, n: int, device) -> torch.Tensor:
        """The noise band of each of n samples, i mod K. (n,)"""
        return torch.arange(n, device=device) % len(self.band_weights)

    def noise_times(self, model, n: int, device) -> torch.Tensor:
        """t uniform in the path's uniform time within each sample's noise band. (n,)"""
        lo, hi = self.noise_bands[self.band_of(n, device)].unbind(-1)
        return model.path.time_from_uniform(lo + (hi - lo) * torch.rand(n, device=device))

    def noised(self, model, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1-t) sigma eps + t x^: the path from fresh prior noise to the (soft) sample. (n, L, V)"""
        eps = model.path.sample_prior(*sample.shape, device=sample.device)
        return model.path.flow_map(eps, sample, torch.zeros_like(t), t)

    def distribution_loss(self, model, n: int, length: int, device, data: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``dmd`` (and ``gan``, the generator's GAN loss, with ``gan_weight``) on n fresh one-step samples; in
        training, first the critic's steps (``data``: token ids (B, L), which the discriminator needs)."""
        if self.gan_weight and data is None:
            raise ValueError("dmd with gan_weight > 0 needs real data (token ids) for its discriminator")
        teacher = self.teacher(model, device)
        if self.score_self_condition:
            require_self_conditioned(teacher, "score_self_condition", "D^real and D^fake with their own first prediction")
        critic = model.critic()  # the model's critic network (flowzoo.teachers.Critic), built from the teacher on first use
        eps = model.path.sample_prior(n, length, model.vocab_size, device=device)  # (n, L, V)
        logits, delta, sample = self.generate(model, n, length, device, noise=eps)
        out = {}
        if self.step_regression_weight:
            out["step_regression"] = self.step_regression_loss(model, eps, sample)
        if torch.is_grad_enabled() and model.training:
            out.update(model.train_critic(sample, data))  # the model steps the critic's optimizer on critic_loss
        if self.gan_weight:
            out["gan"] = self.generator_gan_loss(model, critic, sample + delta - delta.detach() if self.samples == "argmax" else delta)
        t = self.noise_times(model, n, device)
        with torch.no_grad():
            xt = self.noised(model, sample, t)
            real = self.score_read(teacher, xt, t)  # D^real_t(x_t), (n, L, V)
            fake = self.score_read(critic, xt, t)  # D^fake_t(x_t)
            weight = 1 / (sample - real).abs().mean(dim=(1, 2), keepdim=True).clamp_min(1e-4)  # (n, 1, 1)
            step = weight * (fake - real)
        pushed = delta if self.gradient_through == "probs" else logits  # d loss / d pushed = band weight * step / numel
        per_sample = 0.5 * (pushed - (pushed - step).detach()).pow(2).mean(dim=(1, 2))  # (n,)
        out["dmd"] = (self.band_weights[self.band_of(n, device)] * per_sample).mean()
        out["dmd_gap"] = (fake - real).abs().sum(-1).mean()  # mean total-variation x2 between the denoisers
        return out

    def score_read(self, network, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D_t(x_t) (n, L, V) of the teacher or the critic: one pass, or with ``score_self_condition`` two,
        D_t(x_t | sg[D_t(x_t | 0)])."""
        reader = SelfConditionedTeacher(network) if self.score_self_condition else network
        return network.head.denoise(reader.logits(xt, t, t)).float()

    def generator_steps_of(self, n: int) -> list[int]:
        """The map's step count k for each of n samples (:func:`steps_per_sample`)."""
        return steps_per_sample(self.generator_steps, n)

    def rows_with_steps(self, n: int, k: int, device) -> torch.Tensor:
        """The indices (m,) of the samples among n that the map draws in k steps."""
        return (torch.tensor(self.generator_steps_of(n), device=device) == k).nonzero().squeeze(-1)

    def step_regression_loss(self, model, eps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """CE(sg[x^_k(eps)] || delta_{0,1}(eps)) over the rows of the largest k's blocks: the 1-step map from those
        rows' noise eps (n, L, V) fit to their k-step samples ``sample`` (one-hot, or soft with samples="soft")."""
        rows = self.rows_with_steps(eps.shape[0], max(self.generator_steps), eps.device)
        if not len(rows):  # fewer samples than blocks: the k-step block drew none
            return eps.new_zeros(())
        logits = one_step_logits(model, eps[rows])  # (m, L, V)
        return model.head.loss(logits, sample[rows].detach()).mean()

    def generate(self, model, n: int, length: int, device, noise: torch.Tensor | None = None):
        """Logits and delta_{t_{k-1},1}(x_{t_{k-1}}) of n k-step samples (k from ``generator_steps``; k = 1:
        delta_{0,1}(eps)), (n, L, V) each, and the sample x^ compared. Only the last jump carries a gradient.
        ``noise``: their prior draws eps (n, L, V); default fresh ones."""
        eps = model.path.sample_prior(n, length, model.vocab_size, device=device) if noise is None else noise  # (n, L, V)
        x, source = eps, torch.zeros(n, device=device)
        for k in sorted(set(self.generator_steps_of(n)) - {1}):  # the k-step blocks that drew rows
            rows = self.rows_with_steps(n, k, device)
            times = model.path.schedule(k, end=1.0, device=device)  # the flow-map sampler's grid
            with torch.no_grad():
                y = eps[rows]
                for s, t in zip(times[:-2], times[1:-1]):
                    s, t = s.expand(len(rows)), t.expand(len(rows))
                    y = model.path.flow_map(y, model.denoise(y, t, s).to(y.dtype), s, t)
            x = x.index_copy(0, rows, y)
            source = source.index_copy(0, rows, times[-2].expand(len(rows)))
        logits = model.logits(x, torch.ones(n, device=device), source).float()  # (n, L, V)
        delta = model.head.denoise(logits)  # delta_{s,1}(x_s)
        if self.samples == "argmax":  # x^: the one-hot decode; its gradient passes to delta (straight-through)
            sample = F.one_hot(delta.argmax(-1), delta.shape[-1]).to(delta.dtype)
        else:
            sample = delta.detach()
        return logits, delta, sample

    def discriminate(self, model, critic, sample: torch.Tensor) -> torch.Tensor:
        """Real-vs-generated logits (n, L), one per position, of the discriminator head on the critic's hidden
        states at x_t, the sample noised to a time in ``noise_range``."""
        t = self.noise_times(model, sample.shape[0], sample.device)
        nt = critic.path.network_time(t)
        return critic.discriminator(critic.backbone.hidden(self.noised(model, sample, t), nt, nt)).squeeze(-1)

    def generator_gan_loss(self, model, critic, sample: torch.Tensor) -> torch.Tensor:
        """Non-saturating GAN loss softplus(-d(x_t)) of the one-step samples; its gradient reaches the map through
        ``sample`` only (the critic's weights take none)."""
        params = list(critic.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            return F.softplus(-self.discriminate(model, critic, sample)).mean()
        finally:
            for p in params:
                p.requires_grad_(True)

    def critic_loss(self, model, critic, sample: torch.Tensor, data: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The critic's loss CE(x^ || D^fake_t(x_t)) on one-step samples ``sample``: flow matching on the samples'
        law, t drawn as the diagonal's. With ``gan_weight`` also the discriminator's softplus(-d(data_t)) +
        softplus(d(x^_t)) on as many rows of ``data`` (token ids, drawn with replacement). ``total`` is what the
        model's critic optimizer steps on (``FlowLM.train_critic``, ``critic_steps`` times a training step)."""
        n = sample.shape[0]
        t = self.diagonal_times(n, model, sample.device)
        xt = self.noised(model, sample, t)
        previous = None
        if self.score_self_condition:  # sg[D^fake_t(x_t | 0)] on a share of the rows, 0 (no feedback) on the rest
            with torch.no_grad():
                first = critic.head.denoise(critic.logits(xt, t, t))  # (n, L, V)
            previous = self_condition_feedback(first, CRITIC_SELF_CONDITION_SHARE)
        loss = critic.head.loss(critic.logits(xt, t, t, self_cond=previous), sample).mean()
        out = {"critic": loss, "total": loss}
        if self.gan_weight:
            rows = data[torch.randint(data.shape[0], (n,), device=data.device)]
            onehot = F.one_hot(rows, sample.shape[-1]).to(sample.dtype)  # (n, L, V)
            disc = F.softplus(-self.discriminate(model, critic, onehot)).mean() + F.softplus(self.discriminate(model, critic, sample)).mean()
            out.update(disc=disc, total=loss + disc)
        return out
