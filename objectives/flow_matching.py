"""Flow matching in denoiser form: the head's loss at random times."""

from __future__ import annotations

from flowzoo.objectives.base import Objective
from flowzoo.registry import register
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times


@register("objective", "flow_matching")
class FlowMatching(Objective):
    """E_{t, x0, x1} [ loss_head(D_t(x_t), x1) ] per token; with the categorical head this is
    the cross-entropy L_CE = -E sum_l log D_t(x_t)^l . x1^l, with the Gaussian head the MSE."""

    def __init__(self, time_sampling: str = "uniform") -> None:
        super().__init__()
        if time_sampling not in TIME_SAMPLERS:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; choices: {', '.join(TIME_SAMPLERS)}")
        self.time_sampling = time_sampling

    def incompatibility(self, parts):
        if parts["path"].state != "continuous":
            return "path", "flow matching needs a continuous path on the simplex"
        return None

    def forward(self, model, x1):
        u = sample_uniform_times(x1.shape[0], self.time_sampling, device=x1.device)
        t = model.path.time_from_uniform(u)
        xt = model.path.sample(x1, t, model.vocab_size)  # (B, L, V)
        logits = model.logits(xt, t)
        loss = model.head.loss(logits, x1).mean()
        return {"loss": loss}
