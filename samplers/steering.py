"""Reward steering of a sampler through the flow map's lookahead X_{t,1}(x_t) (see docs/rewards.md).

Gradient steering:   x_{t_{i+1}} <- X_{t_i,t_{i+1}}(x_{t_i}) + eta_i g_i,   g_i = grad_{x_{t_i}} r(X_{t_i,1}(x_{t_i}))
(optionally normalised per sample), with eta_i from a schedule. ``tilt`` (the first-order tilted flow on the
linear path) is eta_i = eta sigma^2 (t_{i+1}-t_i) (1-t_i) / max(t_i, t_{i+1}-t_i): the tilted law
rho_r ∝ e^{lambda r} rho_1 has the velocity b_t + (1-t) sigma^2 / t grad log h_t with h_t(x) = E[e^{lambda r(x_1)} | x_t = x],
and the lookahead approximates grad log h_t by lambda grad r(X_{t,1}(x)), so eta = lambda.

Particles: K particles per sample, resampled (multinomial, within each sample's group) by the incremental twist
exp(lambda (r(X_{t_i,1}(x_{t_i})) - r_prev)) before every step and by exp(lambda (r(x_1) - r_prev)) at the end
(twisted SMC: the product telescopes to exp(lambda r(x_1)), so K -> infinity targets rho_r). Needs only reward
values, so it accepts non-differentiable rewards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowzoo import registry
from flowzoo.prompt import held
from flowzoo.rewards import Reward
from flowzoo.samplers.base import SampleOutput
from flowzoo.state import DenseState
from flowzoo.validation import check_choice

SCHEDULES = ("constant", "linear", "tilt")


@dataclass
class Lookahead:
    """r(X_{s,1}(x)) (B,), its gradient in x (B, L, V) where asked, and the prediction at (s, 1) (B, L, V)."""

    reward: torch.Tensor
    grad: torch.Tensor | None
    prediction: torch.Tensor


class Steering:
    """The steering options of a sampler: a bound ``reward``, gradient ``guidance`` eta (None: no gradient steering;
    0.0 runs the gradient machinery with eta = 0, which changes nothing), its ``schedule``, ``normalize`` (each
    sample's gradient scaled to unit RMS norm per position), ``particles`` K and ``tilt`` lambda for resampling."""

    def __init__(self, reward, guidance: float | None = None, schedule: str = "constant", normalize: bool = False,
                 particles: int = 1, tilt: float = 1.0, who: str = "sampler") -> None:
        self.who = who
        if reward is None:
            raise ValueError(f"{who}: guidance and particles steer towards a reward; give one (reward=token_count, "
                             f"or --reward NAME on the command line)")
        self.reward: Reward = registry.build("reward", reward)
        if guidance is not None:
            guidance = float(guidance)
            if guidance < 0:
                raise ValueError(f"{who}: guidance must be non-negative, got {guidance}")
            self.reward.require_gradient(f"gradient steering ({who} guidance={guidance})")
        check_choice(schedule, SCHEDULES, "guidance_schedule", where=who)
        if int(particles) != particles or particles < 1:
            raise ValueError(f"{who}: particles must be a positive integer, got {particles}")
        self.guidance, self.schedule, self.normalize = guidance, schedule, bool(normalize)
        self.particles, self.tilt = int(particles), float(tilt)
        self.evaluations = 0  # reward evaluations of the current sample() call

    @classmethod
    def from_options(cls, reward, guidance, schedule, normalize, particles, tilt, who) -> "Steering | None":
        """A Steering when any steering is asked for (a guidance, or more than one particle), else None; a reward
        without either is refused (it would change nothing)."""
        if guidance is None and particles == 1:
            if reward is not None:
                raise ValueError(f"{who}: a reward steers nothing without guidance=ETA or particles=K > 1")
            return None
        return cls(reward, guidance, schedule, normalize, particles, tilt, who)

    def start(self, model, num_samples: int, prompt=None) -> int:
        """Bind to ``model`` for one sample() call and return its row count: K particles per sample, in consecutive
        rows. Particles with a prompt are refused (their rows would not line up with the prompt's)."""
        if prompt is not None and self.particles > 1:
            raise ValueError(f"{self.who}: particle steering with a prompt is not supported; steer by gradient (guidance) or drop the prompt")
        self.bind(model)
        return num_samples * self.particles

    def finish(self, tokens, prediction, nfe: int, previous, generator=None) -> SampleOutput:
        """The SampleOutput of a steered run: every final sample scored, and with particles one of each sample's K
        chosen by exp(lambda (r(x_1) - r_prev))."""
        final = self.reward(tokens)
        self.evaluations += tokens.shape[0]
        if self.particles > 1:
            index = self.select(self.tilt * (final - previous), generator)
            tokens, prediction, final = tokens[index], None if prediction is None else prediction[index], final[index]
        return SampleOutput(tokens, nfe=nfe, prediction=prediction, reward_evaluations=self.evaluations, reward=final)

    @property
    def gradient(self) -> bool:
        return self.guidance is not None

    def bind(self, model) -> None:
        """Bind the reward to the model's vocabulary if the caller did not (words need the caller's vocabulary)."""
        if self.reward.vocab_size is None:
            self.reward.bind(model.vocab_size)
        elif self.reward.vocab_size != model.vocab_size:
            raise ValueError(f"the reward is bound to {self.reward.vocab_size} tokens, the model has {model.vocab_size}")
        self.reward.resolve(model)  # a judge's or classifier's network, loaded once
        self.evaluations = 0

    def eta(self, path, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eta_i (B,) for the step s = t_i -> t = t_{i+1}."""
        eta = torch.full_like(s, self.guidance)
        if self.schedule == "linear":
            return eta * (1 - s)
        if self.schedule == "tilt":
            sigma2 = getattr(path, "sigma", 1.0) ** 2
            return eta * sigma2 * (t - s) * (1 - s) / torch.maximum(s, t - s)
        return eta

    def lookahead(self, state, x: torch.Tensor, s: torch.Tensor, gradient: bool) -> Lookahead:
        """r(X_{s,1}(x)) from one evaluation of the map at (s, 1), with grad_x when ``gradient``."""
        path = state.model.path
        one = torch.ones_like(s)
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(gradient)
            prediction = state.predict(leaf, one, s)  # delta_{s,1}(x) (B, L, V)
            end = path.flow_map(leaf, prediction, s, one)  # X_{s,1}(x): on the linear path, delta_{s,1}(x) itself
            reward = self.reward(end.float())
            grad = torch.autograd.grad(reward.sum(), leaf)[0] if gradient else None
        self.evaluations += x.shape[0]
        return Lookahead(reward.detach(), grad, prediction.detach())

    def guide(self, x: torch.Tensor, look: Lookahead, eta: torch.Tensor) -> torch.Tensor:
        """x + eta g, g the lookahead gradient (normalised to unit RMS norm per position when ``normalize``)."""
        g = look.grad.to(x.dtype)
        if self.normalize:
            norm = g.flatten(1).norm(dim=1) / g.shape[1] ** 0.5  # (B,) RMS over positions
            g = g / norm.clamp_min(1e-12).reshape(-1, 1, 1)
        return x + eta.reshape(-1, 1, 1).to(x.dtype) * g

    def resample(self, log_weight: torch.Tensor, generator=None) -> torch.Tensor:
        """Indices (B K,) of particles drawn within each group of K with probabilities ∝ exp(log_weight) (B K,)."""
        K = self.particles
        logits = log_weight.double().view(-1, K)
        probs = torch.softmax(logits, dim=1)
        pick = torch.multinomial(probs, K, replacement=True, generator=generator)  # (B, K)
        return (pick + torch.arange(0, logits.shape[0] * K, K, device=pick.device)[:, None]).reshape(-1)

    def select(self, log_weight: torch.Tensor, generator=None) -> torch.Tensor:
        """One particle per group (B,), drawn ∝ exp(log_weight)."""
        K = self.particles
        probs = torch.softmax(log_weight.double().view(-1, K), dim=1)
        pick = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return pick + torch.arange(0, probs.shape[0] * K, K, device=pick.device)


class SteerableSampling:
    """What a continuous sampler that can be steered (``euler``, ``flow_map``) does before and after its loop: the
    rows and the starting state (K particles per sample where steered; the dense state then, else the sampler's
    ``state``; a prompt's known positions held) and the output (a steered run's final reward and particle choice).
    Mixed in before ``flowzoo.state.EmbeddedSampling``, whose ``state`` it uses."""

    steering: "Steering | None"

    def set_steering(self, who: str, fused, reward, guidance, schedule, normalize, particles, tilt) -> None:
        self.steering = Steering.from_options(reward, guidance, schedule, normalize, particles, tilt, who)
        if self.steering is not None and fused:
            raise ValueError(f"{who}: steering runs on the dense state (it needs grad_x); set fused=false or leave it unset")

    def begin(self, model, num_samples: int, length: int, generator=None, prompt=None, noise=None):
        """(rows, state, x_0): the row count (K per sample when steered, consecutive), the state carrying the
        sample (dense (B, L, V) or embedded (B, L, D): the one place the kernels are chosen; steering: dense), and
        its prior draw (B, L, V) or (B, L, D). ``noise``: a prior draw x_0 (num_samples, length, V) to start from
        instead (the dense state; not with a prompt, steering or fused=true), e.g. to pair samples with their noise."""
        if noise is not None:
            return num_samples, DenseState(model), self.given_prior(model, noise, num_samples, length, prompt)
        steer = self.steering
        if steer is not None:
            num_samples = steer.start(model, num_samples, prompt)
        state = held(self.state(model) if steer is None else DenseState(model), prompt)
        return num_samples, state, state.prior(num_samples, length, generator)

    def given_prior(self, model, noise: torch.Tensor, num_samples: int, length: int, prompt=None) -> torch.Tensor:
        """``noise`` checked as the prior draw x_0 (num_samples, length, V) of a dense, unsteered, unprompted run."""
        if prompt is not None or self.steering is not None or self.fused is True:
            raise ValueError("a given prior draw (noise=) starts a plain run on the dense state: not with a prompt, "
                             "steering or fused=true")
        expected = (num_samples, length, model.vocab_size)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must be the prior draw x_0 of shape (num_samples, length, V) = {expected}, got {tuple(noise.shape)}")
        return noise.to(model.device)

    def end(self, tokens, prediction, nfe: int, previous, generator=None) -> SampleOutput:
        """The sample's output; a steered one's scored, with one particle of each sample's K chosen."""
        if self.steering is None:
            return SampleOutput(tokens, nfe=nfe, prediction=prediction)
        return self.steering.finish(tokens, prediction, nfe, previous, generator)
