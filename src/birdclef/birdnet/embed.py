"""``birdclef embed``: a foundation model's embeddings of audio files into one Parquet table; locked and resumable.

Any foundation model (:mod:`birdclef.zoo.foundation`: BirdNET v2.4, Perch v2, an ONNX card model, the
placeholder) cuts the files on its own grid: each file (decoded to the model's ``sample_rate``, mono, by
:func:`~birdclef.audio.io.load_audio`) is cut into windows of the model's ``window_s`` starting every `hop_s`
seconds (default: the model's ``hop_s`` where it names one, else its window; BirdNET: 3 s windows every 3 s). A
tail window is zero-padded as BirdNET-Analyzer and birdnetlib do, and kept when it holds at least `min_tail_s`
seconds of audio (BirdNET-Analyzer's ``SIG_MINLEN``, 1.0 s); a file's first window is always kept, so a 0.5 s
file gives one row. Each window gives one row of the table:

- ``file``: the path relative to the input folder (POSIX separators; for a list of files, relative
  to their common folder);
- ``start_s``, ``end_s`` (float64): the window's span in the file; ``end_s`` is ``start_s + window_s`` except
  for the padded tail, where it is the file's end;
- ``emb_0`` ... ``emb_{D-1}`` (float32): the model's embedding (BirdNET: the 1024 ``GLOBAL_AVG_POOL``
  activations, the input of its classifier, :func:`~birdclef.birdnet.model.output_layer`; Perch v2: 1536).

One float32 column per dimension rather than one list column: pandas reads it as plain numeric
columns (``df.filter(regex=r"^emb_")``, straight into scikit-learn), never as an object column of
arrays, and polars / DuckDB see ordinary columns. The table's schema metadata (key ``birdclef``) records
the model (``foundation``: kind, file, SHA-256, licence, rate, window; ``spec``: how it was named), hop and
licence.

The job holds a lock on `out` (a second job on it fails at once); every finished file's rows are
written atomically to an ``.npz`` part in ``.<out>.parts/`` (keyed and settings-checked by
:class:`~birdclef.infer.job.PartialResults`), so a re-run with the same settings skips the files already
done. The output is then assembled part by part (never holding every row in memory) into one atomic
write, and the parts are removed. Files that cannot be decoded are skipped and listed in
``<out stem>.skipped.csv``; the next file decodes in a thread while the model runs.

``engine="dask"`` does the same per-file work as Dask tasks (:mod:`birdclef.utils.cluster`): one task per file, or
per group of consecutive small files (up to :data:`GROUP_BYTES` on disk, less where that would leave fewer than 4
tasks per worker thread), each worker building the model once
(`rebuild`) and writing each file's part into the same ``.<out>.parts/`` folder, so a killed run resumes as a
plain one does and either engine gives the same table. Every worker must see the audio and `out` at the same
paths. A task that fails on every retry (a model error, not a broken file) lists its files as skipped.

The embeddings derive from the model's weights (BirdNET's: CC BY-NC-SA 4.0), so does whatever is made from them.

Example:
    >>> model = foundation_model("perch-v2:/models/perch_v2.onnx", threads=2)   # birdclef.zoo.build
    >>> summary = embed_to_parquet(Path("train_audio"), Path("emb.parquet"), model, spec="perch-v2:...")
    >>> frame = pd.read_parquet("emb.parquet")  # file, start_s, end_s, emb_0 ... emb_1535
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from birdclef.audio.discover import discover_audio
from birdclef.audio.io import load_audio
from birdclef.birdnet.model import CHUNK_S, CHUNK_SAMPLES, SAMPLE_RATE, model_name
from birdclef.errors import AudioError, BirdclefError
from birdclef.infer.base import iter_decoded
from birdclef.infer.job import PartialResults, report_path
from birdclef.utils.io import atomic_path, exclusive_lock, write_atomic, write_csv_atomic

HOP_S = 3.0
"""BirdNET's own grid: seconds between its 3 s windows (what a model without ``hop_s`` or ``window_s`` gets)."""
MIN_TAIL_S = 1.0
"""A zero-padded tail chunk is kept when it holds at least this much audio (BirdNET-Analyzer's SIG_MINLEN)."""
ROW_GROUP_ROWS = 4096
"""Rows per Parquet row group of the assembled output (parts hold one file each)."""
GROUP_BYTES = 8 << 20
"""With ``engine="dask"``: consecutive files are grouped into one task until their files reach this many bytes
(8 MiB: ~15 min of Ogg at 32 kHz, ~15 s of BirdNET on one core): each task costs the scheduler and the driver a
few milliseconds and a round trip, which 35,000 clips of a few seconds, one task each, would pay 35,000 times."""
GROUP_FILES = 256
"""With ``engine="dask"``: at most this many files per task."""


