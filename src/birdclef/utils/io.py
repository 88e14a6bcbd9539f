"""Atomic file output: readers see the old file or the whole new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` and move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_csv_atomic(df: pd.DataFrame, path: str | Path, index: bool = False) -> Path:
    """Write `df` as CSV atomically."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=index))


def write_parquet_atomic(df: pd.DataFrame, path: str | Path, index: bool = False) -> Path:
    """Write `df` as Parquet atomically."""
    return write_atomic(path, lambda tmp: df.to_parquet(tmp, index=index))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write `obj` as indented JSON atomically."""
    return write_text_atomic(json.dumps(obj, indent=2, default=str) + "\n", path)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())
