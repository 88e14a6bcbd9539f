"""Analyse one recording of any length: streamed in blocks, scored window by window, one Parquet file out.

Windows are 5 s long and start every `hop_s` seconds from 0; as in ``predict``, a tail shorter than a hop
still gets a window (zero-padded past the end), and a remainder under 1 ms does not. Every `block_s`
seconds of windows are scored together and appended to the output as one row group, and the audio before
the next window's context is dropped, so memory stays flat however long the file is. The output is written
to a temporary file and renamed into place only when the whole file is done
(:func:`~birdclef.utils.io.atomic_path`): a killed or failed file leaves nothing behind.

Table: ``path`` (the relative path given), ``start_s``, ``end_s`` (seconds from the file's start), then one
float32 column per class (NaN where no model scores the class, e.g. BirdNET's unknown classes).

With an embeddings destination, a second table with the same keys holds each window's BirdNET embedding
(``emb_0 ..``, float32: the mean of the 3 s chunk embeddings whose scores make the window's row), from the
same model pass; both tables are renamed into place only when the file is done.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from birdclef.archive.scorers import WindowScorer
from birdclef.audio.stream import RateBuffer, open_stream
from birdclef.errors import BirdclefError
from birdclef.infer.base import ROW_WINDOW_S
from birdclef.utils.io import atomic_path

KEY_COLUMNS = ("path", "start_s", "end_s")
"""The key of every result row."""

TAIL_TOLERANCE_S = 1e-3
"""A tail shorter than this gets no window of its own (rounding noise of a duration, as in ``predict``)."""


@dataclass(frozen=True)
class FileResult:
    windows: int
    audio_s: float
    """Duration of the recording (s)."""


def window_count(duration_s: float, hop_s: float) -> int:
    """Windows starting at 0, hop, 2 hop, ... before the end (at least one); at hop 5 s, ``predict``'s rows."""
    return max(1, int(np.ceil((duration_s - TAIL_TOLERANCE_S) / hop_s)))


def result_schema(classes: list[str]) -> pa.Schema:
    """Parquet schema of a result table: the key columns, then one float32 column per class."""
    clash = [c for c in classes if c in KEY_COLUMNS]
    if clash:
        raise BirdclefError(f"class names {clash} clash with the result table's key columns {list(KEY_COLUMNS)}")
    return pa.schema([("path", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64())]
                     + [(c, pa.float32()) for c in classes])


def embedding_schema(dims: int) -> pa.Schema:
    """Parquet schema of an embedding table: the key columns, then ``emb_0 .. emb_{dims-1}`` float32."""
    return pa.schema([("path", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64())]
                     + [(f"emb_{j}", pa.float32()) for j in range(dims)])


class _Windows:
    """Cuts each member's spans for windows [first, stop) out of the rate buffers, and drops used audio."""

    def __init__(self, scorer: WindowScorer, native_rate: int, hop_s: float):
        self.scorer, self.hop_s = scorer, hop_s
        self.buffers = {m.sample_rate: RateBuffer(native_rate, m.sample_rate) for m in scorer.members}

    def start(self, index: int, rate: int) -> int:
        return int(round(index * self.hop_s * rate))

    def ready(self, stop: int) -> bool:
        """Whether every member's span of window `stop - 1` has arrived."""
        return all(self.start(stop - 1, m.sample_rate) - m.lead + m.length <= self.buffers[m.sample_rate].end
                   for m in self.scorer.members)

    def score(self, first: int, stop: int, embeddings: bool = False):
        """(N, K) probabilities of windows [first, stop); with `embeddings`, also their (N, D) embeddings."""
        spans = []
        for m in self.scorer.members:
            buf = self.buffers[m.sample_rate]
            starts = [self.start(k, m.sample_rate) - m.lead for k in range(first, stop)]
            spans.append(np.stack([buf.take(s, s + m.length) for s in starts]))
        for rate, buf in self.buffers.items():  # later windows need nothing before their own spans
            buf.drop_before(min(self.start(stop, rate) - m.lead for m in self.scorer.members if m.sample_rate == rate))
        return self.scorer.score_with_embeddings(spans) if embeddings else self.scorer.score(spans)


