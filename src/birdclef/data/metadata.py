"""BirdCLEF metadata: the dataset layout, train.csv, the class list and multi-hot targets.

The class order is the column order of ``sample_submission.csv`` (DESIGN §5); it is stored in every
checkpoint so predictions line up with the submission. No torch here: the inference-only install
uses this module too.
"""

from __future__ import annotations

import ast
import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from birdclef.errors import DatasetError

REQUIRED_TRAIN_COLUMNS = ("primary_label", "filename")
"""Columns a train table cannot do without; every other BirdCLEF column is optional."""

_LABEL_COLUMNS = {"primary_label": str, "filename": str, "secondary_labels": str}
"""Read as strings: BirdCLEF 2025 primary labels are iNaturalist ids such as ``1139490``."""

_QUOTED = r"""(?:'[^'\\]*'|"[^"\\]*")"""
_SIMPLE_LIST = re.compile(rf"\[\s*(?:{_QUOTED}\s*(?:,\s*{_QUOTED}\s*)*,?\s*)?\]")
"""A list of plain quoted strings, the common case, parsed without ``ast.literal_eval``."""
_QUOTED_ITEM = re.compile(r"""'([^'\\]*)'|"([^"\\]*)\"""")
_SEPARATORS = re.compile(r"[\s,;]+")


@dataclass(frozen=True)
class DatasetLayout:
    """Where each part of a BirdCLEF-layout dataset lives (DESIGN §0); paths need not exist."""

    root: Path
    train_csv: Path
    taxonomy_csv: Path
    sample_submission_csv: Path
    train_audio: Path
    """Folder of weakly labelled clips, ``train_audio/<label>/<file>.ogg``."""
    train_soundscapes: Path
    """Folder of unlabelled 60 s field recordings."""
    test_soundscapes: Path

    @classmethod
    def from_root(cls, root: str | Path) -> DatasetLayout:
        """The competition's file names under `root`.

        Raises:
            DatasetError: `root` is not a directory.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: not a directory; expected a folder in the BirdCLEF layout (train.csv, ...)")
        return cls(
            root=root,
            train_csv=root / "train.csv",
            taxonomy_csv=root / "taxonomy.csv",
            sample_submission_csv=root / "sample_submission.csv",
            train_audio=root / "train_audio",
            train_soundscapes=root / "train_soundscapes",
            test_soundscapes=root / "test_soundscapes",
        )


def parse_secondary_labels(value: Any, strict: bool = False) -> list[str]:
    """Turn one ``secondary_labels`` cell into a list of labels.

    Accepts every form seen in BirdCLEF data: ``"['a', 'b']"``, ``'["a","b"]'``, ``"[]"``, ``"['']"``,
    ``""``, NaN/None, a real list or tuple, and the space-separated ``"a b"`` of BirdCLEF 2021.
    Labels are stripped of whitespace and empty ones dropped. String results are cached, so a
    column of 30k cells parses in milliseconds.

    Args:
        value: the cell.
        strict: raise on malformed input instead of salvaging what looks like labels.

    Returns:
        The labels in their original order.

    Raises:
        ValueError: `strict` and the cell is not one of the forms above (an unbalanced bracket,
            a dict, a number, a nested list).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return []
    if isinstance(value, str):
        return list(_parse_string(value, strict))
    if isinstance(value, (list, tuple, np.ndarray)):
        return _clean_items(list(value), strict, value)
    if strict:
        raise ValueError(f"secondary_labels: expected a list of labels or its string form, got {value!r}")
    if isinstance(value, dict):
        return _clean_items(list(value), strict=False, original=value)
    return _clean_items([value], strict=False, original=value)


@lru_cache(maxsize=65_536)
def _parse_string(text: str, strict: bool) -> tuple[str, ...]:
    """Parse the string form of a label list; see :func:`parse_secondary_labels`."""
    text = text.strip()
    if not text:
        return ()
    if _SIMPLE_LIST.fullmatch(text):
        return tuple(_clean_items([a or b for a, b in _QUOTED_ITEM.findall(text)], strict, text))
    if not any(ch in text for ch in "[]{}()'\""):
        return tuple(item for item in _SEPARATORS.split(text) if item)
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        parsed = None
    if isinstance(parsed, (list, tuple)):
        return tuple(_clean_items(list(parsed), strict, text))
    if strict:
        raise ValueError(f"secondary_labels: expected a list such as \"['a', 'b']\" or \"a b\", got {text!r}")
    quoted = [a or b for a, b in _QUOTED_ITEM.findall(text)]
    items = quoted if quoted else _SEPARATORS.split(re.sub(r"[\[\]{}()]", " ", text))
    return tuple(item.strip() for item in items if item.strip())


