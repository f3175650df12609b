"""Fixtures of the checkpoint tests: a model placed in a private Hugging Face cache."""

from types import SimpleNamespace

import huggingface_hub
import pytest

from flowzoo.checkpoints import save_pretrained
from helpers import REPO, populate_cache, tiny_model


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A model saved, then placed in a private HF cache as if downloaded earlier; HF_HUB_OFFLINE=1."""
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # set by conftest before huggingface_hub was imported
    model = tiny_model()
    save_pretrained(model, tmp_path / "saved")
    hf_home = tmp_path / "hf_home"
    cache = hf_home / "hub"
    populate_cache(cache, REPO, tmp_path / "saved")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return SimpleNamespace(model=model, cache=cache, hf_home=hf_home)
