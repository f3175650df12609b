"""Test settings: no network, a private Hugging Face cache, small deterministic runs."""

import os
import sys
import tempfile
from pathlib import Path

# The repository's folders (kernels/, paths/, ...) are flowzoo.kernels, flowzoo.paths, ... once installed; with the
# root on sys.path (`python -m pytest` from it) they would shadow packages of the same name, e.g. the Hub's `kernels`
# that transformers imports. Drop the root here, and keep it off the path of the subprocesses tests start.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _ROOT]
os.environ["PYTHONSAFEPATH"] = "1"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "flowzoo-test-hf-home"))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
