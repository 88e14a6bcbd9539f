"""The `birdclef predict` batch job: resumable, locked, atomic, and tolerant of broken soundscapes.

It drives any :class:`~birdclef.infer.base.Predictor` (torch runs or an exported graph) and imports
no torch itself.

- One writer per output: the job holds an exclusive lock (``.<out>.lock``) from start to end; a second
  job with the same ``--out`` fails at once.
- Every finished soundscape is durable: its rows go atomically to
  ``.<out>.parts/part-<key>.parquet``, the key a hash of the file's path, size and modification time, so
  no part can overwrite another and a killed job loses nothing it finished. A re-run with the same
  settings skips the soundscapes that have a part. The final CSV is written atomically, then the parts
  are removed.
- A part or ``meta.json`` damaged by a crash or a full disk follows :mod:`birdclef.utils.state`: a part is set
  aside (``.corrupt``) and its soundscape redone; an unreadable ``meta.json`` stops the job, saying what to do.
- Soundscapes that cannot be decoded are skipped and listed in ``<out stem>.skipped.csv``.
- A ``rank`` or ``quantile`` blend (:mod:`birdclef.infer.rank`) ranks each run over all rows: a file's part then
  holds each run's rows (:func:`~birdclef.infer.base.iter_run_outputs`), and the runs are blended once every file
  is scored (:func:`blend_parts`). Resuming works as for a ``mean`` blend; a blend over all rows holds every
  run's scores of every row in memory at the end (runs x rows x classes float32, and twice that in float64).

Rows and columns: without a sample_submission, every row of every decoded soundscape, in file order.
With one, exactly its rows in its order and its columns (see :mod:`birdclef.infer.sample`): predicted
windows it lacks are listed in ``<out stem>.extra_rows.csv``; its rows without a prediction get the
fallback and are reported per soundscape in ``<out stem>.fallback_rows.csv``.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from birdclef.audio.discover import AUDIO_SUFFIXES, discover_audio
from birdclef.errors import BirdclefError, BirdclefWarning
from birdclef.infer.base import Predictor, iter_predictions, iter_run_outputs
from birdclef.infer.rank import MEAN
from birdclef.infer.sample import SampleAlignment, align_to_sample, check_sample_matches, read_sample
from birdclef.utils.io import check_output, exclusive_lock, write_csv_atomic, write_json_atomic, write_parquet_atomic
from birdclef.utils.state import intact, read_settings

REPORTS = ("skipped", "extra_rows", "fallback_rows")
"""Side reports of a job, ``<out stem>.<name>.csv``; each is written when it has rows, else removed."""


@dataclass
class PredictSummary:
    out: Path
    n_files: int = 0
    """Soundscapes predicted (including those resumed from partial results)."""
    n_rows: int = 0
    resumed_files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) of soundscapes that could not be decoded."""
    n_fallback_rows: int = 0
    """sample_submission rows filled with the fallback."""
    n_fallback_files: int = 0
    """Soundscapes with such rows (missing, broken or shorter than the sample expects)."""
    n_extra_rows: int = 0
    """Predicted windows the sample_submission does not list (left out of the CSV)."""
    elapsed_s: float = 0.0

    @property
    def skipped_path(self) -> Path:
        return report_path(self.out, "skipped")

    @property
    def extra_path(self) -> Path:
        return report_path(self.out, "extra_rows")

    @property
    def fallback_path(self) -> Path:
        return report_path(self.out, "fallback_rows")


def report_path(out: Path, name: str) -> Path:
    """``<out stem>.<name>.csv`` beside `out` (name: one of :data:`REPORTS`)."""
    return out.with_name(f"{out.stem}.{name}.csv")


def skipped_report_path(out: Path) -> Path:
    return report_path(out, "skipped")


