"""Reward fine-tuning of a trained flow map towards the tilted law rho_r ∝ exp(lambda r) rho_1 (docs/rewards.md)."""

from __future__ import annotations

import torch

from flowzoo import registry
from flowzoo.objectives.dmd import DistributionMatching
from flowzoo.registry import register
from flowzoo.validation import check_choice

KL_WEIGHTINGS = ("score", "dmd")


@register("objective", "reward")
class RewardFineTuning(DistributionMatching):
    """Maximise lambda E r(X^theta_{0,1}(x_0)) minus KL(rho_theta || rho_1): the minimiser of
    KL(q || rho_1) - lambda E_q[r] = KL(q || rho_r) - log Z is q = rho_r.

    The base model is the frozen ``teacher`` (``init_from_teacher`` starts the student from it, or ``init_from``
    from another map). The KL gradient is dmd's: one-step samples x^ = X_{0,1}(eps) noised to x_t, the critic D^fake
    (trained online on x^) against the frozen base denoiser D^real; with ``kl_weighting="score"`` each sample's push
    is the exact gradient of KL(p^theta_t || p^1_t), t^2 / ((1-t) sigma)^2 (D^fake_t - D^real_t)(x_t) summed over
    positions and tokens (calibrated against the reward term, so ``tilt`` is lambda), ``"dmd"`` keeps DMD's
    normalised form. The reward term is -``tilt`` r(x^) (x^ the straight-through one-hot with ``samples="argmax"``:
    the reward's gradient on the soft map output), plus ``intermediate`` times the same from noisy data,
    -lambda r(X_{t,1}(x_t)) with x_t ~ p_t(. | x_1), t uniform. ``distill``'s losses against the frozen base keep the
    network a few-step map (``distill_weight`` scales them; 0 drops them).
    """

    def __init__(self, reward: dict | str = "token_count", tilt: float = 1.0, kl_weighting: str = "score",
                 intermediate: float = 0.0, distill_weight: float = 1.0, **dmd) -> None:
        dmd.setdefault("noise_range", (0.5, 0.98))
        super().__init__(**dmd)
        self.reward = registry.build("reward", reward)
        self.reward.require_gradient("the reward objective (it differentiates r(X_{0,1}(x_0)) in the map's weights)")
        check_choice(kl_weighting, KL_WEIGHTINGS, "kl_weighting")
        if tilt < 0 or intermediate < 0 or distill_weight < 0:
            raise ValueError(f"reward needs tilt, intermediate and distill_weight >= 0, got {tilt}, {intermediate}, {distill_weight}")
        if self.gan_weight and kl_weighting == "score":
            raise ValueError("reward: gan_weight > 0 needs kl_weighting='dmd' (the score weighting has no GAN term)")
        self.tilt, self.kl_weighting = float(tilt), kl_weighting
        self.intermediate, self.distill_weight = float(intermediate), float(distill_weight)

    def evaluations_per_step(self, batch_size: int) -> int:
        """Reward evaluations of one training step on batches of ``batch_size``: the one-step samples
        (``num_generated``, else the batch size), plus the batch again with ``intermediate``."""
        return int(self.num_generated or batch_size) + (batch_size if self.intermediate else 0)

    def bound_reward(self, model):
        if self.reward.vocab_size is None:
            self.reward.bind(model.vocab_size)
        return self.reward

    def forward(self, model, x1):
        reward = self.bound_reward(model)
        out = super(DistributionMatching, self).forward(model, x1) if self.distill_weight else {}
        loss = self.distill_weight * out["loss"] if out else 0.0
        n, length = self.num_generated or x1.shape[0], x1.shape[1]
        found = self.distribution_loss(model, n, length, x1.device, data=x1)
        out.update({k: v.detach() for k, v in found.items() if k != "pushed"})
        logits, delta, sample = found.pop("pushed")
        soft = sample + delta - delta.detach() if self.samples == "argmax" else delta  # straight-through one-hot
        r = reward(soft)  # (n,)
        out["reward"] = r.detach().mean()
        loss = loss + self.dmd_weight * found["dmd"] - self.tilt * r.mean()
        if self.intermediate:
            t = model.path.time_from_uniform(torch.rand(x1.shape[0], device=x1.device))
            xt = model.path.sample(x1, t, model.vocab_size)
            ahead = model.head.denoise(model.logits(xt, torch.ones_like(t), t))  # delta_{t,1}(x_t) = X_{t,1}(x_t)
            loss = loss - self.intermediate * self.tilt * reward(ahead.float()).mean()
        out["loss"] = loss
        return out

    def distribution_loss(self, model, n, length, device, data=None):
        """dmd's loss on n one-step samples, with the exact KL weighting (``kl_weighting="score"``); also returns the
        samples (``pushed``: logits, delta, x^) for the reward term."""
        if self.kl_weighting == "dmd":
            captured = {}
            generate = self.generate

            def keep(*args, **kwargs):  # the first call draws the samples the map is pushed on (critic steps draw more)
                result = generate(*args, **kwargs)
                captured.setdefault("pushed", result)
                return result

            self.generate = keep
            try:
                out = super().distribution_loss(model, n, length, device, data)
            finally:
                del self.generate
            out["pushed"] = captured["pushed"]
            return out
        teacher = self.teacher(model, device)
        critic = model.critic()
        logits, delta, sample = self.generate(model, n, length, device)
        out = {}
        if torch.is_grad_enabled() and model.training:
            out.update(model.train_critic(sample, data))
        t = self.noise_times(model, n, device)
        with torch.no_grad():
            xt = self.noised(model, sample, t)
            real = teacher.head.denoise(teacher.logits(xt, t, t)).float()
            fake = critic.head.denoise(critic.logits(xt, t, t)).float()
            sigma = getattr(model.path, "sigma", 1.0)
            weight = (t**2 / ((1 - t).clamp_min(1e-3) * sigma) ** 2).reshape(-1, 1, 1)  # (n, 1, 1)
            step = weight * (fake - real)  # grad_x^ KL(p^theta_t || p^1_t) per sample
        pushed = delta if self.gradient_through == "probs" else logits
        per_sample = 0.5 * (pushed - (pushed - step).detach()).pow(2).sum(dim=(1, 2))  # gradient = step
        out["dmd"] = (self.band_weights[self.band_of(n, device)] * per_sample).mean()
        out["dmd_gap"] = (fake - real).abs().sum(-1).mean()
        out["pushed"] = (logits, delta, sample)
        return out


def training_reward_evaluations(model) -> int:
    """Reward evaluations a model fine-tuned with the ``reward`` objective used in training: its steps (training
    metadata) x :meth:`RewardFineTuning.evaluations_per_step` of its data's batch size; 0 for another objective."""
    if not isinstance(model.objective, RewardFineTuning):
        return 0
    steps = int(((model.hub_metadata or {}).get("training") or {}).get("global_step", 0))
    batch = int(((model.data_spec or {}).get("init_args") or {}).get("batch_size", 0))
    return steps * model.objective.evaluations_per_step(batch)
