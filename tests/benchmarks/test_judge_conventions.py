"""GenPPL comparability conventions (issue 20): the text the judge reads (``judge_text: decode | raw``) and what
happens to its EOS (``judge_eos: all | first | truncate``), against MDLM / Duo's ``record_generative_perplexity``."""

import math

import pytest
import torch
import torch.nn.functional as F

from flowzoo.benchmark import BenchmarkConfigError, TokenizerText, conventions, load_config, score
from flowzoo.data.hub_text import HubTextData
from flowzoo.data.local_text import TextData
from flowzoo.judges import load_judge
from flowzoo.metrics import GenerativePerplexity
from helpers import tiny_gpt2_judge

CONTEXT = 16
EOS = "<|endoftext|>"
TEXTS = [
    f"the quick brown fox{EOS}jumps over{EOS}{EOS} the lazy dog and the cat",  # three EOS in the first piece
    f"to be or not to be, that is the question: whether 'tis nobler{EOS} in the mind to suffer the slings{EOS} and arrows",
    "New York and San Diego and Los Angeles",  # none
]
MODEL = {"name": "m", "checkpoint": "unused"}


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return tiny_gpt2_judge(tmp_path_factory.mktemp("judge"), [t.replace(EOS, " ") for t in TEXTS], CONTEXT)


def duo_genppl(directory, sequences, context):
    """Duo's record_generative_perplexity (s-sahoo/duo, metrics.py) written out on judge ids: pieces of ``context``,
    nlls of tokens 1.., valid = first_eos[..., 1:] + token_mask[..., 1:], summed over all samples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    eos = AutoTokenizer.from_pretrained(directory).eos_token_id
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for seq in sequences:
            for chunk in torch.split(torch.tensor([seq]), context, dim=-1):
                if chunk.shape[1] < 2:
                    continue
                logits = model(chunk)[0].transpose(-1, -2)
                nlls = F.cross_entropy(logits[..., :-1], chunk[..., 1:], reduction="none")
                first_eos = (chunk == eos).cumsum(-1) == 1
                token_mask = chunk != eos
                valid = first_eos[..., 1:] + token_mask[..., 1:]
                total += float((nlls * valid).sum())
                count += int(valid.sum())
    return math.exp(total / count), count


def genppl(judge, texts, eos):
    metric = GenerativePerplexity(judge, eos=eos, batch_size=2)
    metric.update(texts)
    return float(metric.compute()), int(metric.num_tokens)


def test_first_is_mdlm_and_duos_convention(judge_dir):
    judge = load_judge(str(judge_dir))
    ids = judge.encode(TEXTS)
    assert max(len(i) for i in ids) > CONTEXT and sum(i.count(judge.eos_id) for i in ids[:1]) == 3  # EOS read as the id
    expected, count = duo_genppl(judge_dir, ids, CONTEXT)
    got, scored = genppl(judge, TEXTS, "first")
    assert scored == count and got == pytest.approx(expected, rel=1e-4)
    _, all_scored = genppl(judge, TEXTS, "all")
    assert all_scored > scored  # the repeated EOS ids are scored under the default only


def test_truncate_scores_each_sample_up_to_its_first_eos(judge_dir):
    judge = load_judge(str(judge_dir))
    ids = judge.encode(TEXTS)
    cut = [i[: i.index(judge.eos_id) + 1] if judge.eos_id in i else i for i in ids]
    truncated, n = genppl(judge, TEXTS, "truncate")
    total, count = judge.score(cut, eos="all")
    assert n == count and truncated == pytest.approx(math.exp(total / count), rel=1e-6)
    changed = [t.split(EOS)[0] + EOS + " something else entirely" if EOS in t else t for t in TEXTS]
    assert genppl(judge, changed, "truncate") == pytest.approx((truncated, n))  # what follows the first EOS is not read


def test_all_is_the_default_and_a_judge_without_eos_ignores_the_convention(judge_dir):
    judge = load_judge(str(judge_dir))
    assert GenerativePerplexity(judge).eos == "all"
    default = GenerativePerplexity(judge)
    default.update(TEXTS)
    assert float(default.compute()) == pytest.approx(genppl(judge, TEXTS, "all")[0])
    judge.eos_id = None
    assert genppl(judge, TEXTS, "first") == genppl(judge, TEXTS, "truncate") == genppl(judge, TEXTS, "all")


def test_unknown_conventions_are_refused(judge_dir):
    with pytest.raises(ValueError, match="unknown EOS convention 'last'; choices: all, first, truncate"):
        GenerativePerplexity(load_judge(str(judge_dir)), eos="last")
    with pytest.raises(BenchmarkConfigError, match="unknown judge_eos 'last'; choices: all, first, truncate"):
        load_config(None, models=[MODEL], judge_eos="last")
    with pytest.raises(BenchmarkConfigError, match="unknown judge_text 'clean'; choices: decode, raw"):
        load_config(None, models=[MODEL], judge_text="clean")
    config = load_config(None, models=[MODEL])
    assert (config["judge_text"], config["judge_eos"]) == ("decode", "all")  # today's, what the committed tables used


def special_tokenizer():
    """A word-level tokenizer with BERT's [CLS] / [SEP] as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = ["[CLS]", "[SEP]", "the", "cat", "sat", "dog", "ran"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[SEP]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[CLS]", "[SEP]"])
    return tok


