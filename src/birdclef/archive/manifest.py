"""Which recordings an archive holds, which shard does which, and which are done: manifest, shards, journals.

- :func:`discover` lists every recording of the archive by its POSIX path relative to the archive, sorted
  (:mod:`birdclef.audio.discover`: recursive, following folder links once, one name per resolved file,
  hidden files left out, what is passed over said): the manifest is the same wherever it is built.
- :func:`in_shard` puts each file in one of ``n`` shards by a hash of its relative path: stable when files
  are added, the same on every machine (for SLURM job arrays).
- A :class:`Journal` is one shard's append-only JSON-lines log: a line per finished file (``done`` or
  ``skipped`` with the reason), with the size and modification time the file had when it was read. A line is
  appended only after the file's results are in place, so a job killed at any moment loses at most the file
  it was on. :func:`read_journals` merges every shard's log; an entry counts only while the file still has
  that size and mtime (a changed file is redone). A torn last line (a kill while appending) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from birdclef.audio.discover import discover_audio
from birdclef.errors import BirdclefError, BirdclefWarning



@dataclass(frozen=True)
class Entry:
    """One recording of the archive: its relative path and identity (size, mtime) when listed."""

    path: str
    size: int
    mtime_ns: int


def discover(archive: Path, exclude: Path | None = None) -> list[Entry]:
    """Every recording under `archive` (:func:`birdclef.audio.discover.discover_audio`: one name per
    resolved file, what is passed over is said), sorted by relative path; `exclude` is not entered.

    Raises:
        BirdclefError: `archive` is not a folder, or holds no audio file.
    """
    found = discover_audio(Path(archive), recursive=True, exclude=exclude, unique=True, what="archive folder")
    found.warn()
    return [Entry(r.rel, r.size, r.mtime_ns) for r in found.recordings]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 0 <= i < n.

    Raises:
        BirdclefError: not of that form.
    """
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise BirdclefError(f"--shard {text!r}: expected I/N with whole numbers, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise BirdclefError(f"--shard {text!r}: need 0 <= I < N, e.g. 0/4 ... 3/4")
    return index, count


def in_shard(path: str, index: int, count: int) -> bool:
    """Whether relative `path` belongs to shard `index` of `count` (by its SHA-1: stable, machine independent)."""
    return int(hashlib.sha1(path.encode()).hexdigest(), 16) % count == index


@dataclass(frozen=True)
class Record:
    """One journal line."""

    path: str
    size: int
    mtime_ns: int
    status: str
    """done | skipped"""
    reason: str = ""
    windows: int = 0
    audio_s: float = 0.0

    def matches(self, entry: Entry) -> bool:
        return (self.path, self.size, self.mtime_ns) == (entry.path, entry.size, entry.mtime_ns)


class Journal:
    """Append-only log of one shard (module docstring); each line is flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:  # a line torn by a kill: end it, so the next record starts afresh
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def append(self, record: Record) -> None:
        line = json.dumps(asdict(record)) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:  # one small write: a kill tears at most this line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _read_lines(path: Path) -> list[Record]:
    """The journal's records; a torn last line (a kill) is ignored silently, other unreadable lines (a crash
    or a full disk) are ignored and counted in one warning: their recordings are redone."""
    records, bad = [], 0
    lines = path.read_bytes().splitlines()
    for number, line in enumerate(lines):
        try:
            records.append(Record(**json.loads(line.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
            bad += number < len(lines) - 1 and bool(line.strip())
    if bad:
        warnings.warn(f"{path}: {bad} unreadable lines ignored (a kill while writing, a crash or a full disk); the "
                      "recordings they recorded are redone", BirdclefWarning, stacklevel=2)
    return records


def read_journals(folder: Path, entries: list[Entry]) -> dict[str, Record]:
    """relative path -> its record in the shards' journals under `folder` that still matches the file.

    A ``done`` record wins over ``skipped`` ones; otherwise the last line read counts.
    """
    current = {e.path: e for e in entries}
    latest: dict[str, Record] = {}
    for journal in sorted(Path(folder).glob("*.jsonl")):
        for record in _read_lines(journal):
            entry = current.get(record.path)
            known = latest.get(record.path)
            if entry is not None and record.matches(entry) and not (known and known.status == "done"):
                latest[record.path] = record  # a done file stays done; a later try of a skipped one counts
    return latest
