"""Progress bars for long loops: shown on a terminal, silent in logs and tests."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, min_total: int = 32) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar when there are at least ``min_total`` of them and stderr is a TTY."""
    n = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    if n is not None and n < min_total:
        return items
    return tqdm(items, desc=desc, total=n, disable=None, leave=False, dynamic_ncols=True)
