"""Detections from an analysed archive: windows above a threshold, merged into events; Raven Pro selection tables.

For each recording and class, a run of consecutive windows scoring at least `threshold`, each overlapping or
touching the next (next start <= this end; a hop over 5 s leaves gaps), becomes one event from the first
window's start to the last one's end (cut at the recording's end), scored by the maximum of its windows. A
window below the threshold ends the event. NaN (a class no model scores) never detects. The threshold is one
number for every class, or one per class (``analyze --thresholds``, from ``birdclef thresholds``): a class
without one is not detected.

Written under the results folder:

- ``raven/<relative path>.selections.txt``: a Raven Pro selection table per recording (tab-separated;
  ``Selection, View, Channel, Begin Time (s), End Time (s), Low Freq (Hz), High Freq (Hz), Begin File,
  Species Code, Score``), only for recordings with at least one event. Open it in Raven beside the recording.
- ``detections.csv``: every event of the archive, tidy: ``path, species, start_s, end_s, score``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from birdclef.archive.file import KEY_COLUMNS
from birdclef.errors import BirdclefError
from birdclef.utils.io import write_atomic, write_csv_atomic

RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Begin File", "Species Code", "Score"]
EVENT_COLUMNS = ["path", "species", "start_s", "end_s", "score"]


Threshold = float | Mapping[str, float]
"""One threshold for every class, or {class: threshold} (classes not in it are not detected)."""


def merge_events(table: pd.DataFrame, threshold: Threshold, duration_s: float | None = None) -> pd.DataFrame:
    """Events (module docstring) of one recording's result table, ordered by start then class order.

    Args:
        table: ``path, start_s, end_s`` and one score column per class, rows in time order.
        threshold: minimum window score of a detection, one for all classes or per class (:data:`Threshold`).
        duration_s: the recording's length; event ends are cut there (None: not cut).

    Returns:
        DataFrame of :data:`EVENT_COLUMNS`.
    """
    per_class = isinstance(threshold, Mapping)
    if not per_class and not 0.0 < threshold <= 1.0:
        raise BirdclefError(f"detection threshold (--raven, --threshold) must be in (0, 1], got {threshold}")
    starts, ends = table["start_s"].to_numpy(), table["end_s"].to_numpy()
    path = table["path"].iloc[0] if len(table) else ""
    rows = []
    for species in (c for c in table.columns if c not in KEY_COLUMNS and (not per_class or c in threshold)):
        scores = table[species].to_numpy(np.float64)
        hit = np.flatnonzero(np.nan_to_num(scores, nan=-1.0) >= (threshold[species] if per_class else threshold))
        if not len(hit):
            continue
        # a new event where the previous hit is not the previous window or ends before this one starts
        new = np.r_[True, (np.diff(hit) > 1) | (starts[hit[1:]] > ends[hit[:-1]] + 1e-9)]
        for group in np.split(hit, np.flatnonzero(new)[1:]):
            end = ends[group[-1]] if duration_s is None else min(ends[group[-1]], duration_s)
            rows.append((path, species, starts[group[0]], end, float(scores[group].max())))
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    return events.sort_values("start_s", kind="stable", ignore_index=True)


def raven_table(events: pd.DataFrame, high_hz: float, low_hz: float = 0.0) -> pd.DataFrame:
    """One recording's events as a Raven Pro selection table (columns :data:`RAVEN_COLUMNS`)."""
    return pd.DataFrame({
        "Selection": np.arange(1, len(events) + 1), "View": "Spectrogram 1", "Channel": 1,
        "Begin Time (s)": events["start_s"].round(3), "End Time (s)": events["end_s"].round(3),
        "Low Freq (Hz)": low_hz, "High Freq (Hz)": high_hz,
        "Begin File": [PurePosixPath(p).name for p in events["path"]], "Species Code": events["species"],
        "Score": events["score"].round(4)}, columns=RAVEN_COLUMNS)


def write_detections(out: Path, parts: list[tuple[str, Path, float]], threshold: Threshold, high_hz: float) -> Path:
    """Write ``raven/`` and ``detections.csv`` (module docstring) from the finished recordings' tables.

    Args:
        out: results folder.
        parts: (relative path, its result table, its duration in s) per finished recording, in manifest order.
        threshold: minimum window score of a detection, one for all classes or per class (:data:`Threshold`).
        high_hz: the selections' upper frequency (e.g. the model's Nyquist frequency).

    Returns:
        The path of ``detections.csv``.
    """
    out = Path(out)
    found = []
    for rel, part, duration_s in parts:
        events = merge_events(pq.ParquetFile(part).read().to_pandas(), threshold, duration_s)
        target = out / "raven" / f"{rel}.selections.txt"
        if len(events):
            table = raven_table(events, high_hz)
            write_atomic(target, lambda tmp, t=table: t.to_csv(tmp, sep="\t", index=False))
            found.append(events)
        elif target.exists():
            target.unlink()
    all_events = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=EVENT_COLUMNS)
    return write_csv_atomic(all_events, out / "detections.csv")