class EmbeddingModel(Protocol):
    """What :func:`embed_to_parquet` needs of a foundation model (:class:`~birdclef.zoo.foundation.FoundationModel`;
    ``sample_rate``, ``window_s`` and ``hop_s`` default to BirdNET's 48 kHz, 3 s and 3 s where a model has none)."""

    path: Path
    embedding_size: int

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(N, window samples) float32 windows -> ((N, labels) logits or None, (N, embedding_size) embeddings)."""


@dataclass
class EmbedSummary:
    out: Path
    n_files: int = 0
    """Files embedded (including those resumed from partial results)."""
    n_rows: int = 0
    resumed_files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) of the files that could not be decoded."""
    elapsed_s: float = 0.0

    @property
    def skipped_path(self) -> Path:
        return report_path(self.out, "skipped")


def embedding_columns(size: int) -> list[str]:
    """``["emb_0", ..., f"emb_{size - 1}"]``, the order of the output's embedding columns."""
    return [f"emb_{i}" for i in range(size)]


def list_audio(source: Path | Sequence[Path]) -> tuple[list[Path], list[str]]:
    """(paths, names): a folder's recordings (:func:`birdclef.audio.discover.discover_audio`: recursive, one name
    per resolved file, what is passed over said), or the given files (repeats dropped).

    Names are relative to the folder, or to the given files' common folder, in POSIX form.

    Raises:
        BirdclefError: the folder does not exist, or no audio files were found or given.
    """
    if isinstance(source, (str, Path)):
        found = discover_audio(Path(source), recursive=True, unique=True).warn()
        return found.paths, [r.rel for r in found.recordings]
    else:
        paths = list(dict.fromkeys(Path(p) for p in source))  # a file given twice is embedded once
        root = Path(os.path.commonpath([p.absolute().parent for p in paths])) if paths else Path()
    if not paths:
        raise BirdclefError("no audio files given")
    return paths, [p.absolute().relative_to(root.absolute()).as_posix() for p in paths]


def model_grid(model: EmbeddingModel) -> tuple[int, float, float]:
    """(sample rate (Hz), window (s), default hop (s)) of a model: its ``hop_s`` where it names one, else its window."""
    rate = int(getattr(model, "sample_rate", SAMPLE_RATE))
    window_s = float(getattr(model, "window_s", CHUNK_S))
    return rate, window_s, float(getattr(model, "hop_s", None) or window_s)


def chunk_starts(n_samples: int, hop_samples: int, min_tail_samples: int,
                 window_samples: int = CHUNK_SAMPLES) -> np.ndarray:
    """Start sample of each window: every `hop_samples` while a window holds >= `min_tail_samples` (the first
    always)."""
    starts = np.arange(0, max(n_samples, 1), hop_samples)
    keep = (n_samples - starts >= min(min_tail_samples, window_samples)) | (starts == 0)
    return starts[keep]


