"""State files of resumable jobs damaged by a crash or a full disk: one rule for every job.

Every resumable job (``predict`` parts, ``analyze`` settings / journals / per-file tables, ``embed`` parts,
``pseudo`` parts, ``selftrain`` rounds, training's ``last.ckpt``) keeps two kinds of state:

- **Results of one unit of work** (one recording's table, one fold's last checkpoint): when unreadable, the
  file is **set aside** (renamed to ``<name>.corrupt``, kept for a post-mortem) and that unit is redone; a
  :class:`~birdclef.errors.BirdclefWarning` names the file. Every other finished unit is kept.
- **The settings that give the results their meaning** (``settings.json``, ``meta.json``): when unreadable,
  the job cannot tell whether the finished results beside it were made with the settings asked for now, so
  it **stops** with a one-line error naming the file and both ways on: delete the file to resume the
  finished results (when this is the command that made them), or delete the folder to start over.

A damaged file is never a traceback and never a silent restart that throws finished work away.
The checks are cheap (a Parquet footer's magic and length, a zip's end record), so a resume over tens of
thousands of parts checks them all.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

from birdclef.errors import BirdclefError, BirdclefWarning

CORRUPT_SUFFIX = ".corrupt"


def set_aside(path: Path, reason: str, redo: str = "it is redone") -> Path:
    """Rename a damaged state file to ``<name>.corrupt`` (``.corrupt2`` ... when taken) and say so.

    Returns:
        where the file now is.
    """
    path = Path(path)
    target, n = path.with_name(path.name + CORRUPT_SUFFIX), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{n}")
    os.replace(path, target)
    warnings.warn(f"{path}: unreadable ({reason}); set aside as {target.name} and {redo}", BirdclefWarning,
                  stacklevel=2)
    return target


def parquet_problem(path: Path) -> str | None:
    """Why a Parquet file is unreadable (truncated, empty, not Parquet), or None when its frame is whole.

    Checks the ``PAR1`` magic at both ends and that the footer length fits the file: what a kill or a full
    disk while writing breaks. It does not parse the footer (a resume checks every part).
    """
    try:
        size = os.path.getsize(path)
        if size < 12:
            return "empty or truncated"
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-8, os.SEEK_END)
            tail = f.read(8)
    except OSError as exc:
        return exc.strerror or str(exc)
    if head != b"PAR1" or tail[4:] != b"PAR1":
        return "truncated or not a Parquet file"
    if int.from_bytes(tail[:4], "little") + 12 > size:
        return "truncated (its footer is longer than the file)"
    return None


def npz_problem(path: Path) -> str | None:
    """Why a ``.npz`` (zip) file is unreadable, or None: its end-of-archive record must be in place."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return f"truncated or not a zip file ({exc})"
    return None


def intact(path: Path, kind: str = "parquet", redo: str = "it is redone") -> bool:
    """Whether the result file at `path` exists and is whole; a damaged one is set aside (:func:`set_aside`)."""
    path = Path(path)
    if not path.is_file():
        return False
    problem = parquet_problem(path) if kind == "parquet" else npz_problem(path)
    if problem is None:
        return True
    set_aside(path, problem, redo)
    return False


def read_settings(path: Path, folder: Path | None = None) -> Any:
    """Parse a job's settings JSON (``settings.json``, ``meta.json``); a damaged one stops the job (module
    docstring).

    Args:
        path: the settings file.
        folder: the folder of results it describes (default: its parent).

    Raises:
        BirdclefError: the file cannot be read or parsed, naming it and the two ways on.
    """
    path = Path(path)
    folder = path.parent if folder is None else Path(folder)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
            "truncated or not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc))
        raise BirdclefError(f"{path}: unreadable ({reason}; a crash or a full disk?), so the finished results in "
                            f"{folder} cannot be matched to these settings: delete {path.name} to resume them "
                            f"(only if this is the command that made them), or delete {folder} to start over"
                            ) from None
