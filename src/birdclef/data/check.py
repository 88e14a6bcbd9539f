"""Check a BirdCLEF-layout dataset (or a lone train.csv) before spending GPU hours on it.

Every finding is a :class:`Problem` of one *kind*, counted over the whole dataset with a few
examples, so a 30k-row table with a systematic fault gives one line, not 30k. Kinds:

==========================  ========  ===================================================
kind                        severity  meaning
==========================  ========  ===================================================
missing_file                error     train.csv, taxonomy.csv, sample_submission.csv or train_audio/
no_train_soundscapes        warning   train_soundscapes/ missing or empty (no background, no pseudo-labels)
no_test_soundscapes         info      test_soundscapes/ missing or empty (normal in a Kaggle download)
unreadable_table            error     a CSV that cannot be parsed, or a malformed class header
missing_columns             error     train.csv lacks primary_label or filename
missing_optional_columns    info      train.csv lacks secondary_labels or rating (empty / 0 assumed)
empty_primary_label         error     a row with a blank primary_label
duplicate_filename          error     the same filename on several rows (count: extra rows)
malformed_secondary_labels  error     a secondary_labels cell that does not parse strictly
unknown_primary_label       error     a primary label that is not a class
unknown_secondary_label     warning   a secondary label that is not a class (skipped in training)
labels_not_checked          info      no taxonomy.csv or sample_submission.csv to check labels against
taxonomy_not_in_submission  warning   a taxonomy class with no sample_submission column
submission_not_in_taxonomy  warning   a sample_submission column with no taxonomy row
bad_row_id                  error     a row_id not of the form ``<soundscape_stem>_<end_second>``
duplicate_row_id            error     the same row_id twice in sample_submission.csv
missing_audio               error     a train.csv filename with no file under train_audio/
unreadable_audio            error     a training clip libsndfile cannot open, or with zero frames
unreadable_soundscape       error     the same for a file in train_ or test_soundscapes/
unexpected_sample_rate      warning   audio not at `expected_sample_rate` (resampled on load); per rate
audio_not_checked           info      audio checks skipped (lone CSV, or ``check_audio=False``)
==========================  ========  ===================================================
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from birdclef.audio.io import audio_info
from birdclef.data.metadata import (
    DatasetLayout,
    parse_secondary_labels,
    read_submission_classes,
    read_taxonomy_classes,
    read_train_csv,
)
from birdclef.errors import AudioError, DatasetError

AUDIO_SUFFIXES = (".ogg", ".flac", ".wav", ".mp3")
_ROW_ID = re.compile(r".+_\d+")
_SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}
_MAX_EXAMPLES = 10


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


@dataclass
class CheckReport:
    """What :func:`check_dataset` found."""

    path: Path
    n_rows: int
    """Rows of train.csv (0 when it cannot be read)."""
    n_classes: int
    """Classes of the taxonomy or sample submission; unique primary labels when neither exists."""
    problems: list[Problem]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """True when no problem is an error (warnings and infos allowed)."""
        return not any(p.severity == "error" for p in self.problems)

    def problem(self, kind: str) -> Problem | None:
        """The problem of `kind`, or None when there is none."""
        return next((p for p in self.problems if p.kind == kind), None)

    def lines(self) -> list[str]:
        """One line per problem kind, errors first, then a summary line."""
        counts = Counter(p.severity for p in self.problems)
        verdict = "OK" if self.ok else "FAILED"
        summary = (
            f"{verdict}: {self.path}: {self.n_rows} rows, {self.n_classes} classes, {counts['error']} error(s), "
            f"{counts['warning']} warning(s), {counts['info']} info; checked in {self.elapsed_s:.1f} s"
        )
        return [p.line() for p in self.problems] + [summary]


class _Problems:
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
        if _SEVERITY_RANK[severity] > _SEVERITY_RANK[found.severity]:
            found.severity = severity

    def sorted(self) -> list[Problem]:
        return sorted(self.by_kind.values(), key=lambda p: -_SEVERITY_RANK[p.severity])


def check_dataset(
    path: str | Path,
    check_audio: bool = True,
    num_workers: int = 2,
    progress: bool = True,
    expected_sample_rate: int = 32_000,
) -> CheckReport:
    """Check a BirdCLEF-layout folder, or a lone train.csv-like file, and report every fault.

    Nothing raises for bad data: each fault becomes a :class:`Problem` (see the module docstring
    for the kinds). A lone CSV gets a metadata-only check; its labels are checked against a
    taxonomy.csv or sample_submission.csv beside it when there is one.

    Args:
        path: dataset folder or CSV file.
        check_audio: open the header of every clip and soundscape (in parallel threads).
        num_workers: threads reading audio headers.
        progress: show a tqdm bar while reading audio headers.
        expected_sample_rate: rate (Hz) the audio should have; others give a warning.

    Raises:
        DatasetError: `path` is neither a folder nor a file.
    """
    start = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: not found; expected a dataset folder or a train.csv file")
    problems = _Problems()
    lone_csv = path.is_file()
    layout = DatasetLayout.from_root(path.parent if lone_csv else path)
    train_csv = path if lone_csv else layout.train_csv
    if not lone_csv:
        _check_files(layout, problems)
    classes = _reference_classes(layout, problems)
    train = _check_train_table(train_csv, classes, problems)
    if not lone_csv and layout.sample_submission_csv.is_file():
        _check_row_ids(layout.sample_submission_csv, problems)
    if lone_csv or not check_audio:
        why = "metadata-only check of a lone CSV" if lone_csv else "check_audio=False"
        problems.add("audio_not_checked", "info", [why])
    elif train is not None:
        _check_audio(layout, train, problems, num_workers, progress, expected_sample_rate)
    n_classes = len(classes) if classes else (train["primary_label"].nunique() if train is not None else 0)
    n_rows = len(train) if train is not None else 0
    return CheckReport(path, n_rows, n_classes, problems.sorted(), time.perf_counter() - start)


def _check_files(layout: DatasetLayout, problems: _Problems) -> None:
    """Required files and folders; optional soundscape folders."""
    required = [layout.train_csv, layout.taxonomy_csv, layout.sample_submission_csv]
    missing = [p.name for p in required if not p.is_file()]
    missing += [f"{layout.train_audio.name}/"] if not layout.train_audio.is_dir() else []
    problems.add("missing_file", "error", [f"{name} not in {layout.root}" for name in missing])
    if not _audio_files(layout.train_soundscapes):
        problems.add("no_train_soundscapes", "warning", [f"{layout.train_soundscapes} missing or empty"])
    if not _audio_files(layout.test_soundscapes):
        problems.add("no_test_soundscapes", "info", [f"{layout.test_soundscapes} missing or empty"])


def _audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _reference_classes(layout: DatasetLayout, problems: _Problems) -> list[str] | None:
    """Classes to check labels against; taxonomy first, then sample_submission columns."""
    found: dict[str, list[str]] = {}
    for name, path, reader in [
        ("taxonomy", layout.taxonomy_csv, read_taxonomy_classes),
        ("submission", layout.sample_submission_csv, read_submission_classes),
    ]:
        if path.is_file():
            try:
                found[name] = reader(path)
            except DatasetError as exc:
                problems.add("unreadable_table", "error", [str(exc)])
    if "taxonomy" in found and "submission" in found:
        taxonomy, submission = found["taxonomy"], found["submission"]
        problems.add("taxonomy_not_in_submission", "warning", sorted(set(taxonomy) - set(submission)))
        problems.add("submission_not_in_taxonomy", "warning", sorted(set(submission) - set(taxonomy)))
    classes = found.get("taxonomy", found.get("submission"))
    if classes is None:
        why = f"no readable taxonomy.csv or sample_submission.csv in {layout.root}"
        problems.add("labels_not_checked", "info", [why])
    return classes


def _check_train_table(path: Path, classes: list[str] | None, problems: _Problems) -> pd.DataFrame | None:
    """Row-level checks of train.csv; returns the table with parsed labels, or None when unusable."""
    if not path.is_file():
        return None
    try:
        raw = read_train_csv(path)
    except DatasetError as exc:
        problems.add("unreadable_table", "error", [str(exc)])
        return None
    missing = [col for col in ("primary_label", "filename") if col not in raw.columns]
    problems.add("missing_columns", "error", [f"{path.name} lacks {col!r}" for col in missing])
    optional = [col for col in ("secondary_labels", "rating") if col not in raw.columns]
    problems.add("missing_optional_columns", "info", [f"{path.name} lacks {col!r}" for col in optional])
    if missing:
        return None
    train = pd.DataFrame({
        "primary_label": raw["primary_label"].fillna("").astype(str).str.strip(),
        "filename": raw["filename"].fillna("").astype(str).str.strip(),
    })
    train["secondary_labels"] = _parse_secondary_column(raw, train["filename"], problems)
    _check_rows(train, problems)
    if classes is not None:
        _check_labels(train, set(classes), problems)
    return train


def _parse_secondary_column(raw: pd.DataFrame, filenames: pd.Series, problems: _Problems) -> list[list[str]]:
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
    bad = [f"{name}: {cell!r}" for name, cell in zip(filenames, cells) if cell in malformed]
    problems.add("malformed_secondary_labels", "error", bad)
    return [parsed[cell] for cell in cells]


def _check_rows(train: pd.DataFrame, problems: _Problems) -> None:
    """Blank primary labels and filenames listed more than once."""
    blank = train.index[train["primary_label"] == ""]
    problems.add("empty_primary_label", "error", [f"row {i + 2}: {train.at[i, 'filename']}" for i in blank])
    repeated = train["filename"].duplicated(keep="first")
    names = train.loc[repeated, "filename"]
    counts = names.value_counts(sort=False)
    examples = [f"{name} ({n + 1} rows)" for name, n in counts.items()]
    problems.add("duplicate_filename", "error", examples, count=int(repeated.sum()))


def _check_labels(train: pd.DataFrame, classes: set[str], problems: _Problems) -> None:
    """Primary and secondary labels that are not classes; counts are rows."""
    primary = train["primary_label"]
    bad = train[(primary != "") & ~primary.isin(classes)]
    examples = [f"{label!r} in {name}" for label, name in zip(bad["primary_label"], bad["filename"])]
    problems.add("unknown_primary_label", "error", examples)
    unknown = [
        (name, sorted(set(labels) - classes))
        for name, labels in zip(train["filename"], train["secondary_labels"])
        if labels and not classes.issuperset(labels)
    ]
    problems.add("unknown_secondary_label", "warning", [f"{labels} in {name}" for name, labels in unknown])


def _check_row_ids(path: Path, problems: _Problems) -> None:
    """row_id must be ``<soundscape_stem>_<end_second>`` and unique."""
    try:
        row_ids = pd.read_csv(path, usecols=["row_id"], dtype=str)["row_id"].fillna("")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        problems.add("unreadable_table", "error", [f"{path}: cannot read row_id ({exc})"])
        return
    bad = [f"{path.name}: {row_id!r}" for row_id in row_ids if not _ROW_ID.fullmatch(row_id)]
    problems.add("bad_row_id", "error", bad)
    repeated = row_ids[row_ids.duplicated()]
    examples = [f"{path.name}: {row_id!r}" for row_id in repeated.unique()]
    problems.add("duplicate_row_id", "error", examples, count=len(repeated))


def _check_audio(
    layout: DatasetLayout,
    train: pd.DataFrame,
    problems: _Problems,
    num_workers: int,
    progress: bool,
    expected_sample_rate: int,
) -> None:
    """Missing clips, then one header read per existing clip and soundscape."""
    if not layout.train_audio.is_dir():
        return  # already a missing_file error; listing every clip as missing adds nothing
    names = [name for name in dict.fromkeys(train["filename"]) if name]
    exists = [os.path.isfile(layout.train_audio / name) for name in names]
    problems.add("missing_audio", "error", [f"train_audio/{n}" for n, ok in zip(names, exists) if not ok])
    clips = [(f"train_audio/{n}", layout.train_audio / n, "unreadable_audio") for n, ok in zip(names, exists) if ok]
    scapes = [
        (f"{folder.name}/{p.name}", p, "unreadable_soundscape")
        for folder in (layout.train_soundscapes, layout.test_soundscapes)
        for p in _audio_files(folder)
    ]
    rates: dict[int, list[str]] = {}
    for label, kind, rate, error in _read_headers(clips + scapes, num_workers, progress):
        if error is not None:
            problems.add(kind, "error", [f"{label}: {error}"])
        elif rate != expected_sample_rate:
            rates.setdefault(rate, []).append(label)
    examples = [f"{rate} Hz: {len(files)} file(s), e.g. {files[0]}" for rate, files in sorted(rates.items())]
    problems.add("unexpected_sample_rate", "warning", examples, count=sum(len(f) for f in rates.values()))


def _read_headers(
    items: list[tuple[str, Path, str]], num_workers: int, progress: bool
) -> list[tuple[str, str, int, str | None]]:
    """(label, kind, sample_rate, error or None) per item, read in parallel threads.

    libsndfile releases the GIL while it parses a header, so threads overlap the file I/O.
    """

    def probe(item: tuple[str, Path, str]) -> tuple[str, str, int, str | None]:
        label, path, kind = item
        try:
            info = audio_info(path)
        except AudioError as exc:
            return label, kind, 0, exc.reason
        if info.frames == 0:
            return label, kind, info.sample_rate, "holds no audio samples (zero frames)"
        return label, kind, info.sample_rate, None

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = pool.map(probe, items)
        bar = tqdm(results, total=len(items), desc="audio headers", unit="file", disable=not progress)
        return list(bar)
