"""Checkpoints: safetensors weights + a JSON config naming every component; Lightning export."""

from flowzoo.checkpoints.pretrained import from_pretrained, load_checkpoint, save_pretrained

__all__ = ["from_pretrained", "load_checkpoint", "save_pretrained"]
