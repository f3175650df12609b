"""The flow-map objectives fitted from the command line: lsd and psd, distill from the psd teacher, then dmd and refine fine-tuning the student."""

import pytest

from flowzoo.cli import main
from helpers import tiny_cli


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (tests/conftest.py)


CLI_TINY = tiny_cli() + [
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
