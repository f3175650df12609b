"""Run folders: every ``flowzoo fit`` writes into its own ``<default_root_dir>/version_N``.

    runs/x/version_0/         the first fit: config.yaml, checkpoints/, pretrained/, logs
    runs/x/version_1/         the second fit into the same root
    runs/x/latest -> version_1               the newest run (a relative symlink, replaced atomically)
    runs/x/checkpoints -> latest/checkpoints so runs/x/checkpoints/last.ckpt is always the newest run's last.ckpt
    runs/x/pretrained -> latest/pretrained   and runs/x/pretrained its save_pretrained folder

A new run takes the next free number with ``os.mkdir`` (atomic), so two fits started at once into one root get two
folders and never interleave their checkpoints. ``--ckpt_path last`` resumes *in* the newest run's folder (its
``last.ckpt``); any other ``--ckpt_path`` starts a new folder from that checkpoint. A fit refused before its training
starts (a data module on a missing file, a bad checkpoint) removes the folder it created, and ``latest`` points back
at the newest real run (:func:`abandon_fresh_run`).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from flowzoo.errors import FlowzooError

RUN_DIR_ENV = "FLOWZOO_RUN_DIR"  # set for the processes Lightning's `ddp` launcher starts: they share rank 0's folder
DEFAULT_ROOT = "runs/default"
POINTERS = ("checkpoints", "pretrained")
_VERSION = re.compile(r"version_(\d+)$")
_fresh: list[Path] = []  # the folder this process's fit created, until its training starts
_STEP_FILE = re.compile(r"(?:^|-)step=(\d+)\.ckpt$")  # step=K.ckpt, or Lightning's epoch=E-step=K.ckpt


def versions(root: Path) -> list[int]:
    """The numbers N of ``root/version_N`` folders, ascending."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir() and not p.is_symlink())


def latest_run(root: Path) -> Path | None:
    """The folder ``root/latest`` points to, or the highest ``version_N``; None without runs."""
    link = root / "latest"
    if link.is_symlink() and link.resolve().is_dir():
        return link.resolve()
    numbers = versions(root)
    return root / f"version_{numbers[-1]}" if numbers else None


def step_checkpoints(root: Path) -> dict[int, Path]:
    """{step: path}, ascending, of the step checkpoints (``step=K.ckpt``, Lightning's ``epoch=E-step=K.ckpt``) of the
    newest run under ``root``: :func:`latest_run`'s ``checkpoints/``, else ``root/checkpoints``; {} without any."""
    folder = (latest_run(root) or root) / "checkpoints"
    found = {}
    for path in folder.glob("*step=*.ckpt") if folder.is_dir() else []:
        if match := _STEP_FILE.search(path.name):
            found[int(match.group(1))] = path.resolve()
    return dict(sorted(found.items()))


def stopped_early(root: Path) -> tuple[int, int] | None:
    """(the step it reached, its max_steps) when the newest run under ``root`` saved ``pretrained/`` before its
    planned ``max_steps``, else None (finished, no ``pretrained/``, or a run that records neither: epoch-bounded, an
    older save). A run stopped early by Ctrl-C or ``max_time`` still writes ``pretrained/``, at the step it reached
    (a process killed outright writes nothing), so the folder alone does not say the run is done."""
    import json

    import yaml

    run = latest_run(root) or root
    config, planned_in = run / "pretrained" / "config.json", run / "config.yaml"
    if not config.is_file() or not planned_in.is_file():
        return None
    reached = (json.loads(config.read_text()).get("training") or {}).get("global_step")
    planned = ((yaml.safe_load(planned_in.read_text()) or {}).get("trainer") or {}).get("max_steps")
    if reached is None or planned is None or int(planned) <= 0 or int(reached) >= int(planned):
        return None
    return int(reached), int(planned)


def new_run(root: Path) -> Path:
    """Create ``root/version_N`` with the next free N (``os.mkdir`` fails on a taken number: race-free)."""
    root.mkdir(parents=True, exist_ok=True)
    n = (versions(root) or [-1])[-1] + 1
    while True:
        run = root / f"version_{n}"
        try:
            os.mkdir(run)
            return run
        except FileExistsError:
            n += 1


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)  # atomic: readers see the old or the new target, never none


def migrate_old_layout(root: Path) -> None:
    """Move a ``checkpoints``/``pretrained`` folder of the layout before run folders into a ``version_N``."""
    old = [root / name for name in POINTERS if (root / name).is_dir() and not (root / name).is_symlink()]
    if not old:
        return
    run = new_run(root)
    for path in old:
        os.replace(path, run / path.name)
    print(f"flowzoo: moved {', '.join(p.name for p in old)} of an earlier run in {root} (the layout before run "
          f"folders) to {run}", file=sys.stderr)


def point_to(root: Path, run: Path) -> None:
    """``root/latest`` -> ``run``; ``root/checkpoints`` and ``root/pretrained`` -> ``latest/...``."""
    _replace_symlink(root / "latest", run.name)
    for name in POINTERS:
        link = root / name
        if not link.is_symlink():
            _replace_symlink(link, os.path.join("latest", name))


def choose_run_dir(default_root_dir: str | None, ckpt_path: str | None) -> Path:
    """The run folder of this ``fit``: rank 0's (``FLOWZOO_RUN_DIR``) in a process started by ``ddp``; the newest
    run for ``--ckpt_path last``; otherwise a new ``version_N``. Updates the ``latest`` pointers."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    root = Path(default_root_dir or DEFAULT_ROOT).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise FlowzooError(f"--trainer.default_root_dir {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        migrate_old_layout(root)
        run = latest_run(root) if ckpt_path == "last" else None
        if run is None:
            run = new_run(root)
            _fresh[:] = [run]
        point_to(root, run)
    except PermissionError as err:
        raise FlowzooError(f"cannot write the run folder in --trainer.default_root_dir {root}: {err.strerror}") from None
    return run


def forget_fresh_run() -> None:
    """This process's fit has started training (or ended): its folder stays, whatever happens next."""
    _fresh.clear()


def abandon_fresh_run() -> None:
    """Remove the folder this process's fit created if its training never started (refused while the model or data
    were built), and point ``latest`` (with ``checkpoints``, ``pretrained``) back at the newest run left, or remove
    the pointers when none is left; a ``latest`` another fit has taken since is left alone."""
    if not _fresh:
        return
    run = _fresh.pop()
    root = run.parent
    shutil.rmtree(run, ignore_errors=True)
    link = root / "latest"
    if link.is_symlink() and os.readlink(link) != run.name:
        return
    numbers = versions(root)
    if numbers:
        point_to(root, root / f"version_{numbers[-1]}")
        return
    for name in ("latest", *POINTERS):
        if (root / name).is_symlink():
            (root / name).unlink()