def wave_chunks(wave: np.ndarray, hop_s: float, min_tail_s: float = MIN_TAIL_S, sample_rate: int = SAMPLE_RATE,
                window_s: float = CHUNK_S) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows (N, window samples) float32, start_s (N,), end_s (N,)) of a wave at `sample_rate`; the tail
    zero-padded (default: BirdNET's 3 s windows at 48 kHz).

    `windows` is a read-only strided view of one zero-padded copy of the wave: no per-window copies, so an
    hour-long file at a 1 s hop costs one copy of its samples, not three.
    """
    size = int(round(window_s * sample_rate))
    hop = max(1, int(round(hop_s * sample_rate)))
    starts = chunk_starts(len(wave), hop, int(round(min_tail_s * sample_rate)), size)
    padded = np.zeros(int(starts[-1]) + size, dtype=np.float32)
    padded[: min(len(wave), len(padded))] = wave[: len(padded)]
    chunks = np.lib.stride_tricks.sliding_window_view(padded, size)[::hop]  # rows = `starts`
    ends = np.minimum(starts + size, len(wave))
    return chunks, starts / sample_rate, ends / sample_rate


def embed_wave(model: EmbeddingModel, wave: np.ndarray, hop_s: float | None = None,
               min_tail_s: float = MIN_TAIL_S) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start_s (N,), end_s (N,), embeddings (N, embedding_size) float32) of one wave at the model's rate."""
    rate, window_s, default_hop = model_grid(model)
    chunks, start_s, end_s = wave_chunks(wave, default_hop if hop_s is None else hop_s, min_tail_s, rate, window_s)
    embeddings = np.asarray(model.infer(chunks)[1], dtype=np.float32)
    if embeddings.shape != (len(chunks), model.embedding_size):
        raise RuntimeError(f"{model.path}: {len(chunks)} windows gave embeddings of shape {embeddings.shape}")
    return start_s, end_s, embeddings


def rows_table(name: str, start_s: np.ndarray, end_s: np.ndarray, embeddings: np.ndarray) -> pa.Table:
    """One file's rows as the output's columns: file, start_s, end_s, emb_0 ... emb_{size-1}."""
    columns = np.ascontiguousarray(embeddings.T)  # one contiguous array per Parquet column
    arrays = [pa.array([name] * len(start_s), pa.string()), pa.array(start_s, pa.float64()),
              pa.array(end_s, pa.float64())] + [pa.array(c) for c in columns]
    return pa.Table.from_arrays(arrays, names=["file", "start_s", "end_s", *embedding_columns(embeddings.shape[1])])


def _part(partial: PartialResults, path: Path) -> Path:
    """A file's part: plain ``.npz`` arrays (a 1027-column Parquet per file costs ~90 ms to write and read back)."""
    return partial.part(path).with_suffix(".npz")


def _save_part(tmp: Path, start_s: np.ndarray, end_s: np.ndarray, embeddings: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, start_s=start_s, end_s=end_s, embeddings=embeddings)


def _embed_into(model: EmbeddingModel, wave: np.ndarray, part: Path, hop_s: float, min_tail_s: float) -> None:
    """Embed one decoded file and write its part atomically."""
    rows = embed_wave(model, wave, hop_s, min_tail_s)
    write_atomic(part, lambda tmp: _save_part(tmp, *rows))


def embed_files(model: EmbeddingModel, files: Sequence[tuple[str, str]], hop_s: float,
                min_tail_s: float) -> list[str | None]:
    """One Dask task: decode, embed and write the part of each (audio path, part path); per file None, or the
    reason it could not be decoded."""
    rate = model_grid(model)[0]
    reasons: list[str | None] = []
    for path, part in files:
        try:
            wave = load_audio(path, rate)
        except AudioError as exc:
            reasons.append(exc.reason)
            continue
        _embed_into(model, wave, Path(part), hop_s, min_tail_s)
        reasons.append(None)
    return reasons


def _settings(model: EmbeddingModel, hop_s: float, min_tail_s: float, spec: str | None) -> dict:
    from birdclef.zoo.foundation import provenance

    found = provenance(model)
    return {"kind": "embeddings", "spec": spec, "foundation": found, "model": model_name(model.path),
            "hop_s": float(hop_s), "min_tail_s": float(min_tail_s), "sample_rate": found["sample_rate"],
            "window_s": found["window_s"], "embedding_size": model.embedding_size, "licence": found["licence"]}


def embed_to_parquet(source: Path | Sequence[Path], out: Path, model: EmbeddingModel, hop_s: float | None = None,
                     min_tail_s: float = MIN_TAIL_S, num_workers: int = 1, progress: bool = True,
                     spec: str | None = None, engine: str = "plain", scheduler: str = "local", workers: int = 2,
                     rebuild: Callable[[], EmbeddingModel] | None = None) -> EmbedSummary:
    """Embed a folder (recursively) or a list of audio files into one Parquet table (module docstring).

    Args:
        source: a folder, or a list of files.
        out: the Parquet file to write (atomically).
        model: a foundation model (:func:`~birdclef.zoo.build.foundation_model`), or any :class:`EmbeddingModel`.
        hop_s: seconds between window starts (None: the model's ``hop_s``, else its window; BirdNET 3.0).
        min_tail_s: least audio (s) a zero-padded tail window must hold to be kept.
        num_workers: threads decoding the next file while the model runs (0: none; plain engine).
        spec: how the model was named (``KIND[:FILE]``), recorded in the table's metadata.
        engine: ``plain`` (this process) or ``dask`` (module docstring).
        scheduler: with dask, ``local`` (a LocalCluster of `workers` processes) or a scheduler address.
        workers: LocalCluster worker processes.
        rebuild: with dask, builds the same model on each worker (once per worker thread); it must pickle, e.g.
            ``functools.partial(foundation_model, "birdnet", 1)``.

    Raises:
        BirdclefError: a bad hop, engine or scheduler; no audio files; another job writes `out`; partial results
            made with another model or hop; not one file could be decoded; dask not installed.
    """
    started, out = time.perf_counter(), Path(out)
    hop_s = model_grid(model)[2] if hop_s is None else hop_s
    _check_args(model, hop_s, min_tail_s, engine, scheduler, rebuild)
    paths, names = list_audio(source)
    with exclusive_lock(out, "birdclef embed"):
        settings = _settings(model, hop_s, min_tail_s, spec)
        partial = PartialResults(out, settings)
        todo = [p for p in paths if not partial.intact(p, _part(partial, p), kind="npz")]
        summary = EmbedSummary(out, resumed_files=len(paths) - len(todo))
        bar = tqdm(total=len(paths), initial=summary.resumed_files, desc="embed", unit="file", disable=not progress)
        if engine == "dask":
            _embed_on_cluster(todo, partial, settings, rebuild, scheduler, workers, summary, bar)
        else:
            for path, wave, error in iter_decoded(todo, model_grid(model)[0], num_workers, ahead=num_workers + 1):
                if wave is None:
                    summary.skipped.append((str(path), error))
                else:
                    _embed_into(model, wave, _part(partial, path), hop_s, min_tail_s)
                bar.update(1)
        bar.close()
        _write_skipped(summary, dict(zip(paths, names)))
        summary.n_files, summary.n_rows = _assemble(partial, paths, names, out, settings)
        if summary.n_files == 0:
            raise BirdclefError(f"no audio file could be decoded; see {summary.skipped_path}")
        partial.remove()
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _check_args(model: EmbeddingModel, hop_s: float, min_tail_s: float, engine: str, scheduler: str,
                rebuild: object) -> None:
    window_s = model_grid(model)[1]
    if not hop_s > 0:
        raise BirdclefError(f"--hop must be > 0 s, got {hop_s}")
    if not 0 <= min_tail_s <= window_s:
        raise BirdclefError(f"min_tail_s must be in [0, {window_s:g}] s (the model's window), got {min_tail_s}")
    if engine not in ("plain", "dask"):
        raise BirdclefError(f"--engine {engine!r}: choose plain or dask")
    if engine == "dask":
        from birdclef.utils.cluster import check_scheduler

        if rebuild is None:
            raise BirdclefError("engine='dask' needs `rebuild`, a picklable callable that builds the model")
        check_scheduler(scheduler)


def file_groups(paths: Sequence[Path], max_bytes: int | None = None,
                max_files: int | None = None) -> list[list[Path]]:
    """Consecutive `paths` in groups of at most `max_files` (:data:`GROUP_FILES`) that stop at the first file taking
    them to `max_bytes` (:data:`GROUP_BYTES`) on disk (a big file is a group of its own)."""
    max_bytes = GROUP_BYTES if max_bytes is None else max_bytes
    max_files = GROUP_FILES if max_files is None else max_files
    groups: list[list[Path]] = []
    size = max_bytes
    for path in paths:
        if size >= max_bytes or len(groups[-1]) >= max_files:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += _size(path)
    return groups


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # vanished: decoding says so
        return 0


def _embed_on_cluster(todo: list[Path], partial: PartialResults, settings: dict, rebuild: Callable,
                      scheduler: str, workers: int, summary: EmbedSummary, bar: tqdm) -> None:
    """The files of `todo` as Dask tasks (module docstring); their skipped files added to `summary` in file order."""
    from birdclef.utils.cluster import map_on_workers, open_client

    if not todo:
        return
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    skipped: dict[Path, str] = {}
    with open_client(scheduler, workers) as client:
        threads = max(1, sum(client.nthreads().values()))  # groups small enough for 4 tasks per worker thread
        groups = file_groups(todo, max_bytes=min(GROUP_BYTES, sum(map(_size, todo)) // (4 * threads) + 1))
        calls = [([(str(p), str(_part(partial, p))) for p in group], settings["hop_s"], settings["min_tail_s"])
                 for group in groups]
        names = [f"embed-{key}-{hashlib.sha1(str(g[0].absolute()).encode()).hexdigest()[:16]}" for g in groups]
        for i, reasons, error in map_on_workers(client, embed_files, rebuild, key, calls, names):
            if error is not None:
                reasons = [f"task failed after 2 retries: {type(error).__name__}: {error}"] * len(groups[i])
            skipped.update((path, reason) for path, reason in zip(groups[i], reasons) if reason is not None)
            bar.update(len(groups[i]))
    summary.skipped += [(str(p), skipped[p]) for p in todo if p in skipped]


def _write_skipped(summary: EmbedSummary, names: dict[Path, str]) -> None:
    path = summary.skipped_path
    if summary.skipped:
        rows = [(names[Path(f)], f, reason) for f, reason in summary.skipped]
        write_csv_atomic(pd.DataFrame(rows, columns=["file", "path", "reason"]), path)
    elif path.exists():
        path.unlink()


def _assemble(partial: PartialResults, paths: list[Path], names: list[str], out: Path,
              settings: dict) -> tuple[int, int]:
    """Stream the parts (in file order) into `out`, ~:data:`ROW_GROUP_ROWS` rows per row group; (files, rows).

    Nothing is written when no part exists.
    """
    parts = [(_part(partial, p), name) for p, name in zip(paths, names) if _part(partial, p).is_file()]
    if not parts:
        return 0, 0

    def tables() -> Iterator[pa.Table]:
        for part, name in parts:
            with np.load(part) as arrays:
                yield rows_table(name, arrays["start_s"], arrays["end_s"], arrays["embeddings"])

    stream = tables()
    first = next(stream)
    schema = first.schema.with_metadata({"birdclef": json.dumps(settings)})
    n_rows, pending = 0, []
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for table in itertools.chain([first], stream):
            pending.append(table)
            n_rows += len(table)
            if sum(len(t) for t in pending) >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending))
                pending = []
        if pending:
            writer.write_table(pa.concat_tables(pending))
    return len(parts), n_rows
