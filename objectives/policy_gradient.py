"""KL-regularised policy-gradient fine-tuning (REINFORCE with a baseline) of AR and MDLM models: the baseline of
reward fine-tuning through the flow map (docs/rewards.md)."""

from __future__ import annotations

import torch

from flowzoo import registry
from flowzoo.objectives._teacher import FrozenTeacher
from flowzoo.objectives.base import Objective
from flowzoo.objectives.mdlm import mdlm_nelbo
from flowzoo.paths.autoregressive import AutoregressivePath
from flowzoo.paths.masked import MaskedPath
from flowzoo.registry import register
from flowzoo.validation import check_choice

BASELINES = ("leave_one_out", "mean")


@register("objective", "policy_gradient")
class PolicyGradient(FrozenTeacher, Objective):
    """KL-regularised REINFORCE: maximise J(theta) = lambda E_{x ~ p_theta}[r(x)] - KL(p_theta || p_base), whose
    maximiser is the tilted law p ∝ e^{lambda r} p_base (the ``reward`` objective's target).

    With R(x) = lambda r(x) - (log p_theta(x) - log p_base(x)), grad J = E[(R(x) - b) grad log p_theta(x)] (the score
    function identity; E[grad log p_theta] = 0 removes R's own dependence on theta and makes any baseline b unbiased):
    the loss is -mean((R - b) log p_theta(x)) with R - b held fixed, on ``num_generated`` fresh samples of the model's
    sampler (``sampler``: another spec) a step (0: the batch size), each one reward evaluation. ``baseline``:
    ``leave_one_out`` b_i = mean_{j != i} R_j (RLOO, unbiased) or ``mean`` b = mean_j R_j.

    log p_theta(x): for an AR model (autoregressive path, causal backbone) the exact sum_l log p_theta(x_l | BOS, x_<l);
    for MDLM (masked path) the NELBO is the log-likelihood surrogate, as the field does for diffusion LMs:
    log p_theta(x) >= -NELBO_theta(x) = -E_t sum_l (1/(1-t)) 1[x_t^l = MASK] (-log p_theta(x^l | x_t)), estimated with
    ``elbo_samples`` draws of (t, x_t) per sequence: the KL term's with the same draws for p_theta and p_base (common
    random numbers, so their difference has less noise), the gradient's with draws of its own (the advantage's noise
    then does not correlate with grad log p's, which would bias the step). The ratio and the KL are then estimates.
    The base model is the frozen ``teacher`` (resolved by the model, :mod:`flowzoo.teachers`); the policy starts as
    it (``init_from_teacher``) or as ``init_from``.
    """

    def __init__(self, reward: dict | str = "token_count", tilt: float = 1.0, teacher: str = "", init_from_teacher: bool = True,
                 init_from: str = "", num_generated: int = 0, baseline: str = "leave_one_out", elbo_samples: int = 4,
                 sampler: dict | str | None = None) -> None:
        super().__init__()
        self.reward = registry.build("reward", reward)  # values only: a non-differentiable reward is fine here
        if tilt < 0 or num_generated < 0 or elbo_samples < 1:
            raise ValueError(f"policy_gradient needs tilt >= 0, num_generated >= 0 and elbo_samples >= 1, got {tilt}, {num_generated}, {elbo_samples}")
        check_choice(baseline, BASELINES, "baseline")
        if baseline == "leave_one_out" and num_generated == 1:
            raise ValueError("the leave_one_out baseline needs num_generated >= 2 (or 0: the batch size)")
        self.tilt, self.num_generated, self.baseline, self.elbo_samples = float(tilt), num_generated, baseline, elbo_samples
        self.sampler = sampler
        self.init_teacher(teacher, init_from_teacher, init_from)

    def incompatibility(self, parts):
        path, backbone = parts["path"], parts.get("backbone")
        if not isinstance(path, (AutoregressivePath, MaskedPath)):
            return "path", "policy_gradient needs a sequence log-likelihood: the autoregressive path (AR) or the masked path (MDLM's NELBO)"
        if not hasattr(parts["head"], "log_probs"):
            return "head", "policy_gradient reads log-probabilities: it needs the categorical head"
        if backbone is not None and isinstance(path, AutoregressivePath) != bool(getattr(backbone, "causal", False)):
            return "backbone", "the autoregressive path needs a causal backbone, the masked path a bidirectional one"
        return None

    def bound_reward(self, model):
        if self.reward.vocab_size is None:
            self.reward.bind(model.vocab_size)
        return self.reward

    def log_likelihood(self, model, x: torch.Tensor, noise) -> torch.Tensor:
        """log p(x) (B,): exact for AR; -NELBO(x) for MDLM, averaged over the draws ``noise`` = [(t, x_t), ...]."""
        if isinstance(model.path, AutoregressivePath):
            logits = model.logits(model.path.shift_right(x, model.vocab_size), None)  # (B, L, V)
            return model.head.log_probs(logits).float().gather(-1, x[..., None]).squeeze(-1).sum(1)
        total = 0.0
        for t, xt in noise:
            log_probs = model.head.log_probs(model.logits(xt, t)).float()  # (B, L, V)
            total = total - mdlm_nelbo(log_probs, x, xt, t, model.path).sum(1)
        return total / len(noise)

    def draw_noise(self, model, x: torch.Tensor) -> list:
        """``elbo_samples`` draws (t, x_t) of the masked path for each sequence (none for AR)."""
        if isinstance(model.path, AutoregressivePath):
            return []
        draws = []
        for _ in range(self.elbo_samples):
            t = torch.rand(x.shape[0], device=x.device) * model.path.t_max
            draws.append((t, model.path.sample(x, t, model.vocab_size)))
        return draws

    def advantages(self, R: torch.Tensor) -> torch.Tensor:
        """R - b (B,) with the chosen baseline."""
        n = R.shape[0]
        if self.baseline == "mean" or n < 2:
            return R - R.mean()
        return R - (R.sum() - R) / (n - 1)

    def forward(self, model, x1):
        base = self.teacher(model, x1.device)
        reward = self.bound_reward(model)
        n = self.num_generated or x1.shape[0]
        x = model.generate(n, x1.shape[1], sampler=self.sampler).tokens  # (n, L): samples of the current policy
        log_p = self.log_likelihood(model, x, self.draw_noise(model, x))  # (n,), differentiable in theta
        with torch.no_grad():
            r = reward(x).float()  # (n,): n reward evaluations
            noise = self.draw_noise(model, x)  # MDLM: draws of their own, so R's noise is independent of grad log p's
            mine = log_p.detach() if not noise else self.log_likelihood(model, x, noise)
            kl = mine - self.log_likelihood(base, x, noise)  # log p_theta(x) - log p_base(x), common draws
            advantage = self.advantages(self.tilt * r - kl)
        loss = -(advantage * log_p).mean()
        return {"loss": loss, "reward": r.mean(), "kl": kl.mean(), "log_likelihood": log_p.detach().mean()}
