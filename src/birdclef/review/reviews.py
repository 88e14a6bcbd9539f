"""The reviews table: every answer a reviewer gives, saved at once, safe against kills and concurrent writers.

``RESULTS/reviews.parquet`` holds the latest answer per item, one row each (:data:`COLUMNS`)::

    class     str      the class asked about
    file      str      the recording (relative path, as in the results table)
    start_s   float64  window start (s)
    end_s     float64  window end (s)
    answer    str      yes | no | unsure
    reviewer  str      who answered (``--reviewer``)
    time      str      when (UTC, ISO 8601, microseconds)
    model     str      the model whose score was shown (``analyze`` settings key, or a retrained head's name)
    score     float64  the score shown at review time
    note      str      free text ("" when none)
    queue     str      the queue the item was answered from (top | stratified | margin); for the record only

How it stays safe: an answer is first appended, as one JSON line flushed and fsync'ed, to the log
``RESULTS/.reviews.log.jsonl`` under an exclusive ``flock`` of ``RESULTS/.reviews.lock`` (a blocking lock:
two tabs or two server processes queue up rather than fail); still under the lock, the log and the previous
table are compacted into ``reviews.parquet`` by an atomic rename. The log is the source of truth: a process
killed between the two steps leaves an answer that the next read (or the next answer) compacts; a line cut
by a kill mid-write is ignored. The latest ``time`` per (class, file, start_s, end_s) wins, so two writers
answering the same item never lose an answer to a stale copy: both are in the log, the later one counts.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.errors import BirdclefError
from birdclef.utils.io import write_parquet_atomic

TABLE = "reviews.parquet"
LOG = ".reviews.log.jsonl"
LOCK = ".reviews.lock"
ANSWERS = ("yes", "no", "unsure")
COLUMNS = ["class", "file", "start_s", "end_s", "answer", "reviewer", "time", "model", "score", "note", "queue"]
ITEM_KEY = ["class", "file", "start_s", "end_s"]


@dataclass(frozen=True)
class Answer:
    """One reviewer answer about one window and class."""

    cls: str
    file: str
    start_s: float
    end_s: float
    answer: str
    reviewer: str = ""
    model: str = ""
    score: float = float("nan")
    note: str = ""
    queue: str = ""
    time: str = ""
    """UTC ISO 8601; filled in when saved if empty."""

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise BirdclefError(f"answer {self.answer!r}: choose one of {', '.join(ANSWERS)}")
        if not self.cls or not self.file:
            raise BirdclefError("an answer needs a class and a file")

    def row(self) -> dict:
        record = asdict(self)
        record["class"] = record.pop("cls")
        return record


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@contextmanager
def _locked(results: Path) -> Iterator[None]:
    """A blocking exclusive flock on RESULTS/.reviews.lock (released when the process dies)."""
    fd = os.open(Path(results) / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS})
    for c in ("start_s", "end_s", "score"):
        frame[c] = frame[c].astype(np.float64)
    return frame


def _read_log(path: Path) -> pd.DataFrame:
    rows = []
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill mid-write: never acknowledged, skip it
                    continue
    return pd.DataFrame(rows, columns=COLUMNS) if rows else _empty()


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return _empty()
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise BirdclefError(f"{path}: unreadable reviews table ({type(exc).__name__}: {exc})") from None
    missing = [c for c in COLUMNS[:10] if c not in frame.columns]
    if missing:
        raise BirdclefError(f"{path}: not a reviews table (no {', '.join(missing)} column)")
    if "queue" not in frame.columns:
        frame["queue"] = ""
    return frame[COLUMNS]


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """The latest answer per item (ties keep the later row), sorted by time."""
    if frame.empty:
        return _empty()
    frame = frame.copy()
    for c in ("start_s", "end_s", "score"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(np.float64)
    for c in ("class", "file", "answer", "reviewer", "time", "model", "note", "queue"):
        frame[c] = frame[c].fillna("").astype(str)
    frame["start_s"], frame["end_s"] = frame["start_s"].round(3), frame["end_s"].round(3)
    frame = frame.reset_index(drop=True).sort_values("time", kind="stable")
    return frame.drop_duplicates(ITEM_KEY, keep="last").reset_index(drop=True)[COLUMNS]


def read_reviews(results: str | Path) -> pd.DataFrame:
    """Every item's latest answer: the table and the log together (the log may hold answers not compacted yet).

    Raises:
        BirdclefError: the table exists but cannot be read (one line naming it).
    """
    results = Path(results)
    source = results / TABLE if results.is_dir() else results
    log = source.with_name(LOG)
    return latest(pd.concat([_read_table(source), _read_log(log)], ignore_index=True))


def _compact(results: Path) -> pd.DataFrame:
    table = read_reviews(results)
    write_parquet_atomic(table, results / TABLE)
    return table


def save_answers(results: str | Path, answers: list[Answer]) -> list[dict]:
    """Append `answers` to the log (fsync'ed) and rewrite ``reviews.parquet`` once, under the lock; the saved rows."""
    results = Path(results)
    rows = []
    for answer in answers:
        row = answer.row()
        row["time"] = row["time"] or now_utc()
        row["start_s"], row["end_s"] = round(float(row["start_s"]), 3), round(float(row["end_s"]), 3)
        rows.append(row)
    text = "".join(json.dumps(row, allow_nan=True) + "\n" for row in rows)
    with _locked(results):
        with open(results / LOG, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        _compact(results)
    return rows


def save_answer(results: str | Path, answer: Answer) -> dict:
    """Save one answer at once (:func:`save_answers`); the saved row."""
    return save_answers(results, [answer])[0]


def compact(results: str | Path) -> pd.DataFrame:
    """Fold the log into ``reviews.parquet`` now (the server does it at start)."""
    results = Path(results)
    with _locked(results):
        return _compact(results)
