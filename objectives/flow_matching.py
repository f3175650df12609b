"""Flow matching in denoiser form: the head's loss at random times."""

from __future__ import annotations

from flowzoo.objectives.base import Objective
from flowzoo.registry import register
from flowzoo.state import FusedSwitch, check_switch, hidden, lm_cross_entropy, noise_seed, noisy_state_embedding
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times


@register("objective", "flow_matching")
class FlowMatching(FusedSwitch, Objective):
    """E_{t, x0, x1} [ loss_head(D_t(x_t), x1) ] per token; with the categorical head this is
    the cross-entropy L_CE = -E sum_l log D_t(x_t)^l . x1^l, with the Gaussian head the MSE.

    ``fused`` (None: automatic) computes it with flowzoo.kernels on the linear path and categorical head:
    x_t W_in^T by noisy_embedding (x_t never built) and the CE by linear_cross_entropy (no logits tensor).
    """

    needs_linear_path = True

    def __init__(self, time_sampling: str = "uniform", fused: bool | None = None) -> None:
        super().__init__()
        if time_sampling not in TIME_SAMPLERS:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; choices: {', '.join(TIME_SAMPLERS)}")
        self.time_sampling = time_sampling
        self.fused = check_switch(fused)

    def incompatibility(self, parts):
        if parts["path"].state != "continuous":
            return "path", "flow matching needs a continuous path on the simplex"
        return self.fused_incompatibility(parts)

    def forward(self, model, x1):
        u = sample_uniform_times(x1.shape[0], self.time_sampling, device=x1.device)
        t = model.path.time_from_uniform(u)
        if self.use_fused(model):
            e = noisy_state_embedding(model, x1, t, noise_seed())  # x_t W_in^T (B, L, D)
            return {"loss": lm_cross_entropy(model, hidden(model, e, t, embedded=True), x1).mean()}
        xt = model.path.sample(x1, t, model.vocab_size)  # (B, L, V)
        logits = model.logits(xt, t)
        loss = model.head.loss(logits, x1).mean()
        return {"loss": loss}
