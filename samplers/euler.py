"""Euler integration of the probability-flow ODE."""

from __future__ import annotations

import torch

from flowzoo.progress import progress
from flowzoo.registry import register
from flowzoo.samplers.base import Sampler, check_decode
from flowzoo.samplers.churn import check_gamma, check_rate, gamma_from_rate, renoise
from flowzoo.samplers.steering import SteerableSampling
from flowzoo.state import EmbeddedSampling, self_conditioned
from flowzoo.validation import check_choice


GRIDS = ("linspace", "uniform")


@register("sampler", "euler")
class EulerSampler(SteerableSampling, EmbeddedSampling, Sampler):
    """Euler ODE: x <- x + (t_{i+1} - t_i) b_{t_i}(x) from t = 0, then decode from D at the last time (steps = NFE).

    On the linear path an Euler step is the flow map on the diagonal, x <- a x + b D_t(x) with
    (a, b) = ((1-t')/(1-t), (t'-t)/(1-t)); ``fused`` (None: automatic, on CUDA) then carries x as its input
    embedding (B, L, D) with flowzoo.kernels (``flowzoo.state.EmbeddedState``).

    ``grid`` says where the ``steps`` evaluations are, in the path's uniform time u: ``linspace`` (the default)
    u_i = i t_max / (steps - 1), i = 0 .. steps - 1, so steps - 1 Euler steps reach t_max (0.999) and D is decoded
    there; ``uniform`` (FLM's) u_i = i / steps, i = 0 .. steps - 1, steps Euler steps of 1/steps, the last landing
    at t = 1, where the linear path's state is D_{t_{steps-1}}, which is decoded (so the same tokens as FLM's argmax
    of x_1).

    A self-conditioning backbone reads the previous evaluation's D (none at the first): D_{t_i}(x | D_{t_{i-1}});
    ``self_condition=False`` reads it with D^ = 0 at every step instead (what one-pass readers of it see: a flow
    map distilled from it, ``distill`` without ``teacher_self_condition``).

    ``gamma`` > 0 makes it stochastic (churn, ``flowzoo.samplers.churn``; DDIM's eta on this path): after each
    step the state at t_{i+1} is rewritten as (1-t) sigma (sqrt(1-gamma^2) eps_hat + gamma z) + t D_{t_i}, a share
    gamma of the noise it implies given D_{t_i} swapped for fresh noise z. gamma = 0 (the default) is the ODE.
    gamma is per step, so its effect grows with the step count; ``churn_rate`` lambda > 0 sets it from the step's
    length du in uniform time instead, gamma = sqrt(1 - exp(-2 lambda du)), so the implied noise keeps
    exp(-lambda Delta u) of itself over any stretch Delta u whatever ``steps`` is (lambda = 6 is gamma = 0.3 at 128
    steps; set one of the two).

    Reward steering with a flow map's lookahead (``flowzoo.samplers.steering``, dense state; the model must be a
    flow map, whose prediction at (t, 1) is X_{t,1}): ``guidance`` adds eta_i grad_x r(X_{t_i,1}(x)) to every Euler
    step, ``particles`` K > 1 resamples by exp(``tilt`` (r(X_{t_i,1}) - r_prev)); one extra evaluation per step.
    """

    passes_self_condition = True  # a self-conditioning backbone gets the last D (dense state)

    def __init__(self, steps: int = 128, decode: str = "argmax", temperature: float = 1.0, fused: bool | None = None,
                 reward: dict | str | None = None, guidance: float | None = None, guidance_schedule: str = "constant",
                 normalize: bool = False, particles: int = 1, tilt: float = 1.0, grid: str = "linspace",
                 gamma: float = 0.0, churn_rate: float = 0.0, self_condition: bool = True) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        check_choice(grid, GRIDS, "grid")
        check_gamma(gamma)
        check_rate(churn_rate)
        if gamma > 0 and churn_rate > 0:
            raise ValueError(f"set gamma (per step) or churn_rate (per unit of time), not both: got gamma={gamma}, "
                             f"churn_rate={churn_rate}")
        self.grid, self.gamma, self.churn_rate = grid, gamma, churn_rate
        self.self_condition = bool(self_condition)
        check_decode(decode, temperature)
        self.steps, self.decode, self.temperature = steps, decode, temperature
        self.set_fused(fused)
        self.set_steering("euler", fused, reward, guidance, guidance_schedule, normalize, particles, tilt)

    def incompatibility(self, parts):
        if parts["path"].state != "continuous":
            return "path", "Euler integration needs a continuous path"
        return super().incompatibility(parts)

    @property
    def renoises(self) -> bool:
        return self.gamma > 0 or self.churn_rate > 0

    def grid_span(self, path) -> tuple[int, float]:
        """The grid in the path's uniform time: n equal steps from u = 0 to ``end`` (``linspace``: steps - 1 of them
        (at least 1) to t_max; ``uniform``: steps of them to 1, the last not taken)."""
        if self.grid == "uniform":
            return self.steps, 1.0
        return max(self.steps - 1, 1), getattr(path, "t_max", 1.0)

    def schedule(self, path, device=None) -> torch.Tensor:
        """The path times of the evaluations, t_0 = 0 < t_1 < ... (``grid``); the last one is decoded, not integrated
        (``linspace``: steps of them, the last at t_max, and one more point when steps = 1; ``uniform``: steps of them,
        the last at u = (steps - 1) / steps)."""
        n, end = self.grid_span(path)
        times = path.schedule(n, end=end, device=device)
        return times[: self.steps] if self.grid == "uniform" else times

    def step_gamma(self, path) -> float:
        """The churn of one step: ``gamma``, or ``churn_rate`` over the grid's step length du = end / n in uniform
        time (:meth:`grid_span`)."""
        if self.churn_rate == 0:
            return self.gamma
        n, end = self.grid_span(path)
        return gamma_from_rate(self.churn_rate, end / n)

    @torch.no_grad()
    def sample(self, model, num_samples, length, generator=None, prompt=None):
        steer = self.steering
        num_samples, state, x = self.begin(model, num_samples, length, generator, prompt)
        times = self.schedule(model.path, device=model.device)
        nfe, previous = self.steps, torch.zeros(num_samples, device=model.device)
        conditioned, denoised = self_conditioned(model) and self.self_condition, None
        gamma = self.step_gamma(model.path)
        for i in progress(range(self.steps), desc="euler"):
            t = times[i].expand(num_samples)
            look = None
            if steer is not None and i + 1 < self.steps:
                look, nfe = steer.lookahead(state, x, t, steer.gradient), nfe + 1
                if steer.particles > 1:
                    index = steer.resample(steer.tilt * (look.reward - previous), generator)
                    x, previous = x[index], look.reward[index]
                    if conditioned and denoised is not None:
                        denoised = denoised[index]
                    look.grad = None if look.grad is None else look.grad[index]
            # D_t(x): (B, L, V), or the hidden state (B, L, D) whose head gives it; self-conditioned on the last D
            denoised = state.predict(x, t, self_cond=denoised) if conditioned else state.predict(x, t)
            if i + 1 < self.steps:
                t_next = times[i + 1].expand(num_samples)
                if gamma > 0:  # linear path (churn is refused elsewhere): the Euler step is the flow map at
                    delta = state.in_state(denoised)  # delta = D_t, built once for the step and the re-noising
                    x = renoise(state, model.path.flow_map(x, delta, t, t_next), delta, t_next, gamma, generator)
                else:
                    x = state.euler_step(x, denoised, t, t_next)
                if look is not None and steer.gradient:
                    x = steer.guide(x, look, steer.eta(model.path, t, t_next))
        tokens, prediction = state.decode(denoised, self.decode, self.temperature, generator)
        return self.end(tokens, prediction, nfe, previous, generator)
