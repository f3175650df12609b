"""``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` on every flowzoo model, via ``huggingface_hub``.

:class:`FlowzooHubMixin` is a ``huggingface_hub.ModelHubMixin`` whose ``_save_pretrained`` and
``_from_pretrained`` are :mod:`flowzoo.checkpoints.pretrained`; ``push_to_hub`` is the mixin's own
(``HfApi.create_repo`` + ``HfApi.upload_folder`` of a ``save_pretrained`` folder). FlowLM inherits it,
so flow, flow-map, MDLM and AR models (and AR judges) share one format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelHubMixin

from flowzoo.errors import CheckpointError


class FlowzooHubMixin(
    ModelHubMixin,
    library_name="flowzoo",
    license="apache-2.0",
    pipeline_tag="text-generation",
    tags=["flowzoo"],
):
    """Hub integration: ``model.save_pretrained(dir)``, ``FlowLM.from_pretrained("org/name")``, ``model.push_to_hub("org/name")``.

    ``save_pretrained`` and ``push_to_hub`` take ``datamodule=`` for the tokenizer files (default: the
    trainer's data module, else one rebuilt from the model's ``data_spec``).
    """

    def _save_pretrained(self, save_directory: Path) -> None:
        from flowzoo.checkpoints.pretrained import save_pretrained

        extra = self.__dict__.get("_hub_save_kwargs") or {}
        save_pretrained(self, save_directory, **extra)

    def save_pretrained(self, save_directory, *, datamodule=None, model_card_kwargs: dict[str, Any] | None = None, **kwargs):
        """Write config.json, model.safetensors, tokenizer files and README.md; ``push_to_hub=True`` also uploads."""
        name = (model_card_kwargs or {}).get("model_name") or kwargs.get("repo_id")
        previous = self.__dict__.get("_hub_save_kwargs")
        merged = dict(previous or {})
        if datamodule is not None:
            merged["datamodule"] = datamodule
        if name:
            merged["model_name"] = name
        self.__dict__["_hub_save_kwargs"] = merged
        try:
            return super().save_pretrained(save_directory, model_card_kwargs=model_card_kwargs, **kwargs)
        finally:
            if previous is None:
                self.__dict__.pop("_hub_save_kwargs", None)
            else:
                self.__dict__["_hub_save_kwargs"] = previous

    def push_to_hub(self, repo_id: str, *, datamodule=None, commit_message: str = "Upload flowzoo model", **kwargs) -> str:
        """Upload ``save_pretrained``'s folder to ``repo_id`` (created if needed) in one commit; returns the commit URL."""
        previous = self.__dict__.get("_hub_save_kwargs")
        merged = {**(previous or {}), "model_name": repo_id}
        if datamodule is not None:
            merged["datamodule"] = datamodule
        self.__dict__["_hub_save_kwargs"] = merged
        try:
            return super().push_to_hub(repo_id, commit_message=commit_message, **kwargs)
        finally:
            if previous is None:
                self.__dict__.pop("_hub_save_kwargs", None)
            else:
                self.__dict__["_hub_save_kwargs"] = previous

    def generate_model_card(self, *args, **kwargs):
        from flowzoo.checkpoints.card import model_card
        from flowzoo.checkpoints.pretrained import full_config

        name = kwargs.get("model_name") or (self.__dict__.get("_hub_save_kwargs") or {}).get("model_name") or "flowzoo-model"
        return model_card(full_config(self), name, [])

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir=None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str = "cpu",
        **model_kwargs,
    ):
        """A model from a save_pretrained directory or a Hub repo id (``revision``: branch, tag or commit).

        Unlike ModelHubMixin's loader this never builds a model from a partial config: a missing or
        mismatched file is a CheckpointError.
        """
        if model_kwargs:
            raise TypeError(f"from_pretrained got unexpected arguments {sorted(model_kwargs)}; the model is rebuilt from config.json")
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            map_location=map_location,
        )

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token, map_location: str = "cpu", **model_kwargs):
        from flowzoo.checkpoints.pretrained import from_pretrained

        model = from_pretrained(
            model_id,
            map_location,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
            model_class=cls,
        )
        if not isinstance(model, cls):  # pragma: no cover - from_config of cls builds cls
            raise CheckpointError(f"{model_id} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def push_to_hub(model, repo_id: str, **kwargs) -> str:
    """Function form of ``model.push_to_hub`` (``private=``, ``token=``, ``branch=``, ``datamodule=``...)."""
    if not isinstance(model, FlowzooHubMixin):
        raise CheckpointError(f"push_to_hub takes a flowzoo model, got {type(model).__name__}")
    return model.push_to_hub(repo_id, **kwargs)
