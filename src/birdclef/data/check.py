"""Check a BirdCLEF-layout dataset (or a lone train.csv) before spending GPU hours on it.

Every finding is a :class:`Problem` of one *kind*, counted over the whole dataset with a few
examples, so a 30k-row table with a systematic fault gives one line, not 30k. Kinds:

==========================  ========  ===================================================
kind                        severity  meaning
==========================  ========  ===================================================
missing_file                error     train.csv, taxonomy.csv, sample_submission.csv or train_audio/
no_train_soundscapes        warning   train_soundscapes/ missing or empty (no background, no pseudo-labels)
no_test_soundscapes         info      test_soundscapes/ missing or empty (normal in a Kaggle download)
unreadable_table            error     a CSV that cannot be parsed (or is not UTF-8), or a malformed class header
missing_columns             error     train.csv lacks primary_label or filename
missing_optional_columns    info      train.csv lacks secondary_labels or rating (empty / 0 assumed)
no_rows                     error     train.csv has a header but no rows
empty_primary_label         error     a row with a blank primary_label
bad_filename                error     a blank filename, or one that is absolute or climbs out of train_audio/ (..)
duplicate_filename          error     the same filename on several rows (count: extra rows); one clip is one row
malformed_secondary_labels  error     a secondary_labels cell that does not parse strictly
bad_rating                  warning   a rating that is not a number (treated as unrated)
unknown_primary_label       error     a primary label that is not a class
unknown_secondary_label     warning   a secondary label that is not a class (skipped in training)
labels_not_checked          info      no taxonomy.csv or sample_submission.csv to check labels against
taxonomy_not_in_submission  warning   a taxonomy class with no sample_submission column
submission_not_in_taxonomy  warning   a sample_submission column with no taxonomy row
bad_row_id                  error     a row_id not of the form ``<soundscape_stem>_<end_second>``
duplicate_row_id            error     the same row_id twice in sample_submission.csv
missing_audio               error     a train.csv filename with no file under train_audio/
unreadable_audio            error     a training clip libsndfile cannot open, a directory, zero frames, or a
                                      sample rate outside :data:`~birdclef.audio.io.SAMPLE_RATE_RANGE`
truncated_audio             error     a clip cut short (:mod:`birdclef.audio.integrity`; every loader refuses it)
nonfinite_audio             error     a float-subtype clip holding NaN or Inf (float files are read in full)
unreadable_soundscape       error     the same three for a file in train_ or test_soundscapes/
truncated_soundscape        error
nonfinite_soundscape        error
unexpected_sample_rate      warning   audio not at `expected_sample_rate` (resampled on load); per rate
audio_not_checked           info      audio checks skipped (lone CSV, or ``check_audio=False``)
==========================  ========  ===================================================

The train.csv and class-table kinds come from :mod:`birdclef.data.validate`; ``prepare`` and
``train`` refuse a dataset with any of their errors, using the same lines. Audio errors are not
refused there: those files are skipped and listed in the cache's skipped.csv.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from birdclef.audio.discover import AUDIO_SUFFIXES
from birdclef.audio.integrity import FLOAT_SUBTYPES
from birdclef.audio.io import audio_info, find_nonfinite
from birdclef.audio.segments import is_row_id
from birdclef.data.metadata import DatasetLayout
from birdclef.data.validate import Problem, Problems, check_metadata
from birdclef.errors import AudioError, DatasetError

__all__ = ["CheckReport", "Problem", "check_dataset"]



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
        check_audio: open the header of every clip and soundscape and check it is not truncated (in
            parallel threads, no decoding); float-subtype files are also read in full for NaN/Inf.
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
    problems = Problems()
    lone_csv = path.is_file()
    layout = DatasetLayout.from_root(path.parent if lone_csv else path)
    train_csv = path if lone_csv else layout.train_csv
    if not lone_csv:
        _check_files(layout, problems)
    metadata = check_metadata(layout, train_csv, problems)
    train, classes = metadata.train, metadata.classes
    submission = layout.sample_submission_csv
    if not lone_csv and submission.is_file() and submission not in metadata.unreadable:
        _check_row_ids(submission, problems)
    if lone_csv or not check_audio:
        why = "metadata-only check of a lone CSV" if lone_csv else "check_audio=False"
        problems.add("audio_not_checked", "info", [why])
    elif train is not None:
        _check_audio(layout, train, problems, num_workers, progress, expected_sample_rate)
    n_classes = len(classes) if classes else (train["primary_label"].nunique() if train is not None else 0)
    n_rows = len(train) if train is not None else 0
    return CheckReport(path, n_rows, n_classes, problems.sorted(), time.perf_counter() - start)


def _check_files(layout: DatasetLayout, problems: Problems) -> None:
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
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)  # directories too: reported


def _check_row_ids(path: Path, problems: Problems) -> None:
    """row_id must be ``<soundscape_stem>_<end_second>`` and unique."""
    try:
        row_ids = pd.read_csv(path, usecols=["row_id"], dtype=str)["row_id"].fillna("")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        problems.add("unreadable_table", "error", [f"{path}: cannot read row_id ({exc})"])
        return
    bad = [f"{path.name}: {row_id!r}" for row_id in row_ids if not is_row_id(row_id)]
    problems.add("bad_row_id", "error", bad)
    repeated = row_ids[row_ids.duplicated()]
    examples = [f"{path.name}: {row_id!r}" for row_id in repeated.unique()]
    problems.add("duplicate_row_id", "error", examples, count=len(repeated))


def _check_audio(
    layout: DatasetLayout,
    train: pd.DataFrame,
    problems: Problems,
    num_workers: int,
    progress: bool,
    expected_sample_rate: int,
) -> None:
    """Missing clips, then one header read per existing clip and soundscape."""
    if not layout.train_audio.is_dir():
        return  # already a missing_file error; listing every clip as missing adds nothing
    names = [name for name in dict.fromkeys(train["filename"]) if name]
    exists = [os.path.exists(layout.train_audio / name) for name in names]
    problems.add("missing_audio", "error", [f"train_audio/{n}" for n, ok in zip(names, exists) if not ok])
    clips = [(f"train_audio/{n}", layout.train_audio / n, "audio") for n, ok in zip(names, exists) if ok]
    scapes = [
        (f"{folder.name}/{p.name}", p, "soundscape")
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
    """(label, problem kind, sample_rate, error or None) per (label, path, "audio" or "soundscape") item.

    Headers and container structure only, except float-subtype files, which are scanned for NaN
    and Inf. Parallel threads: libsndfile releases the GIL while it reads, so they overlap the I/O.
    """

    def probe(item: tuple[str, Path, str]) -> tuple[str, str, int, str | None]:
        label, path, what = item
        try:
            info = audio_info(path)
            if info.truncated is not None:
                return label, f"truncated_{what}", info.sample_rate, info.truncated
            if info.defect is not None:
                return label, f"unreadable_{what}", info.sample_rate, info.defect
            if info.subtype in FLOAT_SUBTYPES and (at := find_nonfinite(path)) is not None:
                return label, f"nonfinite_{what}", info.sample_rate, f"holds NaN or Inf samples (first at {at:.3f} s)"
        except AudioError as exc:
            return label, f"unreadable_{what}", 0, exc.reason
        return label, "", info.sample_rate, None

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = pool.map(probe, items)
        bar = tqdm(results, total=len(items), desc="audio headers", unit="file", disable=not progress)
        return list(bar)
