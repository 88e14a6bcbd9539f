"""Safe file output: atomic writes, early checks of an output path, and an exclusive lock on an output.

Atomic writes: readers see the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from birdclef.errors import BirdclefError


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


def read_csv_checked(path: str | Path, what: str, error: type[BirdclefError] = BirdclefError,
                     unreadable: str | None = None, **read_kwargs: Any) -> pd.DataFrame:
    """`path` read with ``pd.read_csv(**read_kwargs)``; every way it can fail is one `error` naming the file.

    Args:
        what: what the file is, for the messages (``"{path}: {what} not found"``).
        unreadable: the phrase for a file that is there but cannot be parsed (default ``"cannot read {what}"``);
            the parser's own words follow in brackets.

    Raises:
        `error`: the file is missing, not UTF-8, empty or not CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return pd.read_csv(path, **read_kwargs)
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; expected {what}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise error(f"{path}: {unreadable or f'cannot read {what}'} ({exc})") from None


def check_output(path: str | Path, kind: Literal["file", "folder"], flag: str = "--out") -> Path:
    """Fail early, in one line, when `path` cannot be written as a `kind` (before any work is done).

    A file output must not be an existing folder; a folder output must not be an existing file; and the
    nearest existing folder at or above where it goes must be a folder this process can create files in
    (probed with a nameless temporary file, so read-only filesystems count too).

    Raises:
        BirdclefError: naming `flag`, the path and what is wrong with it.
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise BirdclefError(f"{flag} {path}: is a folder, not a file; name the file to write (inside it, if you like)")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise BirdclefError(f"{flag} {path}: is an existing file; give a folder (it is created if absent)")
    anchor = path if kind == "folder" else path.parent
    anchor = anchor.absolute()
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise BirdclefError(f"{flag} {path}: {anchor} is a file, so nothing can be created under it")
    try:
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as exc:
        raise BirdclefError(f"{flag} {path}: cannot write in {anchor} ({exc.strerror or exc})") from None
    return path


def lock_path(path: str | Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def exclusive_lock(path: str | Path, what: str = "job") -> Iterator[Path]:
    """Hold an exclusive ``flock`` on `path`'s lock file (:func:`lock_path`) for the ``with`` block.

    A second holder fails at once (no waiting). The lock dies with the process, so a killed job never
    leaves a stale lock; the lock file is removed on a normal exit.

    Raises:
        BirdclefError: another process holds the lock.
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BirdclefError(f"{path}: another {what} is writing it (it holds {lock}); wait for it to "
                                "finish or choose another output") from None
        try:  # the file we locked may have been unlinked by a holder that just finished: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # before unlocking, so a waiter cannot lock a file about to vanish
        os.close(fd)
