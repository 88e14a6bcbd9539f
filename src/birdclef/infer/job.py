"""The `birdclef predict` batch job: resumable, atomic, and tolerant of broken soundscapes.

It drives any :class:`~birdclef.infer.base.Predictor` (torch runs or an exported graph) and imports
no torch itself.

Finished files are flushed every `flush_every` files to ``.<out>.parts/part-NNNNN.parquet``; a
re-run with the same settings skips them, so an interrupted job loses at most one chunk. The final
CSV is written atomically, then the parts are removed.

Rows and columns: with a sample_submission, columns are exactly its columns and its rows come
first in its order; rows of files it does not list follow (on Kaggle the sample lists only a few
rows of the hidden test set). Rows it lists that could not be predicted (a broken or missing
soundscape) get the fallback: each class's mean probability over all predicted rows, a neutral
value for the ranking metric. Broken files are listed in ``<out>.skipped.csv``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from birdclef.errors import BirdclefError, SubmissionError
from birdclef.infer.base import Predictor, iter_predictions
from birdclef.infer.postprocess import parse_row_id
from birdclef.utils.io import read_json, write_csv_atomic, write_json_atomic, write_parquet_atomic

AUDIO_SUFFIXES = (".ogg", ".flac", ".wav", ".mp3")


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
    elapsed_s: float = 0.0

    @property
    def skipped_path(self) -> Path:
        return skipped_report_path(self.out)


def skipped_report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".skipped.csv")


def list_soundscapes(source: Path | Sequence[Path]) -> list[Path]:
    """Audio files of a folder (sorted), or the given list; an empty result is an error."""
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise BirdclefError(f"{folder}: soundscape folder not found")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise BirdclefError(f"no soundscapes ({', '.join(AUDIO_SUFFIXES)}) in {source}")
    return paths


class PartialResults:
    """Chunks of finished rows beside the output file, keyed by the settings that made them."""

    def __init__(self, out: Path, settings: dict):
        self.dir = out.with_name(f".{out.name}.parts")
        meta = self.dir / "meta.json"
        if meta.is_file() and read_json(meta) != settings:
            raise BirdclefError(f"{self.dir} holds partial results made with other runs or settings; "
                                "delete it, or re-run with the same ones to resume")
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(settings, meta)
        self.buffer: list[pd.DataFrame] = []

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))

    def load(self) -> pd.DataFrame | None:
        parts = self.parts()
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else None

    def add(self, rows: pd.DataFrame) -> None:
        self.buffer.append(rows)

    def flush(self) -> None:
        if self.buffer:
            write_parquet_atomic(pd.concat(self.buffer, ignore_index=True), self.dir / f"part-{len(self.parts()):05d}.parquet")
            self.buffer = []

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def align_to_sample(pred: pd.DataFrame, sample: pd.DataFrame, sample_name: str = "sample_submission") -> tuple[pd.DataFrame, int]:
    """Columns and row order of `sample` (see module docstring); returns (frame, fallback row count)."""
    if "row_id" not in sample.columns:
        raise SubmissionError(f"{sample_name} has no row_id column")
    columns = [c for c in sample.columns if c != "row_id"]
    missing = [c for c in columns if c not in pred.columns]
    if missing:
        raise SubmissionError(f"the models do not score {len(missing)} class(es) of {sample_name}: {missing[:5]}")
    pred = pred.set_index("row_id")[columns]
    fallback = pred.mean() if len(pred) else pd.Series(0.0, index=columns)
    wanted = sample["row_id"].astype(str)
    absent = ~wanted.isin(pred.index)
    extra = pred.index[~pred.index.isin(wanted)]
    filled = pd.DataFrame([fallback.to_numpy()] * int(absent.sum()), columns=columns, index=wanted[absent])
    out = pd.concat([pred, filled]).reindex(list(wanted) + list(extra))
    return out.rename_axis("row_id").reset_index(), int(absent.sum())


def predict_to_csv(
    soundscapes: Path | Sequence[Path],
    predictor: Predictor,
    out: Path,
    sample_submission: Path | None = None,
    num_workers: int = 2,
    progress: bool = True,
    flush_every: int = 32,
) -> PredictSummary:
    """Predict a folder (or list) of soundscapes into a submission CSV; resumable (module docstring).

    Args:
        soundscapes: folder of audio files, or a list of files.
        predictor: e.g. ``TorchPredictor([run])`` or an exported model's ``ExportedPredictor``.
        out: the CSV to write (atomically).
        sample_submission: when given, the output has exactly its columns, its rows first in its order.
        num_workers: threads decoding the next files while the model runs (0: none).
        flush_every: finished files per partial-results chunk.
    """
    started, out = time.perf_counter(), Path(out)
    sample = _read_sample(sample_submission) if sample_submission is not None else None
    paths = list_soundscapes(soundscapes)
    partial = PartialResults(out, predictor.settings())
    done_rows = partial.load()
    done = set() if done_rows is None else {parse_row_id(r)[0] for r in done_rows["row_id"]}
    todo = [p for p in paths if p.stem not in done]
    summary = PredictSummary(out, resumed_files=len(paths) - len(todo))
    bar = tqdm(total=len(paths), initial=summary.resumed_files, desc="predict", unit="file", disable=not progress)
    for k, (path, rows, error) in enumerate(iter_predictions(todo, predictor, num_workers), 1):
        if rows is None:
            summary.skipped.append((str(path), error))
        else:
            partial.add(rows)
        if k % flush_every == 0:
            partial.flush()
        bar.update(1)
    bar.close()
    partial.flush()
    _finish(partial, sample, sample_submission, summary)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _read_sample(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"row_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SubmissionError(f"{path}: cannot read sample submission ({exc})") from None


def _finish(partial: PartialResults, sample: pd.DataFrame | None, sample_path: Path | None, summary: PredictSummary) -> None:
    """Write the skipped-files report, then the aligned CSV (atomically), then drop the parts."""
    report = summary.skipped_path
    if summary.skipped:
        write_csv_atomic(pd.DataFrame(summary.skipped, columns=["file", "reason"]), report)
    elif report.exists():
        report.unlink()
    pred = partial.load()
    if pred is None and sample is None:
        raise BirdclefError(f"no soundscape could be decoded; see {report}")
    summary.n_files = 0 if pred is None else len({parse_row_id(r)[0] for r in pred["row_id"]})
    if pred is None:
        pred = pd.DataFrame(columns=list(sample.columns))
    if sample is not None:
        pred, summary.n_fallback_rows = align_to_sample(pred, sample, str(sample_path))
    write_csv_atomic(pred, summary.out)
    summary.n_rows = len(pred)
    partial.remove()
