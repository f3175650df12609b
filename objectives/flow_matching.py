"""Flow matching in denoiser form: the head's loss at random times."""

from __future__ import annotations

from flowzoo.objectives.base import Objective
from flowzoo.prompt import ConditionShare, unknown_mean
from flowzoo.registry import register
from flowzoo.state import FusedSwitch, check_switch, new_state
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times


@register("objective", "flow_matching")
class FlowMatching(ConditionShare, FusedSwitch, Objective):
    """E_{t, x0, x1} [ loss_head(D_t(x_t), x1) ] per token; with the categorical head this is
    the cross-entropy L_CE = -E sum_l log D_t(x_t)^l . x1^l, with the Gaussian head the MSE.

    ``fused`` (None: automatic) computes it on the embedded state (``flowzoo.state``) with flowzoo.kernels on the
    linear path and categorical head: x_t W_in^T by noisy_embedding (x_t never built) and the CE from the trunk's
    hidden state through the output projection (no logits tensor).

    ``condition_share`` > 0 trains for prompts (docs/conditional.md): that share of the rows knows a clean prefix
    or everything around one hole (flowzoo.prompt.condition_mask), presented at its clean one-hot as sampling's
    ``hold="clean"`` does, and the loss is the mean over the unknown positions only.
    """

    needs_linear_path = True

    def __init__(self, time_sampling: str = "uniform", fused: bool | None = None, condition_share: float = 0.0) -> None:
        super().__init__()
        self.set_condition_share(condition_share)
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
        state = new_state(model, self.use_fused(model))  # dense (B, L, V) or embedded (B, L, D): the seam
        known = self.known_positions(x1)  # (B, L), None without condition_share
        term = state.head_loss(state.noisy(x1, t, known), t, None, x1)  # loss_head(D_t(x_t), x1) per token
        state.resolve()
        return {"loss": unknown_mean(term.value, known)}
