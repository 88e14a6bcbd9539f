"""Find the recordings of a folder: the one audio-suffix list and the one discovery walk of every verb.

Every verb that looks for recordings in a folder (``predict``, ``analyze``, ``embed``, ``pseudo``,
``selftrain``, ``distill``, ``check``, ``report``, ``plan``) asks :func:`discover_audio`, so one suffix list
holds everywhere and the batch-job rule (skip **and report**) holds too. What the walk passes over, with
the reason, is in :attr:`Discovery.passed_over` and said by :meth:`Discovery.warn` (one line per entry, as a
:class:`~birdclef.errors.BirdclefWarning` that the CLI prints):

- a folder named like an audio file (``x.ogg/``) in a non-recursive search (a recursive one enters it);
- a dangling symbolic link, a symbolic link loop, a folder that cannot be read (permission denied);
- a link back to a folder already searched (searched once);
- with ``unique=True``: a second name of one recording (two links to one file, or a link and the file), by
  resolved path; the first name in sorted order is kept.

Hidden files and folders (``.x``, e.g. macOS ``._rec.WAV`` AppleDouble files) are left out without a word:
they are never recordings. Suffixes match case-insensitively (AudioMoth writes ``.WAV``). Paths are
sorted by their POSIX path relative to the folder, so the list is the same wherever it is built.
"""

from __future__ import annotations

import errno
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from birdclef.errors import BirdclefError, BirdclefWarning

AUDIO_SUFFIXES = (".ogg", ".flac", ".wav", ".mp3", ".oga", ".opus", ".aif", ".aiff", ".w64", ".caf")
"""Files that are recordings (any case): every format libsndfile decodes, plus mp3."""

MAX_LINES = 10
"""Passed-over entries said one line each; the rest are counted in one more line."""


@dataclass(frozen=True)
class Recording:
    """One recording found: where (as found under the folder), its name relative to the folder, its identity."""

    path: Path
    rel: str
    """POSIX path relative to the searched folder (``site1/20240501_050000.WAV``)."""
    real: Path
    """The resolved file (links followed)."""
    size: int
    mtime_ns: int


@dataclass
class Discovery:
    root: Path
    recordings: list[Recording] = field(default_factory=list)
    passed_over: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of the entries that look like recordings but are not used."""
    duplicates: dict[str, str] = field(default_factory=dict)
    """relative path -> the relative path of the first name of the same recording (same resolved file)."""

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.recordings]

    def lines(self) -> list[str]:
        """One line per passed-over entry (at most :data:`MAX_LINES`, then a count)."""
        lines = [f"skipped {self.root / path}: {reason}" for path, reason in self.passed_over[:MAX_LINES]]
        if len(self.passed_over) > MAX_LINES:
            lines.append(f"skipped {len(self.passed_over) - MAX_LINES} more entries of {self.root}")
        return lines

    def warn(self) -> Discovery:
        """Say each passed-over entry as a BirdclefWarning; returns self."""
        for line in self.lines():
            warnings.warn(line, BirdclefWarning, stacklevel=2)
        return self


def is_audio_name(name: str) -> bool:
    """Whether a file name has one of :data:`AUDIO_SUFFIXES` (any case) and is not hidden."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_SUFFIXES


def _link_problem(path: Path) -> str | None:
    """Why a path that is not a file cannot be read as one, or None when it is simply not a file."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return f"a dangling symbolic link to {os.readlink(path)}"
        return f"cannot be read: {exc.strerror or exc}"
    return "a folder named like an audio file" if path.is_dir() else "not a regular file"


def _walk(root: Path, recursive: bool, exclude: Path | None, found: Discovery) -> list[Path]:
    candidates: list[Path] = []
    audio_dirs: list[Path] = []

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename)
        rel = where.relative_to(root).as_posix() if where.is_relative_to(root) else str(where)
        found.passed_over.append((rel, f"a folder that cannot be read ({exc.strerror or exc})"))

    seen: set[Path] = set()
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=unreadable):
        real = Path(folder).resolve()
        if real in seen or (exclude is not None and real == exclude):
            if real in seen:
                found.passed_over.append((folder, "a link back to a folder already searched"))
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = [n for n in files if is_audio_name(n)]
        if not recursive:
            names += [d for d in dirs if is_audio_name(d)]  # folders named like recordings: said below
            dirs[:] = []
        else:
            audio_dirs += [Path(folder) / d for d in dirs if is_audio_name(d)]
        candidates += [Path(folder) / n for n in names]
    for folder in audio_dirs:  # searched as a folder; said only when it held no recording
        if not any(c.is_relative_to(folder) for c in candidates):
            found.passed_over.append((folder.relative_to(root).as_posix(),
                                      "a folder named like an audio file, holding no recording"))
    return candidates


def discover_audio(root: Path, recursive: bool = True, exclude: Path | None = None,
                   unique: bool = True, what: str = "audio folder", items: str = "audio files") -> Discovery:
    """The recordings under `root` and what was passed over (module docstring), sorted by relative path.

    Args:
        root: the folder to search.
        recursive: also search sub-folders (following folder links, each real folder once).
        exclude: a folder not to enter (e.g. the output folder inside an archive).
        unique: keep one name per resolved file (the others are passed over, naming the kept one).
        what: what `root` is, for the errors (``"soundscape folder"``, ``"archive folder"``).
        items: what the recordings are called in the error when there are none (``"soundscapes"``).

    Raises:
        BirdclefError: `root` is not a folder, or holds no recording (naming what was passed over).
    """
    root = Path(root)
    if not root.is_dir():
        raise BirdclefError(f"{root}: {what} not found" if not root.exists() else f"{root}: is not a folder")
    found = Discovery(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    first: dict[Path, str] = {}
    for path in sorted(_walk(root, recursive, skip, found), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        if not path.is_file():
            found.passed_over.append((rel, _link_problem(path) or "not a regular file"))
            continue
        stat, real = path.stat(), path.resolve()
        if real in first:
            found.duplicates[rel] = first[real]
            if unique:
                found.passed_over.append((rel, f"the same recording as {first[real]}"))
                continue
        first.setdefault(real, rel)
        found.recordings.append(Recording(path, rel, real, stat.st_size, stat.st_mtime_ns))
    found.passed_over.sort()
    if not found.recordings:
        extra = f"; passed over: {', '.join(f'{p} ({r})' for p, r in found.passed_over[:3])}" \
            if found.passed_over else ""
        where = "in it or its sub-folders" if recursive else "in it"
        raise BirdclefError(f"{root}: no {items} ({', '.join(AUDIO_SUFFIXES)}) {where}{extra}")
    return found
