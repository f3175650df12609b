"""The flow-map objectives fitted from the command line: lsd and psd, distill from the psd teacher, then dmd and refine fine-tuning the student."""

import pytest
import torch

from flowzoo.cli import main


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second thread only waits for the other core (the CI box has two, shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CLI_TINY = [
    "--model.backbone.width=32", "--model.backbone.depth=1", "--model.backbone.heads=2", "--model.backbone.cond_dim=16",
    "--data.num_train=64", "--data.num_val=16", "--data.seq_len=8", "--data.batch_size=16",
    "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--model.num_val_samples=4",
]


def test_fit_lsd_psd_and_distill_from_the_command_line(tmp_path):
    for objective in ("lsd", "psd"):
        root = tmp_path / objective
        args = ["fit", *CLI_TINY, f"--trainer.default_root_dir={root}", f"--model.objective={objective}", "--model.sampler=flow_map"]
        assert main(args) == 0
    teacher = sorted((tmp_path / "psd").rglob("*.ckpt"))[-1]
    root = tmp_path / "distill"
    args = ["fit", *CLI_TINY, f"--trainer.default_root_dir={root}", "--model.objective=distill",
            f"--model.objective.teacher={teacher}", "--model.sampler=flow_map", "--model.sampler.steps=2"]
    assert main(args) == 0
    student = sorted(root.rglob("*.ckpt"))[-1]
    root = tmp_path / "dmd"  # fine-tune the distilled student with distribution matching
    args = ["fit", *CLI_TINY, f"--trainer.default_root_dir={root}", "--model.objective=dmd", f"--model.objective.teacher={teacher}",
            f"--model.objective.init_from={student}", "--model.objective.critic_steps=2", "--model.sampler=flow_map"]
    assert main(args) == 0
    assert sorted(root.rglob("*.ckpt"))
    root = tmp_path / "refine"  # fine-tune it with the teacher's repairs of its one-step samples
    args = ["fit", *CLI_TINY, f"--trainer.default_root_dir={root}", "--model.objective=refine", f"--model.objective.teacher={teacher}",
            f"--model.objective.init_from={student}", "--model.objective.refine_steps=2", "--model.sampler=flow_map"]
    assert main(args) == 0
    assert sorted(root.rglob("*.ckpt"))
