"""Helpers shared by test modules (tests import this module, never each other).

tests/ is on sys.path because pytest's default (prepend) import mode puts the folder of the rootmost
conftest.py there; the test folders have no __init__.py (see tests/conftest.py)."""

import hashlib
import importlib.util
from pathlib import Path

import torch

from flowzoo.module import FlowLM

# --- flowzoo fit flags of a tiny run (the command-line tests) ------------------------------------------------
TINY_NETWORK = ("--model.backbone.width=32", "--model.backbone.depth=1", "--model.backbone.heads=2",
                "--model.backbone.cond_dim=16")  # flowzoo fit flags: a DiT small enough for a test


def tiny_cli(batch_size: int = 16) -> list[str]:
    """``flowzoo fit`` flags for a network and data set small enough for a test: :data:`TINY_NETWORK` and 64
    training rows of 8 tokens."""
    return [*TINY_NETWORK, "--data.num_train=64", "--data.num_val=16", "--data.seq_len=8", f"--data.batch_size={batch_size}"]


# --- the scripts under benchmarks/ (the benchmark tests) ----------------------------------------------------

def benchmark_script(name: str):
    """benchmarks/<name>.py loaded as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- a tiny transformers judge (the GenPPL tests) --------------------------------------------------------------
def tiny_gpt2_judge(directory, texts, context: int):
    """A random 2-layer GPT-2 with a byte-level BPE trained on ``texts`` (EOS ``<|endoftext|>``), saved as a
    transformers directory of ``context`` positions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=context, n_layer=2, n_embd=32, n_head=2)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    return directory


# --- small flow-map models (the flow-map tests) ----------------------------------------------------
V, L, B = 11, 6, 4
TINY = {"name": "dit", "init_args": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 16}}
CORNERS = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.999999, 1.0), (0.3, 0.3), (0.2, 0.7)]


def small_model(**parts) -> FlowLM:
    model = FlowLM(backbone=TINY, vocab_size=V, **parts)
    with torch.no_grad():  # move off the zero initialisation so s and t both matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def corner_times():
    s = torch.tensor([c[0] for c in CORNERS])
    t = torch.tensor([c[1] for c in CORNERS])
    return s, t


# --- a tiny saved model and the Hugging Face cache layout (the Hub tests) ------------------------------
REPO = "flowzoo-test/tiny-markov-flow"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATA = {"name": "markov", "init_args": {"num_states": 16, "seq_len": 8, "num_train": 8, "num_val": 8}}


def tiny_model() -> FlowLM:
    model = FlowLM(
        backbone={"name": "dit", "init_args": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 16}},
        sampler={"name": "euler", "init_args": {"steps": 2}},
        vocab_size=16,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.data_spec = DATA
    return model


def markov_trained(parts: dict, data: dict, width: dict, steps: int = 3) -> FlowLM:
    """A model of ``parts`` (``causal``: a causal DiT) with a DiT of ``width``'s arguments, fitted for ``steps``
    Lightning steps on the ``markov`` data of ``data`` (the benchmark-script tests' tiny checkpoints)."""
    import lightning as L

    from flowzoo.data.markov import MarkovData

    torch.manual_seed(0)
    parts = dict(parts)
    backbone = {"name": "dit", "init_args": {**width, "causal": parts.pop("causal", False)}}
    model = FlowLM(backbone=backbone, **parts, vocab_size=data["num_states"], num_val_samples=0, warmup_steps=1)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, MarkovData(**data))
    return model


def populate_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Lay ``folder`` out as ``hf_hub_download`` leaves a download in the cache (the documented layout):
    ``models--org--name/blobs/<etag>``, ``snapshots/<commit>/<file>`` -> ``../../blobs/<etag>``,
    ``refs/main`` holding the commit. LFS files (safetensors) are named by sha256, others by git blob sha1."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        if f.suffix == ".safetensors":
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / etag).write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", etag))
    (repo / "refs" / "main").write_text(commit)
    return snapshot
