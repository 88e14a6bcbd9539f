"""``birdclef embed``: BirdNET v2.4 embeddings of audio files into one Parquet table; locked and resumable.

Each file (decoded to 48 kHz mono by :func:`~birdclef.audio.io.load_audio`) is cut into 3 s chunks
starting every `hop_s` seconds (3.0: BirdNET's own grid, no overlap). A tail chunk is zero-padded to
3 s as BirdNET-Analyzer and birdnetlib do, and kept when it holds at least `min_tail_s` seconds of audio
(BirdNET-Analyzer's ``SIG_MINLEN``, 1.0 s); a file's first chunk is always kept, so a 0.5 s file gives
one row. Each chunk gives one row of the table:

- ``file``: the path relative to the input folder (POSIX separators; for a list of files, relative
  to their common folder);
- ``start_s``, ``end_s`` (float64): the chunk's span in the file; ``end_s`` is ``start_s + 3`` except
  for the padded tail, where it is the file's end;
- ``emb_0`` ... ``emb_1023`` (float32): the ``GLOBAL_AVG_POOL`` activations, the input of BirdNET's
  classifier (:func:`~birdclef.birdnet.model.output_layer` maps them to its logits).

One float32 column per dimension rather than one list column: pandas reads it as plain numeric
columns (``df.filter(regex=r"^emb_")``, straight into scikit-learn), never as an object column of
arrays, and polars / DuckDB see ordinary columns. The table's schema metadata (key ``birdclef``) records
the model, hop and licence.

The job holds a lock on `out` (a second job on it fails at once); every finished file's rows are
written atomically to an ``.npz`` part in ``.<out>.parts/`` (keyed and settings-checked by
:class:`~birdclef.infer.job.PartialResults`), so a re-run with the same settings skips the files already
done. The output is then assembled part by part (never holding every row in memory) into one atomic
write, and the parts are removed. Files that cannot
be decoded are skipped and listed in ``<out stem>.skipped.csv``; the next file decodes in a thread while
the model runs.

The embeddings derive from BirdNET's weights (CC BY-NC-SA 4.0): so does whatever is made from them.

Example:
    >>> summary = embed_to_parquet(Path("train_audio"), Path("emb.parquet"), BirdnetModel(threads=2))
    >>> frame = pd.read_parquet("emb.parquet")  # file, start_s, end_s, emb_0 ... emb_1023
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from birdclef.birdnet.model import CHUNK_SAMPLES, LICENSE, SAMPLE_RATE, model_name
from birdclef.errors import BirdclefError
from birdclef.infer.base import iter_decoded
from birdclef.audio.discover import discover_audio
from birdclef.infer.job import PartialResults, report_path
from birdclef.utils.io import atomic_path, exclusive_lock, write_atomic, write_csv_atomic

HOP_S = 3.0
"""Default seconds between chunk starts: BirdNET's own 3 s grid."""
MIN_TAIL_S = 1.0
"""A zero-padded tail chunk is kept when it holds at least this much audio (BirdNET-Analyzer's SIG_MINLEN)."""
ROW_GROUP_ROWS = 4096
"""Rows per Parquet row group of the assembled output (parts hold one file each)."""


class EmbeddingModel(Protocol):
    """What :func:`embed_to_parquet` needs of :class:`~birdclef.birdnet.model.BirdnetModel`."""

    path: Path
    embedding_size: int

    def infer(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 144000) float32 chunks at 48 kHz -> ((N, labels) logits, (N, embedding_size) embeddings)."""


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


def chunk_starts(n_samples: int, hop_samples: int, min_tail_samples: int) -> np.ndarray:
    """Start sample of each chunk: every `hop_samples` while a chunk holds >= `min_tail_samples` (the first always)."""
    starts = np.arange(0, max(n_samples, 1), hop_samples)
    keep = (n_samples - starts >= min(min_tail_samples, CHUNK_SAMPLES)) | (starts == 0)
    return starts[keep]


def wave_chunks(wave: np.ndarray, hop_s: float, min_tail_s: float = MIN_TAIL_S,
                sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chunks (N, 144000) float32, start_s (N,), end_s (N,)) of a 48 kHz wave; the tail zero-padded.

    `chunks` is a read-only strided view of one zero-padded copy of the wave: no per-chunk copies, so an
    hour-long file at a 1 s hop costs one copy of its samples, not three.
    """
    hop = max(1, int(round(hop_s * sample_rate)))
    starts = chunk_starts(len(wave), hop, int(round(min_tail_s * sample_rate)))
    padded = np.zeros(int(starts[-1]) + CHUNK_SAMPLES, dtype=np.float32)
    padded[: min(len(wave), len(padded))] = wave[: len(padded)]
    chunks = np.lib.stride_tricks.sliding_window_view(padded, CHUNK_SAMPLES)[::hop]  # rows = `starts`
    ends = np.minimum(starts + CHUNK_SAMPLES, len(wave))
    return chunks, starts / sample_rate, ends / sample_rate


