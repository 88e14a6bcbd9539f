"""A table of training windows (``data.strategy=table`` with ``data.window_table=PATH``): a learned window rule.

The table names each clip's window by its start in clip seconds: a CSV or Parquet file with the columns
``filename`` (as train.csv spells it) and ``start_s``, one row per clip, or many rows per clip with a boolean
``chosen`` column marking the one to use (what a MIL run writes: ``RUN/mil_windows.csv``,
:mod:`birdclef.train.mil_windows`). ``prepare`` then stores that window of each clip, as the fixed
strategies store theirs; a clip the table does not name gets the ``reference`` rule (counted in a warning).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.data.validate import DataWarning
from birdclef.errors import DatasetError


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: window table not found (data.window_table)")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pandas / pyarrow raise many types for a broken file
        raise DatasetError(f"{path}: unreadable window table ({type(exc).__name__}: {exc})") from None


def read_window_table(path: str | Path) -> dict[str, float]:
    """filename -> window start (s) of each clip the table at `path` names.

    Raises:
        DatasetError: the file is missing or unreadable; lacks ``filename`` or ``start_s``; a start is not a
            finite number >= 0; a clip has several rows and no ``chosen`` column picks exactly one (the
            message names the clip and the rows, counted from 0 after the header).
    """
    path = Path(path)
    table = _read(path)
    missing = [c for c in ("filename", "start_s") if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: window table lacks the column(s) {missing} (has {list(table.columns)})")
    table = table.assign(filename=table["filename"].astype(str).str.strip(), _line=np.arange(len(table)))
    if "chosen" in table.columns:
        table = table[table["chosen"].astype(str).str.lower().isin(["true", "1", "1.0"])]
    start = pd.to_numeric(table["start_s"], errors="coerce")
    bad = table[~np.isfinite(start) | (start < 0)]
    if len(bad):
        row = bad.iloc[0]
        raise DatasetError(f"{path}: row {row['_line']} ({row['filename']}): start_s must be a number >= 0, "
                           f"got {row['start_s']!r}")
    twice = table[table["filename"].duplicated(keep=False)]
    if len(twice):
        name = twice["filename"].iloc[0]
        rows = twice.loc[twice["filename"] == name, "_line"].tolist()
        raise DatasetError(f"{path}: clip {name} has several windows (rows {rows[:5]}); keep one row per clip "
                           f"or mark one with a true 'chosen' column")
    return dict(zip(table["filename"], start.astype(float)))


def table_starts(filenames: list[str], path: str | Path) -> list[float]:
    """The window start of each of `filenames` from the table at `path` (NaN, with a DataWarning, where it
    names none: those clips get the reference rule)."""
    chosen = read_window_table(path)
    starts = [chosen.get(name, np.nan) for name in filenames]
    missing = [name for name, s in zip(filenames, starts) if np.isnan(s)]
    if missing:
        warnings.warn(f"{path}: names no window for {len(missing)} of {len(filenames)} clips (e.g. "
                      f"{missing[:3]}); they get the reference rule", DataWarning, stacklevel=3)
    return starts


def table_sha256(path: str | Path) -> str:
    """sha256 of the table file (recorded in cache.json: another table is another cache)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