def _clean_items(items: list[Any], strict: bool, original: Any) -> list[str]:
    """Strip items and drop empty ones; in `strict` mode every item must be a string."""
    labels = []
    for item in items:
        if not isinstance(item, str):
            if strict:
                raise ValueError(f"secondary_labels: expected only strings in the list, got {original!r}")
            if item is None or (isinstance(item, float) and math.isnan(item)):
                continue
            item = str(item)
        item = item.strip()
        if item:
            labels.append(item)
    return labels


def read_train_csv(path: str | Path) -> pd.DataFrame:
    """Read a train.csv-like table as is: label columns as strings, no column checks.

    Raises:
        DatasetError: the file is missing or is not a CSV pandas can parse.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: train table not found")
    try:
        return pd.read_csv(path, dtype=_LABEL_COLUMNS)
    except UnicodeDecodeError:
        raise DatasetError(_not_utf8(path)) from None
    except pd.errors.EmptyDataError:
        expected = list(REQUIRED_TRAIN_COLUMNS)
        raise DatasetError(f"{path}: empty file; expected a header with {expected}, then rows") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read as CSV ({exc})") from None


def _not_utf8(path: Path) -> str:
    """Where `path` stops being UTF-8; pandas' own error gives a position inside a read buffer, not the file."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        byte = data[exc.start]
        return f"{path}: not UTF-8 text (byte 0x{byte:02x} on line {line}, column {column}); save it as UTF-8"
    return f"{path}: not UTF-8 text; save it as UTF-8"


