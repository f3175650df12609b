"""The LightningModule composed from (backbone, path, head, objective, sampler)."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import lightning as L
import torch

import flowzoo
from flowzoo import registry, teachers
from flowzoo.backbones.base import Backbone
from flowzoo.checkpoints.hub_mixin import FlowzooHubMixin
from flowzoo.heads.base import Head
from flowzoo.errors import PromptError
from flowzoo.objectives.base import Objective
from flowzoo.paths.base import ProbabilityPath
from flowzoo.prompt import Prompt, as_prompt
from flowzoo.samplers.base import SampleOutput, Sampler
from flowzoo.state import reproducible_logits
from flowzoo.validation import check_choice, check_state, check_times, check_tokens, on_host

LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, warmup: int, total: float, schedule: str, floor: float) -> float:
    """Linear warm-up to 1, then constant or cosine decay to ``floor`` at the last of ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or not total or total == float("inf") or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


DEFAULTS = {"backbone": "dit", "path": "linear", "head": "categorical", "objective": "flow_matching", "sampler": "euler"}


class FlowLM(L.LightningModule, FlowzooHubMixin):
    """A language model assembled from registered components; every method of flowzoo is one of these.

    ``denoise(x, t, s)`` is the head's prediction from the backbone conditioned on (s, t): the
    denoiser D_t when s = t (or s is None), the mean denoiser delta_{s,t} otherwise.
    ``save_pretrained``/``from_pretrained``/``push_to_hub`` come from FlowzooHubMixin (flowzoo.checkpoints).
    ``tokenizer`` is the ``tokenizers.Tokenizer`` a loaded model (or a saved one) carries, else None.
    The learning rate warms up linearly over ``warmup_steps``, then (``cosine``) decays to ``min_lr_ratio`` x lr at
    step ``lr_schedule_steps`` (default: the trainer's ``max_steps``): a run stopped at step K of a schedule
    planned for N is ``--trainer.max_steps=K --model.lr_schedule_steps=N``.
    """

    tokenizer: Any = None

    def __init__(
        self,
        backbone: Backbone | None = None,
        path: ProbabilityPath | None = None,
        head: Head | None = None,
        objective: Objective | None = None,
        sampler: Sampler | None = None,
        vocab_size: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 100,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        num_val_samples: int = 64,
        lr_schedule_steps: int | None = None,
    ) -> None:
        super().__init__()
        given = {"backbone": backbone, "path": path, "head": head, "objective": objective, "sampler": sampler}
        parts = {kind: registry.build(kind, value if value is not None else DEFAULTS[kind]) for kind, value in given.items()}
        registry.check_compatible(parts)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (set it, or let the data module supply it), got {vocab_size}")
        self.vocab_size = vocab_size
        self.path, self.head, self.objective, self.sampler = parts["path"], parts["head"], parts["objective"], parts["sampler"]
        if hasattr(self.path, "bind_vocab"):  # paths whose time depends on K (LinearPath(time="tau"))
            self.path.bind_vocab(vocab_size)
        self.backbone = parts["backbone"].bind(vocab_size + self.path.extra_tokens, vocab_size)
        check_choice(lr_schedule, LR_SCHEDULES, "lr_schedule")
        self.lr, self.weight_decay, self.betas, self.warmup_steps = lr, weight_decay, tuple(betas), warmup_steps
        if lr_schedule_steps is not None and lr_schedule_steps < 1:
            raise ValueError(f"lr_schedule_steps must be at least 1 (or unset: the trainer's max_steps), got {lr_schedule_steps}")
        self.lr_schedule, self.min_lr_ratio, self.lr_schedule_steps = lr_schedule, min_lr_ratio, lr_schedule_steps
        self.num_val_samples = num_val_samples
        self.data_spec: dict[str, Any] | None = None
        object.__setattr__(self, "_critic", None)  # dmd's critic (flowzoo.teachers.Critic): outside the module tree
        object.__setattr__(self, "_critic_resume", None)  # a resumed checkpoint's critic state, loaded when it is built
        object.__setattr__(self, "_prepared", False)  # prepare_objective has run since this model was built or resumed
        self.save_hyperparameters(ignore=list(given))

    # --- the network ---------------------------------------------------------------
    @reproducible_logits  # the kernels (flowzoo.state) compute exactly this from the trunk's hidden state
    def logits(self, x: torch.Tensor, t: torch.Tensor | None, s: torch.Tensor | None = None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone logits (B, L, V) for state x at path time t (and source time s for flow maps); ``self_cond``: the
        previous prediction D^ (B, L, V) a self-conditioning backbone also reads (None: none)."""
        check_times(t, s, batch=x.shape[0] if x.dim() else None, values=on_host(x))
        if not x.is_floating_point():  # token ids (B, L), [MASK]/BOS included
            check_tokens(x, self.vocab_size + self.path.extra_tokens, values=on_host(x))
        nt = None if t is None else self.path.network_time(t)
        ns = None if s is None else self.path.network_time(s)
        if self_cond is not None:
            return self.backbone(x, nt, ns, self_cond=self_cond)
        return self.backbone(x, nt, ns)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        """D_t(x) (s None) or the mean denoiser delta_{s,t}(x): (B, L, V); ``self_cond`` as in :meth:`logits`."""
        if x.dim() == 3:
            check_state(x, self.vocab_size + self.path.extra_tokens)
        check_times(t, s, batch=x.shape[0])
        if self_cond is not None:
            return self.head.denoise(self.logits(x, t, s, self_cond=self_cond))
        return self.head.denoise(self.logits(x, t, s))

    # --- training ------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor | dict, batch_idx: int) -> torch.Tensor:
        ids, labels = self.split_batch(batch)
        check_tokens(ids, self.vocab_size, values=batch_idx == 0 or on_host(ids))  # no device sync per CUDA step
        self.prepare_objective()
        out = self.objective(self, ids) if labels is None else self.objective(self, ids, labels)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=True, batch_size=ids.shape[0])
        return out["loss"]

    def validation_step(self, batch: torch.Tensor | dict, batch_idx: int) -> None:
        ids, labels = self.split_batch(batch)
        check_tokens(ids, self.vocab_size)
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            torch.manual_seed(batch_idx)  # the same noise and times every epoch: comparable validation losses
            self.prepare_objective()
            out = self.objective(self, ids) if labels is None else self.objective(self, ids, labels)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=ids.shape[0], sync_dist=True)
        if batch_idx == 0:
            # inside the epoch, not at its end: weight-averaging callbacks (EMA) have their weights in place here
            self._log_sample_metrics()

    def test_step(self, batch: torch.Tensor | dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def split_batch(self, batch: torch.Tensor | dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, L) and class labels (B,) or None: a labelled data module's batches are dicts, which only an
        objective that reads labels (``reads_labels``, e.g. ``classify``) accepts."""
        if not isinstance(batch, dict):
            return batch, None
        if not getattr(self.objective, "reads_labels", False):
            raise ValueError(
                f"the data module yields labelled rows (token ids and a class), which the {self.objective.registry_name!r} "
                "objective does not read; train a sequence classifier with --model.objective=classify (flowzoo classifier fit)"
            )
        return batch["input_ids"], batch["labels"]

    def _log_sample_metrics(self) -> None:
        """Draw ``num_val_samples`` with the model's sampler (seed 0) and log the data's sample metrics."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.num_val_samples <= 0 or datamodule is None or self.trainer.sanity_checking:
            return
        out = self.generate(self.num_val_samples, datamodule.seq_len, seed=0)
        metrics = datamodule.sample_metrics(out.tokens) if hasattr(datamodule, "sample_metrics") else datamodule.evaluate_samples(out.tokens)
        applicable = {f"val/sample_{k}": float(v) for k, v in metrics.items() if v is not None}  # None: not applicable
        self.log_dict(applicable, batch_size=1, sync_dist=True)

    # --- what the objective needs from outside (flowzoo.teachers) ---------------------------
    def prepare_objective(self) -> None:
        """Resolve what the objective needs before its loss: distill's (dmd's, refine's) teacher, loaded once from
        the path its config names. A no-op for the other objectives. Run before every training/validation loss; the
        first time after a resume it draws nothing from the random stream (``teachers.off_stream_when_resumed``)."""
        if self._prepared:
            teachers.prepare_objective(self)
            return
        with teachers.off_stream_when_resumed(self):
            teachers.prepare_objective(self)
        object.__setattr__(self, "_prepared", True)

    def attach_teacher(self, teacher=None) -> None:
        """Hand the objective its teacher (``teacher``, or the one its config names): checked, frozen, outside the
        module tree; the student starts from it (or from ``init_from``) once. See :mod:`flowzoo.teachers`."""
        teachers.attach_teacher(self, teacher)

    def critic(self) -> torch.nn.Module:
        """dmd's critic network, built from the teacher on first use (with its optimizer), or resumed from the
        training checkpoint's critic (``on_load_checkpoint``); never in the state dict."""
        if self._critic is None:
            with teachers.off_stream_when_resumed(self):
                critic = teachers.Critic(self)
            if self._critic_resume is not None:
                critic.load_state_dict(self._critic_resume)
                object.__setattr__(self, "_critic_resume", None)
            object.__setattr__(self, "_critic", critic)
        return self._critic.network

    def train_critic(self, sample: torch.Tensor, data: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The critic's optimizer steps on the objective's ``critic_loss`` (one-step samples ``sample``, real ``data``)."""
        self.critic()
        return self._critic.train(self, sample, data)

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.generate(batch.shape[0], batch.shape[1], seed=batch_idx).tokens

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in self.named_parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.betas,
        )
        total = self.lr_schedule_steps or (self.trainer.estimated_stepping_batches if self._trainer is not None else 0)
        factor = functools.partial(lr_factor, warmup=max(1, self.warmup_steps), total=total, schedule=self.lr_schedule, floor=self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- sampling ------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        num_samples: int,
        length: int,
        sampler: Sampler | str | dict | None = None,
        seed: int | None = None,
        prompt: "Prompt | str | list[int] | torch.Tensor | None" = None,
    ) -> SampleOutput:
        """Sample ``num_samples`` sequences of ``length`` tokens with ``sampler`` (default: the model's own).

        ``prompt``: what is known (flowzoo.prompt): a :class:`~flowzoo.prompt.Prompt` (known ids and a mask of known
        positions, e.g. holes), a prefix of ids, or text (encoded with the model's tokenizer). The known positions
        come back unchanged; a prompt longer than ``length``, or holes for a sampler that cannot infill, raise
        :class:`~flowzoo.errors.PromptError`."""
        if num_samples < 1 or length < 1:
            raise ValueError(f"num_samples and length must be positive, got {num_samples} and {length}")
        chosen = self.sampler if sampler is None else registry.build("sampler", sampler)
        if chosen is not self.sampler:
            registry.check_compatible({"path": self.path, "head": self.head, "objective": self.objective, "sampler": chosen})
        kwargs = {}
        if prompt is not None:
            prompt = as_prompt(prompt, length, getattr(self, "tokenizer", None)).expand(num_samples, length, self.vocab_size, self.device)
            if "prompt" not in inspect.signature(chosen.sample).parameters:
                raise PromptError(f"sampler {chosen.registry_name!r} does not take a prompt")
            refusal = chosen.prompt_refusal(prompt)
            if refusal:
                raise PromptError(refusal)
            kwargs["prompt"] = prompt
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            return chosen.sample(self, num_samples, length, generator=generator, **kwargs)
        finally:
            self.train(was_training)

    # --- configuration ---------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model: each component's name and arguments, and the version."""
        return {
            "flowzoo_version": flowzoo.__version__,
            "vocab_size": self.vocab_size,
            **{kind: registry.spec(getattr(self, kind)) for kind in DEFAULTS},
            "optim": {
                "lr": self.lr,
                "weight_decay": self.weight_decay,
                "betas": list(self.betas),
                "warmup_steps": self.warmup_steps,
                "lr_schedule": self.lr_schedule,
                "min_lr_ratio": self.min_lr_ratio,
                "lr_schedule_steps": self.lr_schedule_steps,
            },
            "data": self.data_spec,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FlowLM":
        optim = config.get("optim", {})
        model = cls(vocab_size=config["vocab_size"], **{kind: config[kind] for kind in DEFAULTS}, **optim)
        model.data_spec = config.get("data")
        return model

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and isinstance(datamodule, registry.Component):
            self.data_spec = registry.spec(datamodule)
        check_data = getattr(self.objective, "check_data", None)  # e.g. classify: its classes are the data's
        if datamodule is not None and check_data is not None:
            check_data(datamodule)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from flowzoo.checkpoints.pretrained import CRITIC_KEY
        from flowzoo.checkpoints.tokenizer import CHECKPOINT_KEY, model_tokenizer_json

        checkpoint["flowzoo"] = self.config()
        if self._critic is not None or self._critic_resume is not None:  # dmd: its critic, to resume with
            checkpoint[CRITIC_KEY] = self._critic.state_dict() if self._critic is not None else self._critic_resume
        tokenizer = model_tokenizer_json(self)  # samples decode even after the training files move
        if tokenizer is not None:
            checkpoint[CHECKPOINT_KEY] = tokenizer

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed ``fit`` (``--ckpt_path``): dmd's critic goes on from the checkpoint's once it is built."""
        from flowzoo.checkpoints.pretrained import CRITIC_KEY

        object.__setattr__(self, "_critic", None)
        object.__setattr__(self, "_critic_resume", checkpoint.get(CRITIC_KEY))
        object.__setattr__(self, "_prepared", False)