def _check_stems(paths: list[Path]) -> None:
    """Row ids are ``<stem>_<end_s>``: two files with one stem would give the same rows."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise BirdclefError(f"{seen[path.stem]} and {path} share the name {path.stem!r}; row_ids are "
                                "<stem>_<end_second>, so one submission cannot hold both: rename or remove one")
        seen[path.stem] = path


def list_soundscapes(source: Path | Sequence[Path]) -> list[Path]:
    """Audio files of a folder (sorted; what is passed over is said, :mod:`birdclef.audio.discover`), or the
    given list; an empty result or a repeated stem is an error.

    Two names of one recording (links) are both kept: row_ids come from the names, and a submission must
    hold the rows of every name the sample_submission may list. Each name is scored under its own rows
    (see :meth:`PartialResults.part`) and the pair is said.
    """
    if isinstance(source, (str, Path)):
        found = discover_audio(Path(source), recursive=False, unique=False, what="soundscape folder",
                               items="soundscapes").warn()
        for rel, first in found.duplicates.items():
            warnings.warn(f"{found.root / rel} is the same recording as {found.root / first} (a link): scored "
                          "under both names", BirdclefWarning, stacklevel=2)
        paths = found.paths
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise BirdclefError(f"no soundscapes ({', '.join(AUDIO_SUFFIXES)}) in {source}")
    _check_stems(paths)
    return paths


class PartialResults:
    """One Parquet part per finished soundscape beside the output, keyed by the settings that made them."""

    def __init__(self, out: Path, settings: dict):
        self.dir = out.with_name(f".{out.name}.parts")
        meta = self.dir / "meta.json"
        if meta.is_file() and read_settings(meta) != settings:
            raise BirdclefError(f"{self.dir} holds partial results made with other runs or settings; "
                                "delete it, or re-run with the same ones to resume")
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(settings, meta)

    def part(self, path: Path) -> Path:
        """Where `path`'s rows go: named by its own absolute path (not the resolved one: two links to one
        recording have rows of their own names), size and mtime (a changed file is redone)."""
        try:
            stat = path.stat()
            identity = f"{path.absolute()}\0{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:  # vanished or unreadable: no part can match; decoding reports it
            identity = f"{path.absolute()}\0missing"
        key = hashlib.sha1(identity.encode()).hexdigest()[:20]
        return self.dir / f"part-{key}.parquet"

    def has(self, path: Path) -> bool:
        return self.part(path).is_file()

    def intact(self, path: Path, part: Path | None = None, kind: str = "parquet") -> bool:
        """Whether `path` has a whole part (`part`: where, if not :meth:`part`); a damaged one is set aside
        (``.corrupt``) and the file redone (:mod:`birdclef.utils.state`)."""
        return intact(self.part(path) if part is None else part, kind, f"{path.name} is redone")

    def save(self, path: Path, rows: pd.DataFrame) -> None:
        write_parquet_atomic(rows, self.part(path))

    def frames(self, paths: Sequence[Path]) -> list[pd.DataFrame]:
        """The part of each of those `paths` that has one, in the order of `paths`."""
        return [pd.read_parquet(part) for part in (self.part(p) for p in paths) if part.is_file()]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def predict_to_csv(
    soundscapes: Path | Sequence[Path],
    predictor: Predictor,
    out: Path,
    sample_submission: Path | None = None,
    num_workers: int = 2,
    progress: bool = True,
) -> PredictSummary:
    """Predict a folder (or list) of soundscapes into a submission CSV; locked and resumable (module docstring).

    Args:
        soundscapes: folder of audio files, or a list of files.
        predictor: e.g. ``TorchPredictor([run])`` or an exported model's ``ExportedPredictor``; a ``rank`` or
            ``quantile`` blend is blended over all rows at the end (module docstring).
        out: the CSV to write (atomically).
        sample_submission: when given, the output has exactly its rows (in order) and columns.
        num_workers: threads decoding the next files while the model runs (0: none).

    Raises:
        BirdclefError: `out` is not writable or another job writes it; no soundscapes, two with one stem,
            or none decodable; the partial results were made with other settings.
        SubmissionError: the sample is unreadable or malformed, names none of the soundscapes, lists a
            class the models do not score, or not one of its rows got a prediction.
    """
    started, out = time.perf_counter(), check_output(out, "file")
    sample = read_sample(sample_submission) if sample_submission is not None else None
    paths = list_soundscapes(soundscapes)
    if sample is not None:
        check_sample_matches(sample, str(sample_submission), paths, soundscapes if isinstance(soundscapes, (str, Path))
                             else "the given files")
    with exclusive_lock(out, "birdclef predict"):
        partial = PartialResults(out, predictor.settings())
        todo = [p for p in paths if not partial.intact(p)]
        summary = PredictSummary(out, resumed_files=len(paths) - len(todo))
        bar = tqdm(total=len(paths), initial=summary.resumed_files, desc="predict", unit="file", disable=not progress)
        score = iter_predictions if predictor.blend == MEAN else iter_run_outputs
        for path, rows, error in score(todo, predictor, num_workers):
            if rows is None:
                summary.skipped.append((str(path), error))
            else:
                partial.save(path, rows)
            bar.update(1)
        bar.close()
        _finish(partial, paths, sample, sample_submission, summary, predictor)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _write_report(summary: PredictSummary, name: str, table: pd.DataFrame | None) -> None:
    path = report_path(summary.out, name)
    if table is not None and len(table):
        write_csv_atomic(table, path)
    elif path.exists():
        path.unlink()


def blend_parts(frames: Sequence[pd.DataFrame], predictor: Predictor) -> pd.DataFrame:
    """The prediction rows of a blend over all rows, from each file's part of stacked run outputs.

    Args:
        frames: one part per file in file order, as :func:`~birdclef.infer.base.iter_run_outputs` makes them.
        predictor: the predictor that scored them (its :meth:`~birdclef.infer.base.Predictor.blend_rows`).

    Returns:
        ``row_id`` plus one float32 column per class, the files' rows in order.
    """
    classes = list(predictor.classes)
    runs = [[frame[frame["run"] == r] for frame in frames] for r in range(len(predictor.weights))]
    per_run = [np.concatenate([rows[classes].to_numpy(np.float32) for rows in files]) for files in runs]  # R x (N, K)
    probs = predictor.blend_rows(per_run, [len(rows) for rows in runs[0]])
    out = pd.DataFrame(np.asarray(probs, dtype=np.float32), columns=classes)
    out.insert(0, "row_id", pd.concat([rows["row_id"] for rows in runs[0]], ignore_index=True))
    return out


def _finish(partial: PartialResults, paths: list[Path], sample: pd.DataFrame | None, sample_path: Path | None,
            summary: PredictSummary, predictor: Predictor) -> None:
    """Write the side reports, then the CSV (atomically), then drop the parts."""
    skipped = pd.DataFrame(summary.skipped, columns=["file", "reason"])
    _write_report(summary, "skipped", skipped)
    frames = partial.frames(paths)
    if not frames:
        raise BirdclefError(f"no soundscape could be decoded; see {summary.skipped_path}")
    if predictor.blend == MEAN:
        pred = pd.concat(frames, ignore_index=True)
    else:
        pred = blend_parts(frames, predictor)
    summary.n_files = sum(partial.has(p) for p in paths)
    aligned: SampleAlignment | None = None
    if sample is not None:
        files = {p.stem: str(p) for p in paths}
        aligned = align_to_sample(pred, sample, str(sample_path), files, {Path(f).stem: r for f, r in summary.skipped})
        pred = aligned.frame
        summary.n_fallback_rows, summary.n_fallback_files = aligned.n_fallback_rows, len(aligned.fallback)
        summary.n_extra_rows = len(aligned.extra)
    _write_report(summary, "extra_rows", None if aligned is None else aligned.extra)
    _write_report(summary, "fallback_rows", None if aligned is None else aligned.fallback)
    write_csv_atomic(pred, summary.out)
    summary.n_rows = len(pred)
    partial.remove()
