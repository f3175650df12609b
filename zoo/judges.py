"""Judges for generative perplexity: causal LMs that score decoded samples (trained with ``flowzoo judge fit``,
see :mod:`flowzoo.judge_fit`).

A judge is a causal LM that scores token sequences: ``encode(texts)`` turns decoded samples
into the judge's own ids, ``score(sequences)`` returns (sum of -log p(y_i | y_<i), number of
scored tokens). A sequence longer than the judge's context is cut into pieces of ``context``
tokens, each scored on its own; the first token of each piece has no context and is not scored
(the protocol of MDLM/Duo's ``record_generative_perplexity``: no BOS is prepended).

Two kinds: :class:`HFJudge` (any ``transformers`` causal LM by name or local path,
``gpt2-large`` in the literature) and :class:`FlowzooJudge` (a flowzoo model trained with the
``ar`` objective and a causal backbone, using the data module's tokenizer).

``score(sequences, eos=...)`` says what happens to the judge's end-of-sequence id (:data:`EOS_CONVENTIONS`):
``all`` scores every token, EOS included (flowzoo's default); ``first`` scores every token but the EOS ids after
the first one of each piece (MDLM / Duo's ``record_generative_perplexity``: valid = (cumsum(y = EOS) = 1) or
y != EOS; the tokens after an EOS are still scored); ``truncate`` cuts each sequence after its first EOS (kept,
scored) and scores what is left. A judge without an EOS id scores every token under all three.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from flowzoo.errors import CheckpointError, DataError, FlowzooError
from flowzoo.validation import check_choice

DEFAULT_BATCH_SIZE = 8
EOS_CONVENTIONS = ("all", "first", "truncate")


class JudgeError(FlowzooError, ValueError):
    """A judge that cannot score, or a judge run that cannot start."""


def chunks(ids: Sequence[int], context: int) -> list[list[int]]:
    """Consecutive pieces of at most ``context`` ids; pieces of one id (nothing to score) are dropped."""
    if context < 2:
        raise ValueError(f"a judge's context must be at least 2 tokens, got {context}")
    ids = [int(i) for i in ids]
    return [ids[i : i + context] for i in range(0, len(ids), context) if len(ids[i : i + context]) > 1]


def pad_right(pieces: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (B, L) padded with 0 on the right and the mask (B, L) of real positions."""
    width = max(len(p) for p in pieces)
    ids = torch.zeros(len(pieces), width, dtype=torch.long)
    mask = torch.zeros(len(pieces), width, dtype=torch.long)
    for row, piece in enumerate(pieces):
        ids[row, : len(piece)] = torch.tensor(piece)
        mask[row, : len(piece)] = 1
    return ids.to(device), mask.to(device)


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor | None = None) -> tuple[float, int]:
    """sum_i -log softmax(logits_{i-1})[y_i] over real positions i >= 1 (``scored`` (B, L): those of them that count;
    default all of ``mask``), and their number."""
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")  # (B, L-1)
    counted = (mask if scored is None else scored)[:, 1:].bool()
    return float(nll.double()[counted].sum()), int(counted.sum())


def check_eos(eos: str) -> str:
    check_choice(eos, EOS_CONVENTIONS, "EOS convention")
    return eos


def truncate_at_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """``ids`` up to and including its first ``eos_id`` (all of it when there is none)."""
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def first_eos_scored(ids: torch.Tensor, mask: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, L) bool: real positions whose token is not EOS, or is the first EOS of its row (MDLM / Duo's
    ``first_eos + token_mask``, per piece)."""
    real = mask.bool()
    is_eos = (ids == eos_id) & real
    return real & (~is_eos | (is_eos.long().cumsum(-1) == 1))


class Judge:
    """Scores sequences of its own token ids; see the module docstring for the protocol."""

    context: int
    batch_size: int = DEFAULT_BATCH_SIZE
    name: str = "judge"
    eos_id: int | None = None  # the judge's end-of-sequence id (its tokenizer's), None: it has none

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def piece_nll(self, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor | None = None) -> tuple[float, int]:
        """(sum of -log p(y_i | y_<i), count) over positions i >= 1 of ``scored`` (default: every real one of ``mask``);
        ids, mask, scored (B, L), the rows padded on the right."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]], eos: str = "all") -> tuple[float, int]:
        """(total NLL in nats, scored tokens) over all sequences, cut into pieces of ``context``; ``eos`` the
        convention for the judge's EOS id (module docstring)."""
        eos_id = self.eos_id if check_eos(eos) != "all" else None
        if eos == "truncate" and eos_id is not None:
            sequences = [truncate_at_eos(seq, eos_id) for seq in sequences]
        pieces = [p for seq in sequences for p in chunks(seq, self.context)]
        total, count = 0.0, 0
        for start in range(0, len(pieces), self.batch_size):
            ids, mask = pad_right(pieces[start : start + self.batch_size], self.device)
            if eos == "first" and eos_id is not None:
                nll, n = self.piece_nll(ids, mask, first_eos_scored(ids, mask, eos_id))
            else:
                nll, n = self.piece_nll(ids, mask)
            total, count = total + nll, count + n
        return total, count


