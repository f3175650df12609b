"""The loaders users call: :func:`load_checkpoint` and :func:`from_pretrained` rebuild a :class:`~flowzoo.module.FlowLM`.

They sit above flowzoo.module; the format they read (:mod:`flowzoo.checkpoints.pretrained`) sits below it and takes
the model class, so FlowLM's own ``from_pretrained`` (:mod:`flowzoo.checkpoints.hub_mixin`) imports no loader of FlowLM.
"""

from __future__ import annotations

import os

from flowzoo.checkpoints import pretrained
from flowzoo.module import FlowLM


def from_pretrained(name_or_path: str | os.PathLike, map_location: str = "cpu", **kwargs):
    """A FlowLM from a save_pretrained directory or a Hub repo id (``revision``, ``cache_dir``, ``token``, ...:
    see :func:`flowzoo.checkpoints.pretrained.from_pretrained`)."""
    kwargs.setdefault("model_class", FlowLM)
    return pretrained.from_pretrained(name_or_path, map_location, **kwargs)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu", model_class=FlowLM):
    """A FlowLM from a Lightning ``.ckpt`` (written by ``flowzoo fit``), a save_pretrained directory, or a Hub repo id."""
    return pretrained.load_checkpoint(path, map_location, model_class=model_class)