class GroupedWriter:
    """A ParquetWriter that gathers small tables into row groups of at least `rows` rows.

    A row group per 60 s block would give a 10-hour file 600 groups of 12 rows, each with its own metadata per
    column; reading that back is slow. Closing writes what is left.

    Merging an archive writes one small table per recording: every :data:`COMPACT_TABLES` of them are copied
    into one table while they wait, so memory follows the rows waiting, not the count of tables (each table
    read from a file keeps its own buffers per column: tens of thousands of them cost gigabytes), and the row
    count is kept as it goes (summing the waiting tables on every write was quadratic).
    """

    COMPACT_TABLES = 32

    def __init__(self, where: Path, schema: pa.Schema, rows: int = 8_192):
        self.writer, self.rows, self.schema = pq.ParquetWriter(where, schema), rows, schema
        self.pending: list[pa.Table] = []
        """Compacted tables waiting for the next row group."""
        self.small: list[pa.Table] = []
        """Tables written since the last compaction."""
        self.n_rows = 0

    def write(self, table: pa.Table) -> None:
        self.small.append(table)
        self.n_rows += len(table)
        if self.n_rows >= self.rows:
            self.flush()
        elif len(self.small) >= self.COMPACT_TABLES:
            self.pending.append(pa.concat_tables(self.small).combine_chunks())
            self.small = []

    def flush(self) -> None:
        waiting = self.pending + self.small
        if waiting:
            self.writer.write_table(pa.concat_tables(waiting))
        self.pending, self.small, self.n_rows = [], [], 0

    def __enter__(self) -> GroupedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.flush()
        self.writer.close()


def _table(schema: pa.Schema, rel: str, starts: np.ndarray, probs: np.ndarray) -> pa.Table:
    columns = [pa.array([rel] * len(starts), pa.string()), pa.array(starts), pa.array(starts + ROW_WINDOW_S)]
    columns += [pa.array(probs[:, j]) for j in range(probs.shape[1])]
    return pa.Table.from_arrays(columns, schema=schema)


def analyze_file(scorer: WindowScorer, source: Path, rel: str, dest: Path, hop_s: float = 5.0,
                 block_s: float = 60.0, embeddings_dest: Path | None = None) -> FileResult:
    """Score every window of `source` and write the table (module docstring) to `dest` atomically.

    Args:
        scorer: the models (:func:`~birdclef.archive.scorers.window_scorer`).
        source: the recording (any format libsndfile reads, any rate, any length).
        rel: its path relative to the archive, stored in the ``path`` column.
        dest: the Parquet file to write.
        hop_s: seconds between window starts.
        block_s: seconds of windows scored (and held in memory) at a time.
        embeddings_dest: also write the windows' BirdNET embeddings here (same keys; needs a BirdNET member).

    Raises:
        AudioError: the file cannot be decoded (see :func:`~birdclef.audio.stream.open_stream`); `dest`
            (and `embeddings_dest`) are then left as they were.
    """
    per_block = max(1, int(round(block_s / hop_s)))
    schema = result_schema(scorer.classes)
    native_rate, blocks = open_stream(source)  # header checks: AudioError before any output is created
    windows = _Windows(scorer, native_rate, hop_s)
    done, frames = 0, 0
    with ExitStack() as stack:
        writer = stack.enter_context(GroupedWriter(stack.enter_context(atomic_path(dest)), schema))
        emb_tmp = None if embeddings_dest is None else stack.enter_context(atomic_path(embeddings_dest))
        emb_writer: list[GroupedWriter] = []  # opened on the first block, when the embedding size is known

        def flush(stop: int) -> None:
            nonlocal done
            starts = np.round(np.arange(done, stop) * hop_s, 6)
            if emb_tmp is None:
                writer.write(_table(schema, rel, starts, windows.score(done, stop)))
            else:
                probs, emb = windows.score(done, stop, embeddings=True)
                writer.write(_table(schema, rel, starts, probs))
                if not emb_writer:  # closed before its file is renamed (ExitStack unwinds last-in first)
                    emb_writer.append(stack.enter_context(GroupedWriter(emb_tmp, embedding_schema(emb.shape[1]))))
                emb_writer[0].write(_table(emb_writer[0].schema, rel, starts, emb))
            done = stop

        for block in blocks:
            frames += len(block)
            for buf in windows.buffers.values():
                buf.feed(block)
            while windows.ready(done + per_block):
                flush(done + per_block)
        for buf in windows.buffers.values():
            buf.finish()
        total = window_count(frames / native_rate, hop_s)
        while done < total:
            flush(min(done + per_block, total))
    return FileResult(total, frames / native_rate)
