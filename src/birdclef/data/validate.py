"""The train.csv and class-table checks shared by ``check``, ``prepare`` and ``train``.

:func:`check_metadata` collects every fault of train.csv, taxonomy.csv and sample_submission.csv as
:class:`Problem` kinds (the kinds are listed in :mod:`birdclef.data.check`); ``birdclef check``
prints them. :func:`require_valid_metadata` runs the same checks before ``prepare`` (and so
``train``, which prepares its cache first) and refuses with the same lines when one is an error;
warnings are issued as :class:`DataWarning` (printed on stderr by default), never dropped.

Rows are numbered as a spreadsheet shows them: the header is row 1, so the first clip is row 2
(and row N is line N of a file without multi-line cells).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from birdclef.data.metadata import (
    DatasetLayout,
    parse_secondary_labels,
    read_submission_classes,
    read_taxonomy_classes,
    read_train_csv,
)
from birdclef.errors import DatasetError

SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}
_MAX_EXAMPLES = 10


class DataWarning(UserWarning):
    """A data fault that training survives but that is likely not intended (e.g. unknown secondary labels)."""


@dataclass
class Problem:
    """One kind of fault, counted over the dataset."""

    kind: str
    severity: str
    """One of "error" (unusable as is), "warning" (usable, likely not intended) or "info"."""
    count: int
    examples: list[str] = field(default_factory=list)
    """A few offending items, each naming the file, row or label."""

    def line(self) -> str:
        shown = "; ".join(self.examples[:3])
        return f"{self.severity.upper():<7} {self.kind}: {self.count}" + (f" (e.g. {shown})" if shown else "")


class Problems:
    """Collects findings, merging them by kind."""

    def __init__(self) -> None:
        self.by_kind: dict[str, Problem] = {}

    def add(self, kind: str, severity: str, examples: list[str], count: int | None = None) -> None:
        count = len(examples) if count is None else count
        if count == 0:
            return
        found = self.by_kind.setdefault(kind, Problem(kind, severity, 0))
        found.count += count
        found.examples.extend(examples[: _MAX_EXAMPLES - len(found.examples)])
        if SEVERITY_RANK[severity] > SEVERITY_RANK[found.severity]:
            found.severity = severity

    def sorted(self) -> list[Problem]:
        return sorted(self.by_kind.values(), key=lambda p: -SEVERITY_RANK[p.severity])


@dataclass
class Metadata:
    """What :func:`check_metadata` read."""

    raw: pd.DataFrame | None
    """train.csv as read (label columns as strings); None when it is missing or unreadable."""
    train: pd.DataFrame | None
    """primary_label, filename (stripped strings) and parsed secondary_labels; None when unusable."""
    classes: list[str] | None
    """The class list labels are checked against; None when there is no readable class table."""
    unreadable: set[Path] = field(default_factory=set)
    """Tables reported as unreadable_table (further checks of them would repeat the fault)."""


def check_metadata(layout: DatasetLayout, train_csv: Path, problems: Problems) -> Metadata:
    """Check the class tables of `layout` and the rows of `train_csv`, adding what is wrong to `problems`."""
    unreadable: set[Path] = set()
    classes = _reference_classes(layout, problems, unreadable)
    if not train_csv.is_file():
        return Metadata(None, None, classes, unreadable)
    try:
        raw = read_train_csv(train_csv)
    except DatasetError as exc:
        problems.add("unreadable_table", "error", [str(exc)])
        return Metadata(None, None, classes, unreadable | {train_csv})
    return Metadata(raw, _check_train_table(raw, train_csv, classes, problems), classes, unreadable)


def require_valid_metadata(data_root: str | Path) -> pd.DataFrame:
    """train.csv of `data_root` as read, after the checks ``birdclef check`` makes of it and the class tables.

    Missing audio, broken files and sample_submission row ids are not checked here: batch jobs skip
    and report broken files, and row ids matter only to prediction.

    Raises:
        DatasetError: train.csv is missing, or a check finds an error; the message holds the same
            lines ``birdclef check`` prints.

    Warns:
        DataWarning: one per warning kind (unknown secondary labels, ratings that are not numbers, ...).
    """
    layout = DatasetLayout.from_root(data_root)
    if not layout.train_csv.is_file():
        raise DatasetError(f"{layout.train_csv}: train table not found")
    problems = Problems()
    metadata = check_metadata(layout, layout.train_csv, problems)
    errors = [p.line() for p in problems.sorted() if p.severity == "error"]
    if errors:
        raise DatasetError(f"{layout.root}: not usable for training (`birdclef check {layout.root}` reports the "
                           f"same): " + " | ".join(line.split(maxsplit=1)[1] for line in errors))
    for problem in problems.sorted():
        if problem.severity == "warning":
            warnings.warn(f"{layout.train_csv}: {problem.line().split(maxsplit=1)[1]}", DataWarning, stacklevel=2)
    assert metadata.raw is not None  # no error: it was read
    return metadata.raw


def _reference_classes(layout: DatasetLayout, problems: Problems, unreadable: set[Path]) -> list[str] | None:
    """Classes to check labels against, chosen as training chooses them (sample_submission, then taxonomy)."""
    found: dict[str, list[str]] = {}
    for name, path, reader in [
        ("submission", layout.sample_submission_csv, read_submission_classes),
        ("taxonomy", layout.taxonomy_csv, read_taxonomy_classes),
    ]:
        if path.is_file():
            try:
                found[name] = reader(path)
            except DatasetError as exc:
                problems.add("unreadable_table", "error", [str(exc)])
                unreadable.add(path)
    if "taxonomy" in found and "submission" in found:
        taxonomy, submission = found["taxonomy"], found["submission"]
        problems.add("taxonomy_not_in_submission", "warning", sorted(set(taxonomy) - set(submission)))
        problems.add("submission_not_in_taxonomy", "warning", sorted(set(submission) - set(taxonomy)))
    classes = found.get("submission", found.get("taxonomy"))
    if classes is None:
        why = f"no readable taxonomy.csv or sample_submission.csv in {layout.root}"
        problems.add("labels_not_checked", "info", [why])
    return classes


def _check_train_table(raw: pd.DataFrame, path: Path, classes: list[str] | None,
                       problems: Problems) -> pd.DataFrame | None:
    """Row-level checks of train.csv; returns the table with parsed labels, or None when unusable."""
    missing = [col for col in ("primary_label", "filename") if col not in raw.columns]
    found = f" (its columns: {list(raw.columns)[:8]})" if missing else ""
    problems.add("missing_columns", "error", [f"{path.name} lacks {col!r}{found}" for col in missing])
    optional = [col for col in ("secondary_labels", "rating") if col not in raw.columns]
    problems.add("missing_optional_columns", "info", [f"{path.name} lacks {col!r}" for col in optional])
    if missing:
        return None
    if raw.empty:
        problems.add("no_rows", "error", [f"{path.name} has a header but no rows"])
    train = pd.DataFrame({
        "primary_label": raw["primary_label"].fillna("").astype(str).str.strip(),
        "filename": raw["filename"].fillna("").astype(str).str.strip(),
    })
    train["where"] = [f"row {i + 2} ({name})" if name else f"row {i + 2}" for i, name in enumerate(train["filename"])]
    train["secondary_labels"] = _parse_secondary_column(raw, train["where"], problems)
    _check_rows(train, problems)
    _check_ratings(raw, train["where"], problems)
    if classes is not None:
        _check_labels(train, set(classes), problems)
    return train


def _parse_secondary_column(raw: pd.DataFrame, where: pd.Series, problems: Problems) -> list[list[str]]:
    """Strictly parse each distinct cell once; report the malformed ones, keep best-effort labels."""
    if "secondary_labels" not in raw.columns:
        return [[] for _ in range(len(raw))]
    cells = raw["secondary_labels"].fillna("").astype(str).tolist()
    parsed: dict[str, list[str]] = {}
    malformed: set[str] = set()
    for cell in set(cells):
        try:
            parsed[cell] = parse_secondary_labels(cell, strict=True)
        except ValueError:
            malformed.add(cell)
            parsed[cell] = parse_secondary_labels(cell)
    bad = [f"{at}, column 'secondary_labels': {cell!r}" for at, cell in zip(where, cells) if cell in malformed]
    problems.add("malformed_secondary_labels", "error", bad)
    return [parsed[cell] for cell in cells]


def _check_rows(train: pd.DataFrame, problems: Problems) -> None:
    """Blank primary labels, blank or escaping filenames, and filenames listed more than once."""
    blank = train.index[train["primary_label"] == ""]
    problems.add("empty_primary_label", "error", [f"{train.at[i, 'where']}: column 'primary_label' is blank"
                                                  for i in blank])
    names = train["filename"]
    bad = [f"row {i + 2}: column 'filename' is blank" if not name else
           f"row {i + 2}: {name!r} is not a relative path inside train_audio/"
           for i, name in enumerate(names) if not _is_inside_path(name)]
    problems.add("bad_filename", "error", bad)
    repeated = names.duplicated(keep=False) & (names != "")
    rows = pd.Series(train.index[repeated] + 2, index=names[repeated].to_numpy())
    examples = [f"{name} on rows {', '.join(map(str, group.tolist()))}"
                for name, group in rows.groupby(level=0, sort=False)]
    extra = int(names[names != ""].duplicated(keep="first").sum())
    problems.add("duplicate_filename", "error", examples, count=extra)


def _is_inside_path(name: str) -> bool:
    """A non-blank relative path that stays inside its folder on POSIX and Windows alike."""
    if not name:
        return False
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        return False
    return ".." not in posix.parts and ".." not in windows.parts


def _check_ratings(raw: pd.DataFrame, where: pd.Series, problems: Problems) -> None:
    """Ratings that are not numbers: training would treat them as unrated (weight 1)."""
    if "rating" not in raw.columns:
        return
    cells = raw["rating"]
    bad = cells.notna() & pd.to_numeric(cells, errors="coerce").isna()
    examples = [f"{at}: {cell!r} is not a number (treated as unrated)" for at, cell in zip(where[bad], cells[bad])]
    problems.add("bad_rating", "warning", examples)


def _check_labels(train: pd.DataFrame, classes: set[str], problems: Problems) -> None:
    """Primary and secondary labels that are not classes; counts are rows."""
    primary = train["primary_label"]
    bad = train[(primary != "") & ~primary.isin(classes)]
    examples = [f"{at}: {label!r}" for label, at in zip(bad["primary_label"], bad["where"])]
    problems.add("unknown_primary_label", "error", examples)
    unknown = [
        (at, sorted(set(labels) - classes))
        for at, labels in zip(train["where"], train["secondary_labels"])
        if labels and not classes.issuperset(labels)
    ]
    problems.add("unknown_secondary_label", "warning", [f"{at}: {labels} (ignored in training)"
                                                        for at, labels in unknown])
