"""The refine objective: the teacher's repair of a corrupted decode, and the loss toward it."""

import pytest
import torch

from flowzoo import registry
from flowzoo.exact import ExactFlowLM
from flowzoo.module import FlowLM
from helpers import B, L, TINY, V, small_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


def test_refine_repairs_a_corrupted_decode_and_keeps_a_clean_one():
    """With the exact teacher of three sequences, a decode that is a data sequence with one wrong token is put back
    on the path at refine_from and carried home by the teacher's ODE: repaired to its sequence; a clean one is kept."""
    seqs = torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [6, 6, 7, 7, 8, 8]])
    teacher = ExactFlowLM(seqs, V, steps=20)
    objective = registry.build("objective", {"name": "refine", "init_args": {"refine_from": 0.8, "refine_steps": 8}})
    clean = seqs.repeat(10, 1)  # (30, L)
    rows = torch.arange(len(clean))
    where = torch.randint(L, (len(clean),))
    corrupted = clean.clone()
    corrupted[rows, where] = (clean[rows, where] + torch.randint(1, V, (len(clean),))) % V
    x0 = teacher.path.sample_prior(len(clean), L, V)
    assert not torch.equal(corrupted, clean) and torch.equal(objective.refined(teacher, x0, corrupted), clean)
    assert torch.equal(objective.refined(teacher, x0, clean), clean)


def test_refine_loss_trains_the_one_step_map_toward_the_teachers_repair():
    """The refine loss is a CE of delta_{0,1} against the teacher's repair of the student's own decode: its gradient
    reaches the student only, and a step along it raises the repaired tokens' probability at the same noise."""
    teacher = small_model()
    student = FlowLM(backbone=TINY, vocab_size=V, objective={"name": "refine", "init_args": {"init_from_teacher": False}})
    student.objective.set_teacher(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cpu, n = torch.device("cpu"), 16
    torch.manual_seed(5)
    out = student.objective.refine_loss(student, n, L, cpu)
    assert 0 < float(out["refine_changed"]) <= 1  # the random teacher rewrites some of the student's tokens
    torch.manual_seed(5)
    x0 = student.path.sample_prior(n, L, V)  # the noise refine_loss drew
    zeros, ones = torch.zeros(n), torch.ones(n)
    with torch.no_grad():
        target = student.objective.refined(teacher, x0, student.logits(x0, ones, zeros).argmax(-1))

    def ce():
        return torch.nn.functional.cross_entropy(student.logits(x0, ones, zeros).flatten(0, 1), target.flatten())

    assert torch.allclose(out["refine"], ce())
    out["refine"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    before = float(ce())
    with torch.no_grad():
        for p in student.parameters():
            if p.grad is not None:
                p.sub_(0.5 * p.grad)
    assert float(ce()) < before
    student.zero_grad()
    student.train()
    full = student.objective(student, torch.randint(0, V, (B, L)))
    assert {"diag", "map", "refine", "refine_changed"} <= set(full) and torch.isfinite(full["loss"])
