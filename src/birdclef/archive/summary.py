"""Detections per class per day or hour of an analysed archive (``birdclef summarize``).

Events come from ``results/detections.csv`` (``analyze --raven`` / ``--thresholds``), or are merged here from
``results/detections.parquet`` with a threshold (one number or per class, :mod:`birdclef.archive.raven`).
An event's time is its recording's start plus its ``start_s``; the recording's start is read from an
AudioMoth-style ``YYYYMMDD_HHMMSS`` in the file name, else in the nearest folder name holding one. Events of
recordings without a parseable time are counted under ``unknown``.

Written under the summary folder:

- ``counts_by_<hour|day>.csv``: tidy ``species, <hour|day>, detections`` (buckets ``2024-05-01 06:00`` or
  ``2024-05-01``, then ``unknown``), one row per class and bucket holding at least one event;
- ``counts_by_<hour|day>.png``: a heatmap of the same counts, class x bucket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from birdclef.archive.raven import EVENT_COLUMNS, Threshold, merge_events
from birdclef.errors import BirdclefError
from birdclef.utils.io import write_atomic, write_csv_atomic

UNKNOWN = "unknown"
_STAMP = re.compile(r"(?<!\d)(\d{8})[_T-]?(\d{6})(?!\d)")
_FORMATS = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}


@dataclass
class Summary:
    """Where the outputs went and how many events had no time."""

    table: Path
    plot: Path
    n_events: int
    unknown_files: list[str] = field(default_factory=list)
    unknown_events: int = 0


def recording_start(path: str) -> pd.Timestamp | None:
    """The start time of a recording from an AudioMoth-style ``YYYYMMDD_HHMMSS`` in its name or folders."""
    for part in reversed(PurePosixPath(str(path).replace("\\", "/")).parts):
        for match in reversed(list(_STAMP.finditer(part))):
            stamp = pd.to_datetime(match[1] + match[2], format="%Y%m%d%H%M%S", errors="coerce")
            if not pd.isna(stamp):
                return stamp
    return None


def _recordings(table_path: Path, batch_rows: int = 65_536):
    """Each recording's rows of a detections.parquet, streamed (the table is in manifest order, so a recording's
    rows are contiguous): memory holds one batch and one recording, not an archive's whole table."""
    pending = None
    for batch in pq.ParquetFile(table_path).iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        frame = frame if pending is None else pd.concat([pending, frame], ignore_index=True)
        open_rows = frame["path"] == frame["path"].iloc[-1]  # the last recording may go on in the next batch
        for _, rows in frame[~open_rows].groupby("path", sort=False):
            yield rows
        pending = frame[open_rows]
    if pending is not None and len(pending):
        yield pending


def read_events(results: Path, threshold: Threshold | None = None) -> pd.DataFrame:
    """Events of a results folder: from ``detections.csv``, or merged from ``detections.parquet`` with `threshold`.

    Raises:
        BirdclefError: the file needed is missing, or detections.csv lacks the event columns.
    """
    results = Path(results)
    if threshold is not None:
        table_path = results / "detections.parquet"
        if not table_path.is_file():
            raise BirdclefError(f"{table_path}: not found (run birdclef analyze first)")
        parts = [merge_events(rows, threshold) for rows in _recordings(table_path)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=EVENT_COLUMNS)
    path = results / "detections.csv"
    if not path.is_file():
        raise BirdclefError(f"{path}: not found (run analyze with --raven or --thresholds, or give summarize "
                            "a --threshold to use detections.parquet)")
    try:
        events = pd.read_csv(path, dtype={"path": str, "species": str})
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise BirdclefError(f"{path}: cannot read detections CSV ({exc})") from None
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    missing = [c for c in ("path", "species", "start_s") if c not in events.columns]
    if missing:
        raise BirdclefError(f"{path}: no {', '.join(map(repr, missing))} column (columns: "
                            f"{', '.join(map(str, events.columns[:8]))})")
    return events


def count_events(events: pd.DataFrame, by: str = "hour") -> tuple[pd.DataFrame, list[str]]:
    """Tidy ``species, <by>, detections`` counts (module docstring) and the recordings without a time."""
    if by not in _FORMATS:
        raise BirdclefError(f"--by {by!r}: choose hour or day")
    starts = {p: recording_start(p) for p in events["path"].unique()}
    offsets = pd.to_timedelta(pd.to_numeric(events["start_s"], errors="coerce").fillna(0.0), unit="s")
    begin = pd.to_datetime(events["path"].map(starts), errors="coerce")
    bucket = (begin + offsets).dt.strftime(_FORMATS[by]).fillna(UNKNOWN)
    counts = (pd.DataFrame({"species": events["species"].astype(str), by: bucket})
              .groupby(["species", by]).size().rename("detections").reset_index())
    order = sorted(b for b in counts[by].unique() if b != UNKNOWN) + [UNKNOWN]  # unknown last
    counts[by] = pd.Categorical(counts[by], categories=order, ordered=True)
    counts = counts.sort_values(["species", by], ignore_index=True)
    counts[by] = counts[by].astype(str)
    return counts, sorted(p for p, s in starts.items() if s is None)


def plot_counts(counts: pd.DataFrame, by: str, path: Path) -> Path:
    """A heatmap of the counts, class x bucket (``unknown`` last), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = counts.pivot_table(index="species", columns=by, values="detections", aggfunc="sum", fill_value=0)
    grid = grid[sorted(grid.columns, key=lambda b: (b == UNKNOWN, b))]
    width, height = 3 + 0.35 * max(len(grid.columns), 1), 1.5 + 0.3 * max(len(grid.index), 1)
    fig, ax = plt.subplots(figsize=(min(width, 40), min(height, 40)))
    image = ax.imshow(grid.to_numpy() if grid.size else np.zeros((1, 1)), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(grid.index)), grid.index, fontsize=7)
    ax.set_xlabel(by)
    ax.set_title(f"detections per class per {by}")
    fig.colorbar(image, ax=ax, label="detections")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


def summarize(results: Path, out: Path | None = None, by: str = "hour",
              threshold: Threshold | None = None) -> Summary:
    """Count the archive's events per class per `by` into ``out`` (default ``results/summary``): CSV and PNG."""
    events = read_events(results, threshold)
    counts, unknown = count_events(events, by)
    out = Path(out) if out is not None else Path(results) / "summary"
    out.mkdir(parents=True, exist_ok=True)
    table = write_csv_atomic(counts, out / f"counts_by_{by}.csv")
    plot = plot_counts(counts, by, out / f"counts_by_{by}.png")
    n_unknown = int(events["path"].isin(unknown).sum())
    return Summary(table, plot, len(events), unknown, n_unknown)

