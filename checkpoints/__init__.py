"""Checkpoints: safetensors weights + a JSON config naming every component, tokenizer files and a model
card; local directories or Hugging Face Hub repos (``org/name``); Lightning ``.ckpt`` import."""

from flowzoo.checkpoints.hub import FlowzooHubMixin, push_to_hub
from flowzoo.checkpoints.pretrained import from_pretrained, load_checkpoint, save_pretrained
from flowzoo.checkpoints.tokenizer import load_tokenizer

__all__ = ["FlowzooHubMixin", "from_pretrained", "load_checkpoint", "load_tokenizer", "push_to_hub", "save_pretrained"]
