"""Teachers and critics are resolved by the model (flowzoo.teachers), and never saved with the student."""

import lightning as L
import torch
from safetensors.torch import load_file

from flowzoo.checkpoints import save_pretrained
from flowzoo.data.markov import MarkovData
from flowzoo.module import FlowLM

TINY = {"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}}


def test_a_trained_student_checkpoint_holds_no_teacher_and_no_critic(tmp_path):
    """fit a dmd student (its teacher named by path, a critic with a GAN head trained each step): the Lightning
    checkpoint and the save_pretrained folder hold the student's own weights and one optimizer, nothing else."""
    torch.manual_seed(0)
    data = MarkovData(num_train=64, num_val=16, seq_len=8, batch_size=8)
    teacher = FlowLM(backbone=TINY, vocab_size=data.vocab_size, num_val_samples=0)
    save_pretrained(teacher, tmp_path / "teacher", datamodule=data)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = {"name": "dmd", "init_args": {"teacher": str(tmp_path / "teacher"), "gan_weight": 1.0, "critic_steps": 2}}
    student = FlowLM(backbone=TINY, vocab_size=data.vocab_size, objective=objective, num_val_samples=0)
    own = set(student.state_dict())
    assert student.objective.teacher_model is None and student._critic is None  # nothing is loaded when the model is built
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        accelerator="cpu", default_root_dir=tmp_path / "run")
    trainer.fit(student, datamodule=data)
    teacher_now, critic = student.objective.teacher_model, student.critic()
    assert teacher_now is not None and critic is not None  # the model loaded the teacher and trained a critic
    assert not any(p.requires_grad for p in teacher_now.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher_now.state_dict().items())  # the teacher is frozen
    assert set(student.state_dict()) == own and not any(k.startswith(("objective._teacher", "critic", "_critic")) for k in own)
    ckpt = torch.load(next((tmp_path / "run").rglob("*.ckpt")), weights_only=True)
    assert set(ckpt["state_dict"]) == own  # no teacher, no critic, no discriminator
    assert len(ckpt["optimizer_states"]) == 1  # the critic's Adam is not the student's
    save_pretrained(student, tmp_path / "student")
    assert set(load_file(tmp_path / "student" / "model.safetensors")) <= own


def test_objectives_without_a_teacher_need_nothing_from_the_model():
    model = FlowLM(backbone=TINY, vocab_size=11, objective="psd")
    model.prepare_objective()  # a no-op
    assert not hasattr(model.objective, "teacher_model") and model._critic is None
