"""Shared pieces of the flow-map objectives: (s, t) pair sampling, the batch split, loss weights, the
Lagrangian residual and the :class:`FlowMapObjective` base.

The network conditioned on (s, t) predicts the mean denoiser delta_{s,t}(x) (on the simplex for the
categorical head; delta_{t,t} = D_t on the diagonal); the map itself, X_{s,t}(x) = path.flow_map(x,
delta, s, t), and its weights (``path.map_weights``, ``path.semigroup_weight``) belong to the path
(:class:`flowzoo.paths.base.ProbabilityPath`), which samplers call too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowzoo.backbones.base import plain_attention
from flowzoo.objectives.base import Objective
from flowzoo.objectives.flow_map_config import FlowMapConfig, nest_flat_args
from flowzoo.paths.base import expand_time
from flowzoo.prompt import ConditionShare, KnownRows, unknown_mean
from flowzoo.state import FusedSwitch, LossTerm, new_state
from flowzoo.timesampling import TIME_SAMPLERS, sample_uniform_times
from flowzoo.validation import check_choice

PAIR_SAMPLINGS = ("fmlm", "uniform")
MIDPOINTS = ("middle", "random")


@dataclass
class Pairs:
    """Source and target path times (B,) for the off-diagonal samples, and the uniform times they came from."""

    s: torch.Tensor
    t: torch.Tensor
    us: torch.Tensor
    ut: torch.Tensor


def sample_pairs(path, n: int, how: str = "fmlm", boundary: float = 1 / 32, device=None, generator=None) -> Pairs:
    """n pairs s <= t, drawn in the path's uniform time u and mapped with ``path.time_from_uniform``.

    ``fmlm``: gap d ~ U[0, 1], start u_s = U (1 - d), u_t = u_s + d (FMLM); ``uniform``: the sorted pair
    of two uniforms. A share ``boundary`` of the pairs is forced to (0, 1), the one-step jump.
    """
    check_choice(how, PAIR_SAMPLINGS, "pair sampling")
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(f"boundary share must lie in [0, 1], got {boundary}")
    r = torch.rand(3, n, device=device, generator=generator)
    if how == "fmlm":
        d = r[0]
        us = r[1] * (1 - d)
        ut = (us + d).clamp(max=1.0)
    else:
        us, ut = torch.minimum(r[0], r[1]), torch.maximum(r[0], r[1])
    edge = r[2] < boundary
    us = torch.where(edge, torch.zeros_like(us), us)
    ut = torch.where(edge, torch.ones_like(ut), ut)
    return Pairs(path.time_from_uniform(us), path.time_from_uniform(ut), us, ut)


def sample_middle(path, pairs: Pairs, how: str = "middle", generator=None) -> torch.Tensor:
    """An intermediate path time u in [s, t]: the midpoint in uniform time (FMLM), or uniform in between."""
    check_choice(how, MIDPOINTS, "midpoint")
    if how == "middle":
        w = torch.full_like(pairs.us, 0.5)
    else:
        w = torch.rand(pairs.us.shape, device=pairs.us.device, generator=generator)
    um = pairs.us + w * (pairs.ut - pairs.us)
    return path.time_from_uniform(um).clamp(min=pairs.s, max=pairs.t)


def split_batch(batch: int, diagonal_share: float) -> int:
    """How many of ``batch`` sequences go to the diagonal loss (at least one to each side when possible)."""
    if not 0.0 <= diagonal_share <= 1.0:
        raise ValueError(f"diagonal_share must lie in [0, 1], got {diagonal_share}")
    n = int(round(batch * diagonal_share))
    if batch >= 2 and 0.0 < diagonal_share < 1.0:
        n = min(max(n, 1), batch - 1)
    return n


def check_flow_map_parts(parts) -> tuple[str, str] | None:
    """(kind, reason) when the path cannot carry a flow map (``path.flow_map_refusal``); None when it can."""
    reason = parts["path"].flow_map_refusal()
    return ("path", reason) if reason else None


def one_step_logits(model, x0: torch.Tensor) -> torch.Tensor:
    """delta_{0,1}(x0)'s logits (n, L, V): the one-step map read from the prior draws x0 (n, L, V)."""
    one = torch.ones(x0.shape[0], device=x0.device)
    return model.logits(x0, one, torch.zeros_like(one))