def embed_wave(model: EmbeddingModel, wave: np.ndarray, hop_s: float = HOP_S,
               min_tail_s: float = MIN_TAIL_S) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start_s (N,), end_s (N,), embeddings (N, embedding_size) float32) of one 48 kHz wave."""
    chunks, start_s, end_s = wave_chunks(wave, hop_s, min_tail_s)
    embeddings = np.asarray(model.infer(chunks)[1], dtype=np.float32)
    if embeddings.shape != (len(chunks), model.embedding_size):
        raise RuntimeError(f"{model.path}: {len(chunks)} chunks gave embeddings of shape {embeddings.shape}")
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


def _settings(model: EmbeddingModel, hop_s: float, min_tail_s: float) -> dict:
    return {"kind": "birdnet_embeddings", "model": model_name(model.path), "hop_s": float(hop_s),
            "min_tail_s": float(min_tail_s), "sample_rate": SAMPLE_RATE, "embedding_size": model.embedding_size,
            "licence": LICENSE}


def embed_to_parquet(source: Path | Sequence[Path], out: Path, model: EmbeddingModel, hop_s: float = HOP_S,
                     min_tail_s: float = MIN_TAIL_S, num_workers: int = 1, progress: bool = True) -> EmbedSummary:
    """Embed a folder (recursively) or a list of audio files into one Parquet table (module docstring).

    Args:
        source: a folder, or a list of files.
        out: the Parquet file to write (atomically).
        model: a :class:`~birdclef.birdnet.model.BirdnetModel` (or any :class:`EmbeddingModel`).
        hop_s: seconds between chunk starts (3.0: BirdNET's grid; 1.0: 2 s overlap).
        min_tail_s: least audio (s) a zero-padded tail chunk must hold to be kept.
        num_workers: threads decoding the next file while the model runs (0: none).

    Raises:
        BirdclefError: a bad hop; no audio files; another job writes `out`; partial results made with
            another model or hop; not one file could be decoded.
    """
    started, out = time.perf_counter(), Path(out)
    if not hop_s > 0:
        raise BirdclefError(f"--hop must be > 0 s, got {hop_s}")
    if not 0 <= min_tail_s <= 3.0:
        raise BirdclefError(f"min_tail_s must be in [0, 3] s, got {min_tail_s}")
    paths, names = list_audio(source)
    with exclusive_lock(out, "birdclef embed"):
        settings = _settings(model, hop_s, min_tail_s)
        partial = PartialResults(out, settings)
        todo = [p for p in paths if not partial.intact(p, _part(partial, p), kind="npz")]
        summary = EmbedSummary(out, resumed_files=len(paths) - len(todo))
        bar = tqdm(total=len(paths), initial=summary.resumed_files, desc="embed", unit="file", disable=not progress)
        for path, wave, error in iter_decoded(todo, SAMPLE_RATE, num_workers, ahead=num_workers + 1):
            if wave is None:
                summary.skipped.append((str(path), error))
            else:
                rows = embed_wave(model, wave, hop_s, min_tail_s)
                write_atomic(_part(partial, path), lambda tmp, rows=rows: _save_part(tmp, *rows))
            bar.update(1)
        bar.close()
        _write_skipped(summary, dict(zip(paths, names)))
        summary.n_files, summary.n_rows = _assemble(partial, paths, names, out, settings)
        if summary.n_files == 0:
            raise BirdclefError(f"no audio file could be decoded; see {summary.skipped_path}")
        partial.remove()
    summary.elapsed_s = time.perf_counter() - started
    return summary


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
