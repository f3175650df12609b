"""Best-of-N: the reward baseline that needs only values, from any model's sampler (flow map, flow, MDLM, AR)."""

from __future__ import annotations

import torch

from flowzoo import registry
from flowzoo.samplers.base import SampleOutput
from flowzoo.sampling import batch_seed


@torch.no_grad()
def best_of_n(model, reward, n: int, num_samples: int, length: int, sampler=None, seed: int | None = None,
              tilt: float | None = None, batch_size: int | None = None) -> SampleOutput:
    """``num_samples`` sequences, each the best of ``n`` draws of ``model``'s sampler by ``reward`` (values only).

    ``tilt`` lambda instead draws one of the n ∝ exp(lambda r) (sampling-importance-resampling: as n grows its law
    tends to rho_r ∝ e^{lambda r} rho_1). ``reward`` is a bound Reward (or a spec, bound to the model's size);
    ``batch_size`` splits the num_samples * n draws (batch k seeded ``batch_seed(seed, k)``: two seeds share no draw). Returns the chosen tokens, the
    NFE per draw, ``reward_evaluations`` = num_samples * n and their rewards.
    """
    if n < 1:
        raise ValueError(f"best-of-N needs n >= 1, got {n}")
    reward = registry.build("reward", reward)
    if reward.vocab_size is None:
        reward.bind(model.vocab_size)
    reward.resolve(model)  # a judge's or classifier's network, loaded once
    total = num_samples * n
    size = batch_size or total
    draws, nfe = [], 0
    for k, start in enumerate(range(0, total, size)):
        out = model.generate(min(size, total - start), length, sampler=sampler,
                             seed=None if seed is None else batch_seed(seed, k))
        draws.append(out.tokens)
        nfe = out.nfe
    tokens = torch.cat(draws)  # (num_samples n, L): sample b's draws are rows b n ... b n + n - 1
    values = reward(tokens).float().view(num_samples, n)
    if tilt is None:
        pick = values.argmax(1)
    else:
        generator = None if seed is None else torch.Generator(device=values.device).manual_seed(seed)
        pick = torch.multinomial(torch.softmax(tilt * values.double(), 1), 1, generator=generator)[:, 0]
    rows = pick + torch.arange(num_samples, device=pick.device) * n
    return SampleOutput(tokens[rows], nfe=nfe, reward_evaluations=total, reward=values.flatten()[rows])