def weighted_mean(per_token: torch.Tensor, weight: torch.Tensor | None = None, known: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a (B, L) loss, optionally weighted per sequence (B,), over the positions not ``known`` (B, L)."""
    if per_token.numel() == 0:
        return per_token.new_zeros(())
    return unknown_mean(per_token, known, weight)


def adaptive_weight(sq_error: torch.Tensor, c: float = 1e-3, known: torch.Tensor | None = None) -> torch.Tensor:
    """Detached per-sequence weight (||q - p||^2 + c)^(-1/2) (Discrete Flow Maps), normalised to mean 1; the
    squared error (B, L) is averaged over the positions not ``known`` (B, L) of each sequence."""
    sq_error = sq_error.detach()
    if known is None:
        mean = sq_error.mean(dim=tuple(range(1, sq_error.dim())))
    else:
        unknown = (~known).to(sq_error.dtype)
        mean = (sq_error * unknown).sum(1) / unknown.sum(1).clamp_min(1.0)
    w = (mean + c).rsqrt()
    return w / w.mean().clamp_min(1e-12)


class FlowMapObjective(ConditionShare, FusedSwitch, Objective):
    """Diagonal (flow-matching / anchor) loss on a share of the batch plus a map loss on the rest.

    ``condition_share`` > 0 trains for prompts (docs/conditional.md): that share of the rows knows a clean prefix
    or everything around one hole (flowzoo.prompt.condition_mask); the known positions are held at their clean
    point at x_t, x_s and every state the student or a target (teacher, semigroup pieces, landing points) reads
    (:class:`~flowzoo.prompt.KnownRows`), and every loss is averaged over the unknown positions only.

    One body for both states (``flowzoo.state``): on the dense state (B, L, V) every loss is computed as it is
    reached; on the embedded state (``fused``; linear path, categorical head) x_t and x_s enter as one
    embedding (B, L, D) of the whole batch and every loss goes through one output projection (one W_in and one
    W_out gradient). Subclasses implement :meth:`map_loss` and may override :meth:`map_times` (extra times drawn
    after the pairs) and :meth:`diagonal_target` (the data, or a teacher's D_t).
    """

    needs_linear_path = True

    def __init__(self, flow_map: FlowMapConfig = FlowMapConfig(), condition_share: float = 0.0) -> None:
        super().__init__()
        self.set_condition_share(condition_share)
        self.flow_map_config = flow_map = FlowMapConfig.of(flow_map)
        diagonal_share, pair_sampling, boundary = flow_map.diagonal_share, flow_map.pair_sampling, flow_map.boundary
        time_sampling, map_weight = flow_map.time_sampling, flow_map.map_weight
        split_batch(2, diagonal_share)
        check_choice(pair_sampling, PAIR_SAMPLINGS, "pair_sampling")
        if not 0.0 <= boundary <= 1.0:
            raise ValueError(f"boundary must lie in [0, 1], got {boundary}")
        check_choice(time_sampling, TIME_SAMPLERS, "time_sampling")
        if map_weight < 0:
            raise ValueError(f"map_weight must be non-negative, got {map_weight}")
        self.diagonal_share, self.pair_sampling, self.boundary = diagonal_share, pair_sampling, boundary
        self.time_sampling, self.map_weight = time_sampling, map_weight

    @classmethod
    def upgrade_args(cls, args: dict) -> dict:
        """A saved spec's constructor arguments: the flat ``boundary``, ``diagonal_share``, ... of earlier versions go
        under ``flow_map`` (registry.build calls this)."""
        return nest_flat_args(args)

    def incompatibility(self, parts):
        return check_flow_map_parts(parts) or self.fused_incompatibility(parts)

    def diagonal_target(self, model, xt, t: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """What delta_{t,t}(x_t) = D_t(x_t) is fitted to: the clean ids (flow matching)."""
        return x1

    def diagonal_times(self, n: int, model, device) -> torch.Tensor:
        return model.path.time_from_uniform(sample_uniform_times(n, self.time_sampling, device=device))

    def diagonal_loss(self, model, state, xt, t: torch.Tensor, x1: torch.Tensor) -> LossTerm:
        """loss_head(delta_{t,t}(x_t), target) per token: the cross-entropy L_CE (or MSE for the Gaussian head)."""
        return state.head_loss(xt, t, t, self.diagonal_target(model, xt, t, x1))

    def map_loss(self, model, state, xs, pairs: Pairs, extra, x1: torch.Tensor, known: KnownRows):
        """The map loss of the off-diagonal rows x_s (registered with ``state.noisy``; ``state.value(xs)`` is the
        tensor): returns finish() -> the logged dict with "map", called once the state has resolved its losses.
        ``known``: the rows' known positions; every state a network reads goes through ``known.hold`` and the
        losses are averaged with ``known.mean`` (both plain without ``condition_share``)."""
        raise NotImplementedError

    def map_times(self, model, pairs: Pairs):
        """Extra times the map loss draws after the pairs and before x_s (psd: the midpoint u); None by default."""
        return None

    def state(self, model):
        """The training state of this batch (the seam): embedded when :meth:`use_fused`, dense otherwise."""
        return new_state(model, self.use_fused(model))

    def forward(self, model, x1):
        """Draws in this order: diagonal times, x_t, (the diagonal loss), pairs, :meth:`map_times`, x_s, (the map
        loss); on the embedded state x_t and x_s are embedded together after the last time (one seed). With
        ``condition_share`` the known positions are drawn first, for the whole batch."""
        state = self.state(model)
        B, device = x1.shape[0], x1.device
        n = split_batch(B, self.diagonal_share)
        known = self.known_positions(x1)  # (B, L), None without condition_share
        diag_known, map_known = (None, None) if known is None else (known[:n], known[n:])
        diag = finish = None
        if n:
            t = self.diagonal_times(n, model, device)
            diag = self.diagonal_loss(model, state, state.noisy(x1[:n], t, diag_known), t, x1[:n])
        if n < B:
            pairs = self.pairs(model, B - n, device)
            extra = self.map_times(model, pairs)
            xs = state.noisy(x1[n:], pairs.s, map_known)
            finish = self.map_loss(model, state, xs, pairs, extra, x1[n:], KnownRows(state, x1[n:], map_known))
        state.resolve()
        diag = unknown_mean(diag.value, diag_known) if diag is not None else torch.zeros((), device=device)
        return self.combine(diag, finish() if finish is not None else None, n, B)

    def combine(self, diag: torch.Tensor, found: dict | None, n_diag: int, batch: int) -> dict[str, torch.Tensor]:
        out = {"diag": diag.detach()}
        if found is None:
            out["loss"] = diag
            return out
        out.update({k: v.detach() for k, v in found.items()})
        out["loss"] = (n_diag * diag + self.map_weight * (batch - n_diag) * found["map"]) / batch
        return out

    def pairs(self, model, n: int, device) -> Pairs:
        return sample_pairs(model.path, n, self.pair_sampling, self.boundary, device=device)


def lagrangian_residual(model, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, velocity_model=None,
                        stop_tangent: bool = False, hold=None) -> torch.Tensor:
    """The Lagrangian residual of the map at (s, t), with d/dt by forward-mode AD (tangent on t only).

    Mean-denoiser paths: (1-t) [d/dt X_{s,t}(x) - sg b_t(X)] = delta + (1-t)((t-s)/(1-s)) d/dt delta + X - X
    rewritten as (1-t) dX/dt + X - sg D_t(X), finite at t = 1; other paths: dX/dt - sg b_t(X).
    The target velocity comes from ``velocity_model`` (a teacher) or, by default, the model's diagonal.
    ``stop_tangent``: the time-derivative term is a constant (MeanFlow-style), delta + kappa sg[d/dt delta] - sg D
    (other paths: v + (t-s) sg[d/dt v] - sg b_t(X), X = x + (t-s) v); the jvp then runs without autograd.
    ``hold`` (a prompt's known positions in training, flowzoo.prompt.KnownRows.hold): the landing point X enters
    the target network with the known positions at their clean point, as x does.
    """
    path = model.path
    hold = hold or _unheld
    if stop_tangent:
        return _stop_tangent_residual(model, x, s, t, velocity_model, hold)

    def the_map(tt):
        delta = model.head.denoise(model.logits(x, tt, s))
        return path.flow_map(x, delta, s, tt)

    with plain_attention(), torch.autocast(device_type=x.device.type, enabled=False):
        X, dX = torch.func.jvp(the_map, (t,), (torch.ones_like(t),))
    teacher = model if velocity_model is None else velocity_model
    with torch.no_grad():
        Xd = hold(X.detach())
        D = teacher.head.denoise(teacher.logits(Xd, t, t))  # D_t(X), (B, L, V)
    if path.mean_denoiser:
        return expand_time(1 - t) * dX + X - D
    return dX - path.velocity(Xd, D, t)


def _unheld(x: torch.Tensor) -> torch.Tensor:
    """No known positions: the state as it is."""
    return x


def _stop_tangent_residual(model, x, s, t, velocity_model=None, hold=_unheld) -> torch.Tensor:
    """:func:`lagrangian_residual` with ``stop_tangent``: the tangent from a jvp without autograd, the rest with it."""
    path = model.path
    mean = path.mean_denoiser

    def field(tt):  # delta_{s,t}(x) on mean-denoiser paths, the average velocity v_{s,t}(x) otherwise
        prediction = model.head.denoise(model.logits(x, tt, s))
        return prediction if mean else path.velocity(x, prediction, s)

    with torch.no_grad(), plain_attention(), torch.autocast(device_type=x.device.type, enabled=False):
        _, tangent = torch.func.jvp(field, (t,), (torch.ones_like(t),))
    value = field(t)  # with gradient, (B, L, V)
    teacher = model if velocity_model is None else velocity_model
    if mean:  # (1-t) dX/dt + X with dX/dt = a' x + b' delta + b sg[d/dt delta], X = a x + b delta
        (a, b), (da, db) = torch.func.jvp(lambda tt: path.map_weights(s, tt), (t,), (torch.ones_like(t),))
        X = expand_time(a) * x + expand_time(b) * value
        with torch.no_grad():
            D = teacher.head.denoise(teacher.logits(hold(X), t, t))  # D_t(X)
        dX = expand_time(da) * x + expand_time(db) * value + expand_time(b) * tangent
        return expand_time(1 - t) * dX + X - D
    X = x + expand_time(t - s) * value
    with torch.no_grad():
        Xd = hold(X.detach())
        target = path.velocity(Xd, teacher.head.denoise(teacher.logits(Xd, t, t)), t)  # b_t(X)
    return value + expand_time(t - s) * tangent - target