def load_train_table(path: str | Path, max_files: int | None = None) -> pd.DataFrame:
    """Read train.csv and normalise the columns training relies on.

    ``primary_label`` becomes a stripped string, ``secondary_labels`` a column of lists (empty
    lists when the column is absent), ``rating`` a float (0 when absent or blank).

    Args:
        path: a train.csv-like file with at least ``primary_label`` and ``filename``.
        max_files: keep at most this many rows, taken round-robin over the primary labels (the
            first clip of every class, then the second, ...) so a small subset covers many classes;
            rows keep their file order.

    Raises:
        DatasetError: unreadable file or missing required columns.
        ValueError: `max_files` < 1.
    """
    path = Path(path)
    df = read_train_csv(path)
    missing = [col for col in REQUIRED_TRAIN_COLUMNS if col not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing required column(s) {missing}; found {list(df.columns)}")
    df["primary_label"] = df["primary_label"].fillna("").astype(str).str.strip()
    df["filename"] = df["filename"].fillna("").astype(str).str.strip()
    raw = df["secondary_labels"] if "secondary_labels" in df.columns else [None] * len(df)
    df["secondary_labels"] = pd.Series([parse_secondary_labels(v) for v in raw], index=df.index, dtype=object)
    rating = df["rating"] if "rating" in df.columns else pd.Series(0.0, index=df.index)
    df["rating"] = pd.to_numeric(rating, errors="coerce").fillna(0.0).astype(float)
    if max_files is not None:
        df = subset_round_robin(df, max_files)
    return df.reset_index(drop=True)


def subset_round_robin(df: pd.DataFrame, max_files: int) -> pd.DataFrame:
    """At most `max_files` rows taken round-robin over the classes, kept in file order.

    Rows are ranked by (k-th clip of its class, file order): a small subset covers as many classes as
    it can, which is what a quick experiment on the first N files needs. `prepare_cache` and
    `load_train_table` both use this rule, so `data.max_files` means the same rows everywhere.
    """
    if max_files < 1:
        raise ValueError(f"max_files must be >= 1, got {max_files}")
    rank = df.groupby("primary_label", sort=False).cumcount().to_numpy()
    order = np.lexsort((np.arange(len(df)), rank))[:max_files]
    return df.iloc[np.sort(order)]


def read_submission_classes(path: str | Path) -> list[str]:
    """Class columns of a sample_submission.csv, in order (the header only is read).

    Raises:
        DatasetError: missing or empty file, no ``row_id`` column, no class column, or a class
            column that is blank or appears twice.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except UnicodeDecodeError:
        raise DatasetError(_not_utf8(path)) from None
    except (OSError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the sample submission header ({exc})") from None
    header = [name.strip() for name in header]
    if not header:
        raise DatasetError(f"{path}: empty file; expected a header of 'row_id' then one column per class")
    if "row_id" not in header:
        raise DatasetError(f"{path}: no 'row_id' column; expected 'row_id' then one column per class")
    classes = [name for name in header if name != "row_id"]
    _check_class_list(path, classes, "class column")
    return classes


def read_taxonomy_classes(path: str | Path) -> list[str]:
    """``primary_label`` values of a taxonomy.csv, in file order.

    Raises:
        DatasetError: unreadable file, no ``primary_label`` column, blank or duplicate labels.
    """
    path = Path(path)
    try:
        taxonomy = pd.read_csv(path, dtype={"primary_label": str})
    except UnicodeDecodeError:
        raise DatasetError(_not_utf8(path)) from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path}: cannot read as CSV ({exc})") from None
    if "primary_label" not in taxonomy.columns:
        raise DatasetError(f"{path}: no 'primary_label' column; found {list(taxonomy.columns)}")
    classes = taxonomy["primary_label"].fillna("").astype(str).str.strip().tolist()
    _check_class_list(path, classes, "primary_label")
    return classes


def _check_class_list(path: Path, classes: list[str], what: str) -> None:
    if not classes:
        raise DatasetError(f"{path}: no classes found; expected at least one {what}")
    if "" in classes:
        at = classes.index("")
        if what == "class column":
            raise DatasetError(f"{path}: class column {at + 1} of the header (not counting row_id) is blank")
        raise DatasetError(f"{path}: column {what!r} is blank on row {at + 2}")  # spreadsheet rows: header = 1
    seen: set[str] = set()
    duplicates = sorted({name for name in classes if name in seen or seen.add(name)})
    if duplicates:
        raise DatasetError(f"{path}: duplicate {what}(s) {duplicates[:5]}; each class must appear once")


def load_classes(layout: DatasetLayout) -> list[str]:
    """The class list in submission order.

    Taken from the sample_submission.csv columns (without ``row_id``); when that file is absent,
    from taxonomy.csv's ``primary_label`` order; when both are absent, the sorted unique primary
    labels of train.csv.

    Raises:
        DatasetError: none of the three files exists, or the one used is malformed.
    """
    if layout.sample_submission_csv.is_file():
        return read_submission_classes(layout.sample_submission_csv)
    if layout.taxonomy_csv.is_file():
        return read_taxonomy_classes(layout.taxonomy_csv)
    if layout.train_csv.is_file():
        labels = load_train_table(layout.train_csv)["primary_label"]
        classes = sorted(set(labels) - {""})
        _check_class_list(layout.train_csv, classes, "primary_label")
        return classes
    raise DatasetError(
        f"{layout.root}: cannot tell the classes; expected sample_submission.csv, taxonomy.csv or train.csv"
    )


def label_matrix(
    primary: Sequence[str],
    secondary: Sequence[list[str]],
    classes: Sequence[str],
    secondary_weight: float = 1.0,
    ignore_unknown: bool = False,
) -> np.ndarray:
    """Multi-hot targets: 1.0 for the primary label, `secondary_weight` for each secondary label.

    A secondary label never lowers a 1.0 (a clip listing its primary label as secondary too).

    Args:
        primary: (N,) primary label per clip.
        secondary: (N,) list of secondary labels per clip.
        classes: (K,) class names in column order.
        secondary_weight: target of a secondary label, in [0, 1] (DESIGN §5: 1.0).
        ignore_unknown: skip secondary labels that are not classes (real data has some) instead of
            raising. An unknown primary label always raises: it would leave a row with no target.

    Returns:
        (N, K) float32 targets.

    Raises:
        DatasetError: a label not in `classes`; the message lists a few with their rows.
        ValueError: mismatched lengths, duplicate classes or `secondary_weight` outside [0, 1].
    """
    if len(primary) != len(secondary):
        raise ValueError(f"primary has {len(primary)} rows but secondary has {len(secondary)}")
    if not 0.0 <= secondary_weight <= 1.0:
        raise ValueError(f"secondary_weight must be in [0, 1], got {secondary_weight}")
    index = {name: k for k, name in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError("classes holds duplicate names")
    primary_cols = [index.get(label, -1) for label in primary]
    bad = [(i, label) for i, (label, k) in enumerate(zip(primary, primary_cols)) if k < 0]
    if bad:
        _raise_unknown(bad, "primary", len(classes))
    rows, cols, unknown = _secondary_cells(secondary, index)
    if unknown and not ignore_unknown:
        _raise_unknown(unknown, "secondary", len(classes))
    target = np.zeros((len(primary), len(classes)), dtype=np.float32)  # (N, K)
    target[rows, cols] = secondary_weight
    target[np.arange(len(primary)), primary_cols] = 1.0  # after the secondaries: never lowered
    return target


def _secondary_cells(
    secondary: Sequence[list[str]], index: dict[str, int]
) -> tuple[list[int], list[int], list[tuple[int, str]]]:
    """(row, column) of every known secondary label, and (row, label) of the unknown ones."""
    rows, cols, unknown = [], [], []
    for i, labels in enumerate(secondary):
        for label in labels:
            k = index.get(label)
            if k is None:
                unknown.append((i, label))
            else:
                rows.append(i)
                cols.append(k)
    return rows, cols, unknown


def _raise_unknown(unknown: list[tuple[int, str]], kind: str, n_classes: int) -> None:
    names = sorted({label for _, label in unknown})
    examples = ", ".join(f"{label!r} (row {i})" for i, label in unknown[:5])
    raise DatasetError(
        f"{len(unknown)} {kind} label(s) not among the {n_classes} classes "
        f"({len(names)} distinct), e.g. {examples}"
    )
