"""benchmarks/mirror_pairs.py: pair match by coupling distance, free and given the first half (the copy test)."""

import json
from types import SimpleNamespace

import pytest
import torch

from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.data.mirror import MirrorData
from flowzoo.module import FlowLM
from helpers import benchmark_script

MIRROR = {"name": "mirror", "init_args": {"num_states": 12, "num_train": 16, "num_val": 8, "seq_len": 8}}
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}}
CAUSAL = {"name": "dit", "init_args": {**TINY["init_args"], "causal": True}}


def _script():
    return benchmark_script("mirror_pairs")


def _save(folder, data=MIRROR, **parts):
    torch.manual_seed(0)
    model = FlowLM(backbone=parts.pop("backbone", TINY), vocab_size=12, num_val_samples=0, **parts)
    model.data_spec = data
    save_pretrained(model, folder)
    return str(folder)


class Copier:
    """A stand-in model whose free samples are the language's and whose completions copy the known half exactly,
    except the pair ``broken`` apart, which it always gets wrong."""

    def __init__(self, language, broken: int):
        self.language, self.broken = language, broken

    def generate(self, n, length, sampler=None, seed=None, prompt=None):
        x = torch.from_numpy(self.language.sample(n, seed)) if prompt is None else prompt.known.clone()
        h = self.language.half
        x[:, h:] = x[:, torch.as_tensor(self.language.partner[h:])]
        i = h + (self.broken - 1) // 2  # mirror: position h + j pairs with h - 1 - j, 2j + 1 apart
        x[:, i] = (x[:, i] + 1) % self.language.num_states
        return SimpleNamespace(tokens=x, nfe=3)


def test_measure_reads_free_and_copied_pairs_by_distance():
    script = _script()
    data = MirrorData(num_states=12, seq_len=8, num_train=16, num_val=8)
    language = data.language
    model = Copier(language, broken=5)
    rows = data.held_out(6)
    groups = script.bands(language.coupling_distances(), 2)
    assert groups == [[1, 3], [5, 7]]
    args = SimpleNamespace(num=6, seed=0, batch=4)
    f = script.measure(model, language, {"name": "euler"}, ("clean", "path"), rows, args, groups)
    assert f["nfe"] == 3
    assert f["free_by_distance"] == {1: 1.0, 3: 1.0, 5: 0.0, 7: 1.0}
    assert f["free"] == pytest.approx(0.75) and f["free_bands"] == [1.0, 0.5]
    assert f["copy"] == {"clean": 0.75, "path": 0.75}


def test_a_sampler_that_changes_the_known_half_is_refused():
    script = _script()
    data = MirrorData(num_states=12, seq_len=8, num_train=16, num_val=8)

    class Overwriter(Copier):
        def generate(self, n, length, sampler=None, seed=None, prompt=None):
            out = super().generate(n, length, sampler, seed, prompt)
            out.tokens[:, 0] = (out.tokens[:, 0] + 1) % 12
            return out

    with pytest.raises(RuntimeError, match="changed a known position"):
        script.measure(Overwriter(data.language, 1), data.language, {"name": "ancestral"}, ("-",), data.held_out(2),
                       SimpleNamespace(num=2, seed=0, batch=2), [[1, 3, 5, 7]])


def test_every_method_end_to_end_and_refusals(tmp_path, capsys):
    checkpoints = {
        "flow": _save(tmp_path / "flow", sampler="euler"),
        "flow_map": _save(tmp_path / "flow_map", objective="lsd", sampler="flow_map"),
        "mdlm": _save(tmp_path / "mdlm", path="masked", objective="mdlm", sampler="ancestral"),
        "ar": _save(tmp_path / "ar", backbone=CAUSAL, path="autoregressive", objective="ar", sampler="ar"),
    }
    out = tmp_path / "pairs.md"
    argv = [*(f"--checkpoint={m}={p}" for m, p in checkpoints.items()), "--num", "4", "--batch", "4", "--bands", "2",
            "--out", str(out)]
    rows = _script().main(argv)
    names = [name for name, _ in rows]
    assert names == ["flow Euler 128", "flow Euler 128, churn 0.3", "flow map 1", "flow map 4", "MDLM 8", "MDLM 128", "AR"]
    figures = dict(rows)
    assert set(figures["flow map 1"]["copy"]) == {"clean", "path"} and set(figures["AR"]["copy"]) == {"-"}
    assert figures["flow map 4"]["nfe"] == 4 and figures["MDLM 8"]["nfe"] <= 9
    for _, f in rows:
        assert sorted(f["free_by_distance"]) == [1, 3, 5, 7]
        assert 0.0 <= f["free"] <= 1.0 and all(0.0 <= v <= 1.0 for v in f["copy"].values())
    text = out.read_text()
    assert "| model, sampler | NFE | free: pair match | d 1-3 | d 5-7 | copy, hold clean | copy, hold path / exact |" in text
    assert "the rows themselves: pair match 1.000" in text and f"- mdlm: `{checkpoints['mdlm']}`" in text
    assert json.loads(out.with_suffix(".json").read_text())["argv"] == argv

    with pytest.raises(SystemExit):
        _script().main(["--checkpoint", f"judge={checkpoints['flow']}", "--out", str(out)])
    assert "METHOD one of flow, flow_map, mdlm, ar" in capsys.readouterr().err
    markov = _save(tmp_path / "markov", data={"name": "markov", "init_args": {"num_states": 12, "num_train": 16, "num_val": 8, "seq_len": 8}},
                   sampler="euler")
    with pytest.raises(SystemExit):
        _script().main(["--checkpoint", f"flow={markov}", "--out", str(out)])
    assert "one and the same mirror data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _script().main(["--checkpoint", f"flow={checkpoints['flow']}", "--checkpoint", f"b/flow={markov}", "--out", str(out)])
    assert "one and the same mirror data" in capsys.readouterr().err