class HFJudge(Judge):
    """A ``transformers`` causal LM and its tokenizer, by Hub name (``gpt2-large``) or local directory."""

    def __init__(
        self,
        name_or_path: str,
        device: str | torch.device = "cpu",
        context: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).eval().to(device)
        except OSError as err:  # not on disk and not in the offline cache
            raise CheckpointError(f"cannot load the judge {name_or_path!r} with transformers: {err}") from None
        config = self.model.config
        self.context = int(context or getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024)
        self.batch_size, self.name = batch_size, str(name_or_path)
        self.eos_id = self.tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def piece_nll(self, ids, mask, scored=None):
        logits = self.model(input_ids=ids, attention_mask=mask).logits  # (B, L, V)
        return next_token_nll(logits, ids, mask, scored)


class FlowzooJudge(Judge):
    """A flowzoo AR model (``ar`` objective, causal backbone) scoring ids of its data module's tokenizer."""

    def __init__(self, model: Any, device: str | torch.device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE, name: str = "flowzoo") -> None:
        from flowzoo.checkpoints import load_checkpoint
        from flowzoo.sampling import data_from_spec

        if isinstance(model, (str, os.PathLike)):
            name = str(model)
            model = load_checkpoint(model)
        if not getattr(model.backbone, "causal", False):
            raise JudgeError(f"judge {name!r} is not autoregressive: its backbone is not causal (train it with `flowzoo judge fit`)")
        self.model = model.eval().to(device)
        self.data = data_from_spec(model.data_spec)
        self.context = self.data.seq_len if self.data is not None else 1024
        self.batch_size, self.name = batch_size, name
        eos = getattr(self.data, "eos_id", None)  # text data's EOS; hub corpora write a separator after each document
        self.eos_id = eos if eos is not None else getattr(self.data, "separator", None)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        tokenizer = getattr(self.data, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "encode"):
            return [list(tokenizer.encode(t)) for t in texts]
        chain = getattr(self.data, "chain", None)
        if chain is not None:  # markov: words separated by spaces
            index = {w: i for i, w in enumerate(chain.words)}
            try:
                return [[index[w] for w in t.split()] for t in texts]
            except KeyError as err:
                raise DataError(f"word {err.args[0]!r} is not in the judge's Markov vocabulary") from None
        raise DataError(f"judge {self.name!r}: its data module {type(self.data).__name__} has no tokenizer to encode text with")

    def piece_nll(self, ids, mask, scored=None):
        custom = getattr(self.model.objective, "sequence_nll", None)  # an AR objective may define its own shift
        if custom is not None:
            nll = custom(self.model, ids)  # (B, L-1): -log p(y_i | y_<i) for i >= 1
            counted = (mask if scored is None else scored)[:, 1:].bool()
            return float(nll.double()[counted].sum()), int(counted.sum())
        return next_token_nll(self.model.logits(ids, None), ids, mask, scored)


def is_flowzoo_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.is_file():
        return p.suffix == ".ckpt"
    config = p / "config.json"
    return config.is_file() and "flowzoo_version" in config.read_text()


def weights_digest(spec: "str | os.PathLike | Judge") -> str | None:
    """The first 12 hex digits of the SHA-256 of a local judge's weights (``model.safetensors`` of a folder, or the
    file itself: a ``.ckpt``), which tell apart two judges kept at one path (a judge retrained in place); None for a
    ``transformers`` Hub name or a folder without ``model.safetensors``."""
    from flowzoo.data.text import sha256_file

    if not isinstance(spec, (str, os.PathLike)):  # a Judge object
        return None
    path = Path(spec)
    weights = path / "model.safetensors" if path.is_dir() else path
    return sha256_file(weights)[:12] if weights.is_file() else None


def load_judge(spec: "str | os.PathLike | Judge", device: str | torch.device = "cpu", **kwargs: Any) -> Judge:
    """A judge from a flowzoo checkpoint (.ckpt or save_pretrained dir) or a ``transformers`` name/path."""
    if isinstance(spec, Judge):
        return spec
    if is_flowzoo_checkpoint(spec):
        kwargs.pop("context", None)
        kwargs.pop("dtype", None)
        return FlowzooJudge(spec, device=device, **kwargs)
    return HFJudge(str(spec), device=device, **kwargs)
