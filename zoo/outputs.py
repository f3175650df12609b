"""Output folders and files named by a user, checked before any work: one line when they cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

from flowzoo.errors import FlowzooError


class OutputError(FlowzooError, ValueError):
    """An output path that cannot be written (a file where a folder should be, no write permission)."""


def _writable_ancestor(path: Path, what: str, shown: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder this process may create entries in."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {what} {shown}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write {what} {shown}: the folder {parent} is not writable")
            return


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Refuse a folder ``path`` that is a file, lies under a file, or cannot be created or written; nothing is created."""
    shown = str(path)
    path = Path(path).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"cannot write {what} {shown}: {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {what} {shown}: the folder is not writable")
        return path
    _writable_ancestor(path, what, shown)
    return path


def check_output_file(path: str | os.PathLike, what: str, create_parents: bool = False) -> Path:
    """Refuse a file ``path`` that is a folder, cannot be written, or (unless ``create_parents``) has no folder."""
    shown = str(path)
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise OutputError(f"cannot write {what} {shown}: it is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {what} {shown}: the file is not writable")
    parent = path.parent
    if not parent.exists() and not create_parents:
        _writable_ancestor(path, what, shown)  # a file on the way is the clearer message
        raise OutputError(f"cannot write {what} {shown}: its folder does not exist")
    _writable_ancestor(path, what, shown)
    return path
