"""Checkpoints: safetensors weights + a JSON config naming every component, tokenizer files and a model
card; local directories or Hugging Face Hub repos (``org/name``); Lightning ``.ckpt`` import."""

from flowzoo.checkpoints.hub_mixin import FlowzooHubMixin, push_to_hub
from flowzoo.checkpoints.pretrained import save_pretrained
from flowzoo.checkpoints.tokenizer import load_tokenizer

__all__ = ["FlowzooHubMixin", "from_pretrained", "load_checkpoint", "load_tokenizer", "push_to_hub", "save_pretrained"]


def __getattr__(name: str):
    """``load_checkpoint`` / ``from_pretrained`` (flowzoo.checkpoints.load) build a FlowLM, so they are imported on
    first use: flowzoo.module imports this package for FlowLM's own save_pretrained/from_pretrained (the format)."""
    if name in ("load_checkpoint", "from_pretrained"):
        from flowzoo.checkpoints import load

        return getattr(load, name)
    raise AttributeError(f"module 'flowzoo.checkpoints' has no attribute {name!r}")
