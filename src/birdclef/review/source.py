"""What a review session reads: the scores of every window, where the audio is, and which model made them.

Two kinds of results:

- an ``analyze`` folder: ``detections.parquet`` (path, start_s, end_s, one column per class), its
  ``settings.json`` (the model key) and the archive the paths are relative to (``archive.json``, written by
  analyze; or ``--audio``);
- a ``predict`` submission CSV (``row_id`` = ``<stem>_<end_s>``, one column per class) with its soundscape
  folder (``--soundscapes``): each row becomes the 5 s window ending at ``end_s`` of the soundscape of that stem.
  Its review files (reviews.parquet, the cache) go in a folder beside it, ``<csv stem>.review/``.

A retrained head's scores (:mod:`birdclef.review.retrain`) live in ``RESULTS/review_scores/round-N.parquet``;
the newest one feeds the top and margin queues.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.errors import BirdclefError

KEYS = ["path", "start_s", "end_s"]
AUDIO_SUFFIXES = (".ogg", ".flac", ".wav", ".mp3")
ARCHIVE_RECORD = "archive.json"
SCORES_DIR = "review_scores"


@dataclass
class Results:
    """The windows' scores and where their audio is."""

    folder: Path
    """Where reviews.parquet and the cache go."""
    table: pd.DataFrame
    """path, start_s, end_s, then one float column per class (the model's original scores)."""
    classes: list[str]
    audio_root: Path
    model: str
    """The original scores' model id."""
    kind: str
    """"analyze" or "submission"."""
    class_weights: np.ndarray | None = None
    """(K,) multipliers of every score table (the location filter, :mod:`birdclef.birdnet.geo`), or None."""

    def weighed(self, table: pd.DataFrame) -> pd.DataFrame:
        """`table` with its class columns times :attr:`class_weights` (itself when there are none)."""
        if self.class_weights is None:
            return table
        out = table.copy()
        out[self.classes] = (table[self.classes].to_numpy(np.float64) * self.class_weights).astype(np.float32)
        return out

    def audio(self, rel: str) -> Path:
        """The recording of a relative path (a BirdclefError naming it when it is not there)."""
        path = self.audio_root / rel
        if not path.is_file():
            raise BirdclefError(f"{path}: recording not found (is --audio the folder the results were made from?)")
        return path

    def scores_now(self) -> tuple[pd.DataFrame, str]:
        """(table, model id) of the newest scores: a retrained head's round, else the original ones."""
        rounds = sorted((self.folder / SCORES_DIR).glob("round-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
        if not rounds:
            return self.table, self.model
        table = pd.read_parquet(rounds[-1])
        return self.weighed(table), f"retrain-{rounds[-1].stem}"


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise BirdclefError(f"{path}: unreadable results table ({type(exc).__name__}: {exc})") from None


def _check_table(table: pd.DataFrame, path: Path) -> list[str]:
    missing = [c for c in KEYS if c not in table.columns]
    if missing:
        raise BirdclefError(f"{path}: not a results table (no {', '.join(missing)} column)")
    classes = [c for c in table.columns if c not in KEYS]
    if not classes or len(table) == 0:
        raise BirdclefError(f"{path}: no class columns or no windows to review")
    return classes


def _analyze_results(folder: Path, audio: Path | None) -> Results:
    path = folder / "detections.parquet"
    if not path.is_file():
        raise BirdclefError(f"{path}: not found (run birdclef analyze to the end, or --merge its shards)")
    table = _read_parquet(path)
    classes = _check_table(table, path)
    if audio is None:
        record = folder / ARCHIVE_RECORD
        if not record.is_file():
            raise BirdclefError(f"{record}: not found; give --audio, the archive folder the results were made from")
        audio = Path(json.loads(record.read_text())["archive"])
    settings = folder / "settings.json"
    text = settings.read_text() if settings.is_file() else ""
    model = "analyze-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    table = table[KEYS + classes].reset_index(drop=True)
    return Results(folder, table, classes, Path(audio), model, "analyze")


def _submission_results(csv: Path, soundscapes: Path | None) -> Results:
    if soundscapes is None:
        raise BirdclefError(f"{csv}: a submission CSV needs --soundscapes, the folder it was predicted from")
    if not soundscapes.is_dir():
        raise BirdclefError(f"--soundscapes {soundscapes}: folder not found")
    try:
        sub = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise BirdclefError(f"{csv}: cannot read submission CSV ({exc})") from None
    if "row_id" not in sub.columns:
        raise BirdclefError(f"{csv}: no 'row_id' column (a predict submission has row_id = <soundscape>_<end_s>)")
    files = {p.stem: p.relative_to(soundscapes).as_posix() for p in sorted(soundscapes.rglob("*"))
             if p.suffix.lower() in AUDIO_SUFFIXES}
    parts = sub["row_id"].astype(str).str.rsplit("_", n=1)
    stem, end = parts.str[0], parts.str[1]
    end_s = pd.to_numeric(end, errors="coerce")
    unknown = sorted(set(stem[~stem.isin(files.keys())]))
    if unknown or end_s.isna().any():
        bad = unknown[0] if unknown else sub["row_id"][end_s.isna()].iloc[0]
        raise BirdclefError(f"{csv}: row {bad!r} names no soundscape in {soundscapes} (row_id = <stem>_<end_s>)")
    classes = [c for c in sub.columns if c != "row_id"]
    table = pd.DataFrame({"path": stem.map(files), "start_s": (end_s - 5.0).clip(lower=0.0).astype(np.float64),
                          "end_s": end_s.astype(np.float64)})
    table = pd.concat([table, sub[classes].astype(np.float32)], axis=1)
    model = "predict-" + hashlib.sha1(f"{csv.resolve()}:{csv.stat().st_size}".encode()).hexdigest()[:10]
    folder = csv.with_name(f"{csv.stem}.review")
    folder.mkdir(parents=True, exist_ok=True)
    return Results(folder, table, classes, soundscapes, model, "submission")


def open_results(results: str | Path, audio: str | Path | None = None) -> Results:
    """Read an analyze folder or a submission CSV (module docstring).

    Args:
        results: an ``analyze`` output folder, or a ``predict`` submission CSV.
        audio: the archive (analyze) or soundscape folder (submission) the paths are relative to; for an
            analyze folder, default: the one analyze recorded.

    Raises:
        BirdclefError: one line naming the file that is missing, unreadable or not a results table.
    """
    results = Path(results)
    if results.is_dir():
        return _analyze_results(results, None if audio is None else Path(audio))
    if results.is_file() and results.suffix.lower() == ".csv":
        return _submission_results(results, None if audio is None else Path(audio))
    raise BirdclefError(f"{results}: not found, or neither an analyze results folder nor a submission CSV")


def class_scores(table: pd.DataFrame, cls: str) -> np.ndarray:
    """(W,) float64 scores of one class, NaN where no model scores it."""
    return pd.to_numeric(table[cls], errors="coerce").to_numpy(np.float64)
