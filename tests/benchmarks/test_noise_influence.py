"""benchmarks/noise_influence.py: I(d), the share of tokens at distance d that change when the noise at one position
is redrawn, measured through the real samplers on maps whose reach is known."""


import pytest
import torch

from flowzoo.heads.categorical import CategoricalHead
from flowzoo.paths import LinearPath
from flowzoo.samplers.flow_map import FlowMapSampler
from helpers import benchmark_script

B, L, V = 64, 12, 5


def _script():
    return benchmark_script("noise_influence")


class Map:
    """A one-step 'model' whose logits at position l are sum_{|l'-l| <= reach} x_{l'}: the token at l depends on the
    noise within ``reach`` positions (reach None: on every position)."""

    def __init__(self, reach):
        self.reach, self.path, self.head, self.vocab_size = reach, LinearPath(), CategoricalHead(), V
        self.device = torch.device("cpu")

    def logits(self, x, t, s=None):
        d = (torch.arange(L)[:, None] - torch.arange(L)[None]).abs()
        window = torch.ones(L, L) if self.reach is None else (d <= self.reach).float()
        return torch.einsum("lm,bmv->blv", window, x)


@pytest.mark.parametrize("reach", [0, 2, None])
def test_influence_is_zero_beyond_the_reach_of_the_map_and_positive_within(reach):
    module = _script()
    g = torch.Generator().manual_seed(0)
    x0, fresh = torch.randn(B, L, V, generator=g), torch.randn(B, L, V, generator=g)
    profile = module.influence(Map(reach), FlowMapSampler(steps=1, fused=False), x0, fresh, range(L))
    within = L if reach is None else reach + 1
    assert (profile[:within] > 0.1).all()
    assert not profile[within:].any()
    assert module.tokens_per_redraw(profile, L) == pytest.approx(float(profile[0] + 2 * profile[1 : L // 2].sum()))


def test_fixed_prior_refuses_another_shape_and_the_cli_checks_its_arguments(tmp_path):
    module = _script()
    wrapped = module.FixedPrior(Map(0), torch.zeros(B, L, V))
    with pytest.raises(ValueError, match="fixed prior"):
        FlowMapSampler(steps=1, fused=False).sample(wrapped, B, L + 1)
    with pytest.raises(SystemExit):
        module.main(["--checkpoint", "no-name", "--output", str(tmp_path / "t.md")])
    with pytest.raises(SystemExit):
        module.main(["--checkpoint", "a=b", "--sampler-option", "c:steps=2", "--output", str(tmp_path / "t.md")])


def test_the_script_writes_a_row_per_checkpoint_and_step_count(tmp_path):
    """End to end on a saved flow and flow map (untrained weights: the rows' shape and the table are what is checked)."""
    from flowzoo.checkpoints.pretrained import save_pretrained
    from flowzoo.data.markov import MarkovData
    from flowzoo.module import FlowLM

    tiny = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
    data = MarkovData(num_states=16, num_train=16, num_val=8, seq_len=8)
    for name, sampler in (("flow", "euler"), ("flow_map", "flow_map")):
        torch.manual_seed(0)
        model = FlowLM(backbone=tiny, vocab_size=16, sampler=sampler, num_val_samples=0)
        model.data_spec = {"name": "markov", "init_args": {"num_states": 16, "num_train": 16, "num_val": 8, "seq_len": 8}}
        save_pretrained(model, tmp_path / name)
    output = tmp_path / "influence.md"
    rows = _script().main([f"--checkpoint=flow={tmp_path / 'flow'}", f"--checkpoint=map={tmp_path / 'flow_map'}",
                           "--sampler-option", "flow:steps=4", "--steps", "1", "2", "--num-samples", "4", "--stride", "3",
                           "--distances", "5", "--output", str(output)])
    assert [(r["model"], r["sampler"], r["steps"]) for r in rows] == [("flow", "euler", 4), ("map", "flow_map", 1), ("map", "flow_map", 2)]
    assert all(len(r["profile"]) == data.seq_len and 0 <= min(r["profile"]) <= max(r["profile"]) <= 1 for r in rows)
    text = output.read_text()
    assert "| map | flow_map | 2 |" in text and "d=4" in text and "d=5" not in text
    masked = FlowLM(backbone=tiny, vocab_size=16, path="masked", objective="mdlm", sampler="ancestral", num_val_samples=0)
    masked.data_spec = {"name": "markov", "init_args": {"num_states": 16, "num_train": 16, "num_val": 8, "seq_len": 8}}
    save_pretrained(masked, tmp_path / "mdlm")
    with pytest.raises(SystemExit):  # no continuous prior noise to redraw
        _script().main([f"--checkpoint=mdlm={tmp_path / 'mdlm'}", "--output", str(output)])
