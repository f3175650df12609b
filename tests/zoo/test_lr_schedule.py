"""The learning-rate schedule: warm-up then cosine to ``min_lr_ratio`` at ``lr_schedule_steps`` (default: the
trainer's max_steps), so a run stopped at step K of an N-step schedule is the N-step run's step K."""

import lightning as L
import pytest
import torch

from flowzoo.data.markov import MarkovData
from flowzoo.module import FlowLM, lr_factor

SMALL = {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32}
DATA = {"num_states": 20, "num_train": 64, "num_val": 32, "seq_len": 12, "batch_size": 16}


class Record(L.Callback):
    """The learning rate of every step, and the weights after step ``at``."""

    def __init__(self, at: int):
        self.at, self.rates, self.weights = at, [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}


def train(max_steps: int, at: int, **model_args) -> Record:
    L.seed_everything(0)
    data = MarkovData(**DATA)
    model = FlowLM(backbone={"name": "dit", "init_args": SMALL}, vocab_size=data.vocab_size, num_val_samples=0, warmup_steps=2,
                   lr=0.01, **model_args)
    record = Record(at)
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False, callbacks=[record])
    trainer.fit(model, data)
    return record


def test_a_run_stopped_at_k_of_an_n_step_schedule_is_the_n_step_runs_step_k():
    stopped, whole = train(5, at=5, lr_schedule_steps=12), train(12, at=5)
    assert stopped.rates == whole.rates[:5]
    assert stopped.rates == pytest.approx([0.01 * lr_factor(k, 2, 12, "cosine", 0.1) for k in range(5)])
    assert stopped.rates[-1] > 0.01 * lr_factor(4, 2, 5, "cosine", 0.1)  # a 5-step schedule would have decayed further
    assert all(torch.equal(stopped.weights[k], whole.weights[k]) for k in whole.weights)


def test_the_schedule_length_is_kept_with_the_model_and_refused_below_one():
    model = FlowLM(backbone={"name": "dit", "init_args": SMALL}, vocab_size=8, lr_schedule_steps=2000)
    assert model.config()["optim"]["lr_schedule_steps"] == 2000
    assert FlowLM.from_config(model.config()).lr_schedule_steps == 2000
    with pytest.raises(ValueError, match="lr_schedule_steps must be at least 1"):
        FlowLM(backbone={"name": "dit", "init_args": SMALL}, vocab_size=8, lr_schedule_steps=0)