ROWS = torch.tensor([[0, 2, 3, 4, 1, 0, 5, 6, 1]])  # [CLS] the cat sat [SEP] [CLS] dog ran [SEP]


def test_raw_text_writes_the_special_tokens_an_imported_model_decodes():
    text = TokenizerText(special_tokenizer())
    assert text.decode(ROWS) == ["the cat sat dog ran"]
    assert text.decode_raw(ROWS) == ["[CLS] the cat sat [SEP] [CLS] dog ran [SEP]"]


def test_hub_corpora_drop_special_tokens_by_default_and_write_them_raw(tmp_path):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=special_tokenizer(), cls_token="[CLS]", sep_token="[SEP]").save_pretrained(tmp_path / "tok")
    data = HubTextData(dataset=str(tmp_path / "unused.txt"), tokenizer=str(tmp_path / "tok"))
    assert data.separator == 1  # no EOS: [SEP] separates documents
    assert data.decode(ROWS) == ["the cat sat\ndog ran\n"]  # documents on their own lines, [CLS] dropped
    raw = data.decode_raw(ROWS)[0]
    assert raw.split() == "[CLS] the cat sat [SEP] [CLS] dog ran [SEP]".split() and "\n" not in raw  # MDLM's LM1B text


def test_local_text_writes_every_eos_raw(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("the cat sat on the mat\na dog ran far away\n")
    data = TextData(files=str(path), cache_dir=str(tmp_path / "cache"), documents="line", packing="document", seq_len=32, val_fraction=0.5)
    row = data.splits["train"][:1]["input_ids"]
    eos = data.portable_tokenizer.id_to_token(data.eos_id)
    fill = int((row == data.eos_id).sum())
    assert fill > 1 and data.decode(row)[0].count(eos) == 1  # the trailing run once
    assert data.decode_raw(row)[0].count(eos) == fill and data.decode_raw(row)[0].startswith(data.decode(row)[0])


def test_benchmark_scores_with_the_configured_conventions(judge_dir):
    """score() hands the judge decode() or decode_raw() text and applies judge_eos; raw text carries the EOS strings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = [EOS, "the", "cat", "sat", "dog", "ran", "over"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens([EOS])
    data, judge = TokenizerText(tok), load_judge(str(judge_dir))
    tokens = torch.tensor([[1, 2, 3, 0, 0, 4, 5, 6, 0, 1, 2], [4, 5, 0, 1, 2, 3, 0, 0, 0, 6, 1]])
    for text, eos in [("decode", "all"), ("raw", "all"), ("raw", "first"), ("raw", "truncate")]:
        texts = data.decode_raw(tokens) if text == "raw" else data.decode(tokens)
        assert score(tokens, data, judge, text, eos)["gen_ppl"] == pytest.approx(genppl(judge, texts, eos)[0], rel=1e-6)
    raw = {eos: score(tokens, data, judge, "raw", eos)["gen_ppl"] for eos in ("all", "first", "truncate")}
    assert len(set(raw.values())) == 3 and score(tokens, data, judge)["gen_ppl"] != raw["all"]


def test_every_table_states_its_conventions():
    rows = [{"sampler_name": "ancestral"}, {"sampler_name": "uniform_ancestral"}, {"sampler_name": "euler"}]
    line = conventions({"config": {"judge_text": "raw", "judge_eos": "first"}, "rows": rows})
    assert "judge_text: raw" in line and "judge_eos: first" in line
    assert "`ancestral` stops at MDLM time τ = the path's eps" in line and "`uniform_ancestral`" in line
    old = conventions({"config": {}, "rows": [{"sampler_name": "euler"}]})  # a results.json written before the options
    assert "judge_text: decode" in old and "judge_eos: all" in old and "ancestral" not in old
