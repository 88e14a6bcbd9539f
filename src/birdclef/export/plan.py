"""``birdclef plan``: which exported models fit the competition's CPU budget?

Each candidate (model folder x backend that can run it) predicts one real soundscape end to end
on this machine -- decoding, front end, every fold, post-processing and blend, the same
``predict_file`` the batch job calls -- a few times; the median is scaled to the target:

    total = files x (decode + predict) per audio minute x (threads here / target cores) x margin

Linear scaling in cores is optimistic for small batches and pessimistic where decoding overlaps
compute (the batch job decodes the next files in threads); the margin (default 1.25) covers that,
a slower scoring CPU, and Kaggle's own overhead. No torch is imported.

A bf16 model folder is timed twice, as bf16 and as fp32 (its IR is float32): whether bf16 is the
faster one depends on the CPU (AMX, or fast AVX512-BF16 units), not on its flags, and the plan
says so when bf16 was measured slower here.

Example:
    >>> print(plan_budget([Path("models/b0-bf16"), Path("models/v3-bf16")], files=700, minutes=90, cores=4))
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from birdclef.audio.io import load_audio
from birdclef.errors import BirdclefError
from birdclef.export.runtime import BackendUnavailableError, ExportedPredictor, available_backends, read_metadata
from birdclef.export.sources import run_audio
from birdclef.audio.discover import is_audio_name

AUDIO_MINUTE_S = 60.0


@dataclass
class Candidate:
    """One model folder on one backend, timed here."""

    model: str
    backend: str
    precision: str
    decode_s: float = float("nan")
    """Median seconds to decode one audio minute."""
    predict_s: float = float("nan")
    """Median seconds of ``predict_file`` per audio minute (front end, folds, post-processing)."""
    total_s: float = float("nan")
    """Predicted seconds for all files on the target cores, margin included."""
    fits: bool = False
    note: str = ""


@dataclass
class BudgetPlan:
    """The timed candidates and the budget; ``str(plan)`` is the printable table."""

    candidates: list[Candidate]
    files: int
    minutes: float
    cores: int
    margin: float
    threads: int
    audio: str
    notes: list[str] = field(default_factory=list)

    def fitting(self) -> list[Candidate]:
        """Candidates that fit, fastest first."""
        return sorted((c for c in self.candidates if c.fits), key=lambda c: c.total_s)

    def table(self) -> str:
        head = (f"budget: {self.files} one-minute files in {self.minutes:g} min on {self.cores} cores "
                f"(timed here on {self.threads} threads with {self.audio}; margin x{self.margin:g})")
        rows = [("model", "backend", "precision", "decode s/min", "predict s/min", "total min", "fits")]
        for c in self.candidates:
            if c.note:
                rows.append((c.model, c.backend, c.precision, "-", "-", "-", c.note))
                continue
            rows.append((c.model, c.backend, c.precision, f"{c.decode_s:.3f}", f"{c.predict_s:.3f}",
                         f"{c.total_s / 60:.1f}", "yes" if c.fits else "no"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([head, *lines, *self.notes])

    def __str__(self) -> str:
        return self.table()


def median_time(fn: Callable[[], object], repeats: int, warmup: bool = False) -> float:
    """Median wall seconds of `repeats` calls of `fn` (after one untimed call with `warmup`)."""
    if warmup:
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _first_audio(folder: Path) -> Path | None:
    files = sorted(p for p in folder.iterdir() if is_audio_name(p.name) and p.is_file())
    return files[0] if files else None


def _sample_file(audio: Path | None, metas: Sequence[dict]) -> Path | None:
    """`audio` itself, the first audio file of that folder, or of the models' runs' own data."""
    if audio is not None:
        if audio.is_file():
            return audio
        if not audio.is_dir():
            raise BirdclefError(f"{audio}: audio for timing not found")
        return _first_audio(audio)
    for run in (Path(r["path"]) for meta in metas for r in meta.get("runs", [])):
        found = run_audio(run) if run.exists() else None
        if found is not None and found.recordings and found.recordings[0].path is not None:
            return found.recordings[0].path
    return None


def _candidates(models: Sequence[Path], backends: Sequence[str] | None) -> list[tuple[Path, str, str, dict]]:
    """(model folder, backend, precision to run, metadata): the format's own runtime, OpenVINO for
    fp32 ONNX files too, and a bf16 model also as fp32."""
    rows = []
    for model in models:
        meta = read_metadata(model)
        runnable = ["onnx", "openvino"] if meta["format"] == "onnx" and meta["precision"] == "fp32" else [meta["format"]]
        precisions = ["bf16", "fp32"] if meta["precision"] == "bf16" else [meta["precision"]]
        rows += [(Path(model), b, p, meta) for b in runnable if backends is None or b in backends for p in precisions]
    return rows


def time_candidate(model: Path, backend: str, precision: str, wave: np.ndarray, sample_rate: int,
                   threads: int, repeats: int) -> Candidate:
    """Median ``predict_file`` seconds per audio minute of one model folder on one backend."""
    cand = Candidate(model.name, backend, precision)
    try:
        predictor = ExportedPredictor(model, backend=backend, threads=threads, precision=precision)
    except BackendUnavailableError as exc:
        cand.note = f"skipped: {exc}"
        return cand
    minutes = len(wave) / sample_rate / AUDIO_MINUTE_S
    # the untimed first call takes first-call allocations and kernel selection
    cand.predict_s = median_time(lambda: predictor.predict_file(wave), repeats, warmup=True) / minutes
    return cand


def bf16_notes(candidates: Sequence[Candidate]) -> list[str]:
    """A line for each bf16 model measured slower than the same model in fp32."""
    fp32 = {(c.model, c.backend): c for c in candidates if c.precision == "fp32"}
    notes = []
    for c in candidates:
        other = fp32.get((c.model, c.backend))
        if c.precision == "bf16" and other is not None and c.predict_s > other.predict_s:
            notes.append(f"{c.model}: bf16 was measured {c.predict_s / other.predict_s:.2f}x slower than fp32 on this "
                         "CPU (bf16 is only faster on some CPUs, e.g. with AMX); run it as fp32 or export int8")
    return notes


def plan_budget(models: Sequence[str | Path], files: int = 700, minutes: float = 90.0, cores: int = 4,
                margin: float = 1.25, backends: Sequence[str] | None = None, audio: str | Path | None = None,
                threads: int | None = None, repeats: int = 3) -> BudgetPlan:
    """Time each model folder on each backend here and predict its total for the budget.

    Args:
        models: exported model folders.
        files: one-minute soundscapes to score (the competition: about 700).
        minutes: the time limit.
        cores: CPU cores of the scoring machine (the competition: 4).
        margin: safety factor on the predicted total (>= 1).
        backends: restrict to these backends (default: every installed one that can run the model).
        audio: a soundscape, or a folder whose first file is used; default the first soundscape of
            the models' runs' own data (:func:`~birdclef.export.sources.run_audio`), else 60 s of
            synthetic noise (decoding then is not timed).
        threads: runtime threads here (default: all cores of this machine).
        repeats: timed calls per candidate (median).

    Returns:
        The plan; ``print(plan)`` shows the table, and a note for each bf16 model measured slower
        than fp32 here.

    Raises:
        BirdclefError: a folder is not an exported model, or bad numbers.
    """
    if files <= 0 or minutes <= 0 or cores <= 0 or margin < 1:
        raise BirdclefError(f"plan needs files, minutes, cores > 0 and margin >= 1; got {files}, {minutes}, {cores}, {margin}")
    threads = threads or os.cpu_count() or 1
    rows = _candidates([Path(m) for m in models], backends)
    if not rows:
        raise BirdclefError(f"no candidate: none of {list(models)} runs on the backends {backends}")
    sample_rate = int(rows[0][3]["sample_rate"])
    sample = _sample_file(Path(audio) if audio else None, [meta for *_, meta in rows])
    plan = BudgetPlan([], files, minutes, cores, margin, threads, sample.name if sample else "60 s of synthetic noise")
    wave, decode_s = _timing_audio(sample, sample_rate, repeats, plan.notes)
    installed = available_backends()
    for model, backend, precision, _ in rows:
        if backend not in installed:
            plan.candidates.append(Candidate(model.name, backend, precision, note=f"skipped: {backend} not installed"))
            continue
        cand = time_candidate(model, backend, precision, wave, sample_rate, threads, repeats)
        cand.decode_s = decode_s
        cand.total_s = files * (decode_s + cand.predict_s) * threads / cores * margin
        cand.fits = bool(cand.total_s <= minutes * 60)
        plan.candidates.append(cand)
    plan.notes += bf16_notes(plan.candidates)
    return plan


def _timing_audio(sample: Path | None, sample_rate: int, repeats: int, notes: list[str]) -> tuple[np.ndarray, float]:
    """(waveform to time on, seconds to decode one audio minute of it); synthetic noise without `sample`."""
    if sample is None:
        notes.append("no real soundscape found (no --audio, and the models' runs record no soundscapes): "
                     "decoding not timed")
        return np.random.default_rng(0).normal(0, 0.05, int(AUDIO_MINUTE_S * sample_rate)).astype(np.float32), 0.0
    wave = load_audio(sample, sample_rate)
    return wave, median_time(lambda: load_audio(sample, sample_rate), repeats) / (len(wave) / sample_rate / AUDIO_MINUTE_S)
