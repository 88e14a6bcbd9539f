"""The embedding stage of a head run: every 5 s row of the cached clips (and its background-mixed copies) through
the frozen foundation models, in resumable chunks, in this process or on a Dask cluster.

The rows (:func:`clip_rows`) of each copy are cut into chunks of ``train.embed_chunk_rows`` rows. A chunk's
embeddings go to ``FOLDER/copy{c}.part{i}.npz`` (written atomically: ``rows`` (n,) int64 of the rows it holds,
``emb`` (n, C, D) float16, ``span`` [start, stop) of the chunk); once all parts of a copy are there they are
concatenated into ``copy{c}.npz`` (the cache :mod:`~birdclef.birdnet.head_train` reads) and removed. A killed run
resumes chunk by chunk: a part that is whole and of the same span is kept.

``train.embed_engine``:

- ``plain``: the chunks one after the other, in this process.
- ``dask``: one task per (copy, chunk) on ``train.embed_scheduler`` (``local``: a LocalCluster of
  ``train.embed_workers`` processes; else a running scheduler's address), through :mod:`birdclef.utils.cluster`.
  Each worker loads the models once (:meth:`HeadInputs.from_config`) and reads the rows from the wave cache,
  which every worker must see at the run's path (as the embedding folder); the background bank is sent to each
  worker once.

Both engines run the same chunk function, so the model sees the same batches (:data:`ROW_BATCH` rows, restarting
at each chunk) and every draw is seeded by (``train.seed``, copy, clip, window): the embeddings are equal bit for
bit whichever engine (and however many workers) made them.

Example:
    >>> copies = embed_copies(config, WaveCache(run / "cache"), inputs, bank, run / "embeddings" / key)
    >>> rows, emb = copies[1]       # rows of copy 1 that the background draw mixed; (n, C, D) float16
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from birdclef.birdnet.head_data import ROW_BATCH, embed_rows
from birdclef.birdnet.head_inputs import HeadInputs
from birdclef.birdnet.model import CHUNK_S
from birdclef.config import Config
from birdclef.data.augment import BackgroundBank, add_background
from birdclef.data.cache import WaveCache
from birdclef.errors import BirdclefError
from birdclef.infer.base import ROW_WINDOW_S
from birdclef.utils.io import write_atomic
from birdclef.utils.state import intact


def clip_rows(cache: WaveCache) -> tuple[np.ndarray, np.ndarray]:
    """(clip position (R,), window number (R,)) of every 5 s row of the cached clips: every full 5 s window, plus
    a last partial one holding at least one full 3 s chunk (a short clip gives one row)."""
    row_len = int(round(ROW_WINDOW_S * cache.sample_rate))
    chunk_len = int(round(CHUNK_S * cache.sample_rate))
    lengths = cache.index["length"].to_numpy(np.int64)
    counts = np.maximum(1, lengths // row_len + ((lengths % row_len) >= chunk_len))
    return np.repeat(np.arange(len(lengths)), counts), np.concatenate([np.arange(n) for n in counts])


def row_wave(cache: WaveCache, clip: int, window: int) -> np.ndarray:
    """(5 s,) float32 samples of one row of a cached clip, zero padded past its end."""
    row_len = int(round(ROW_WINDOW_S * cache.sample_rate))
    out = np.zeros(row_len, np.float32)
    part = cache.segment(clip)[window * row_len : (window + 1) * row_len]
    out[: len(part)] = part
    return out


def _mixed_row(wave: np.ndarray, copy: int, clip: int, window: int, config: Config,
               bank: BackgroundBank | None) -> np.ndarray | None:
    """The row with a background excerpt of augmented copy `copy`, or None when this draw leaves it clean."""
    if bank is None or len(bank) == 0:
        return None
    rng = np.random.default_rng([config.train.seed, copy, clip, window])
    if rng.random() >= config.train.background_prob:
        return None
    gain = float(rng.uniform(*config.train.background_gain))
    return add_background(wave, bank.excerpt(len(wave), rng), gain)


def copy_wave(cache: WaveCache, copy: int, clip: int, window: int, config: Config,
              bank: BackgroundBank | None) -> np.ndarray | None:
    """(5 s,) float32 audio of a row in copy `copy` (0: the clean row; else the row with its seeded background,
    or None when that copy's draw leaves the row clean): exactly what the model embeds, so that a student trained
    on the cached embeddings (:mod:`birdclef.train.embedding_distill`) hears what the teacher heard."""
    wave = row_wave(cache, clip, window)
    return wave if copy == 0 else _mixed_row(wave, copy, clip, window, config, bank)


@dataclass
class ChunkEmbedder:
    """What embeds a chunk of rows: the models, the wave cache and its rows (one per worker with dask)."""

    config: Config
    inputs: HeadInputs
    cache: WaveCache

    def __post_init__(self) -> None:
        self.clips, self.windows = clip_rows(self.cache)

    def embed(self, bank: BackgroundBank | None, copy: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n,) int64, emb (n, C, D) float16) of rows [start, stop) of copy `copy` (0: clean, every row;
        else the rows its background draw mixes), in batches of :data:`ROW_BATCH` rows."""
        rows, parts, waves = [], [], []
        for r in range(start, stop):
            wave = copy_wave(self.cache, copy, int(self.clips[r]), int(self.windows[r]), self.config, bank)
            if wave is not None:
                rows.append(r)
                waves.append(wave)
            if len(waves) == ROW_BATCH or (r == stop - 1 and waves):
                parts.append(embed_rows(self.inputs, waves))
                waves = []
        emb = np.concatenate(parts) if parts else embed_rows(self.inputs, [])
        return np.asarray(rows, np.int64), emb

    def write_part(self, bank: BackgroundBank | None, copy: int, start: int, stop: int, path: str) -> int:
        """Embed rows [start, stop) of copy `copy` into the part file `path` (atomically); the rows it holds."""
        rows, emb = self.embed(bank, copy, start, stop)
        write_atomic(Path(path), lambda tmp: _save_npz(tmp, rows, emb, span=(start, stop)))
        return len(rows)


def _worker_embedder(config: Config, cache_path: str) -> ChunkEmbedder:
    """A worker's :class:`ChunkEmbedder`: the head's models loaded there, the wave cache mapped there."""
    return ChunkEmbedder(config, HeadInputs.from_config(config), WaveCache(cache_path))


def _write_part(embedder: ChunkEmbedder, bank: BackgroundBank | None, copy: int, start: int, stop: int,
                path: str) -> int:
    """One Dask task (:func:`~birdclef.utils.cluster.map_on_workers` calls it with the worker's embedder)."""
    return embedder.write_part(bank, copy, start, stop, path)


def _save_npz(path: Path, rows, emb: np.ndarray, span: tuple[int, int] | None = None) -> None:
    arrays = {"rows": np.asarray(rows, np.int64), "emb": emb}
    arrays.update({} if span is None else {"span": np.asarray(span, np.int64)})
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(f, **arrays)


def part_path(folder: Path, copy: int, index: int) -> Path:
    return Path(folder) / f"copy{copy}.part{index}.npz"


def _part_done(path: Path, start: int, stop: int) -> bool:
    """Whether `path` is a whole part of rows [start, stop) (a damaged one is set aside; another span redone)."""
    if not intact(path, "npz", "its chunk of rows is embedded again"):
        return False
    with np.load(path) as data:
        return "span" in data and data["span"].tolist() == [start, stop]


def embed_copies(config: Config, cache: WaveCache, inputs: HeadInputs, bank: BackgroundBank | None,
                 folder: Path, progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(rows, emb)] per copy (0 = clean, all rows), computed once and cached in `folder` (module docstring).

    Raises:
        BirdclefError: with ``train.embed_engine: dask``, dask is not installed, no scheduler answers, or a chunk
            failed on every retry (its error named; the finished chunks are kept for the next run).
    """
    train = config.train
    folder.mkdir(parents=True, exist_ok=True)
    n_rows = len(clip_rows(cache)[0])
    spans = [(start, min(start + train.embed_chunk_rows, n_rows)) for start in range(0, n_rows, train.embed_chunk_rows)]
    copies = [c for c in range(train.embed_copies + 1) if not (folder / f"copy{c}.npz").is_file()]
    tasks = [(c, i, start, stop) for c in copies for i, (start, stop) in enumerate(spans)
             if not _part_done(part_path(folder, c, i), start, stop)]
    done_rows = len(copies) * n_rows - sum(stop - start for _, _, start, stop in tasks)
    bar = tqdm(total=len(copies) * n_rows, initial=done_rows, desc="embeddings (rows)", unit="row",
               disable=not progress)
    if tasks and train.embed_engine == "dask":
        _embed_on_cluster(config, cache, bank, folder, tasks, bar)
    elif tasks:
        embedder = ChunkEmbedder(config, inputs, cache)
        for copy, index, start, stop in tasks:
            embedder.write_part(bank, copy, start, stop, str(part_path(folder, copy, index)))
            bar.update(stop - start)
    bar.close()
    for copy in copies:
        _join_parts(folder, copy, len(spans), inputs)
    out = []
    for copy in range(train.embed_copies + 1):
        with np.load(folder / f"copy{copy}.npz") as data:
            out.append((data["rows"], data["emb"]))
    return out


def _embed_on_cluster(config: Config, cache: WaveCache, bank: BackgroundBank | None, folder: Path,
                      tasks: list[tuple[int, int, int, int]], bar: tqdm) -> None:
    """The chunks of `tasks` as Dask tasks, one per (copy, chunk) (module docstring)."""
    from birdclef.utils.cluster import map_on_workers, open_client

    train = config.train
    key = hashlib.sha1(json.dumps([str(folder.resolve()), str(cache.path.resolve())]).encode()).hexdigest()[:16]
    calls = [(copy, start, stop, str(part_path(folder, copy, index))) for copy, index, start, stop in tasks]
    names = [f"head-embed-{key}-{copy}-{index}" for copy, index, _, _ in tasks]
    failed = []
    with open_client(train.embed_scheduler, train.embed_workers) as client:
        build = partial(_worker_embedder, config, str(cache.path.resolve()))
        for i, _, error in map_on_workers(client, _write_part, build, key, calls, names, shared=[bank]):
            if error is not None:
                failed.append(f"copy {tasks[i][0]} rows {tasks[i][2]}-{tasks[i][3]}: {type(error).__name__}: {error}")
            bar.update(tasks[i][3] - tasks[i][2])
    if failed:
        raise BirdclefError(f"{len(failed)} embedding chunk(s) failed on every retry (finished chunks are kept in "
                            f"{folder}; re-run to resume): {failed[0]}")


def _join_parts(folder: Path, copy: int, n_parts: int, inputs: HeadInputs) -> None:
    """Concatenate a copy's parts into ``copy{c}.npz`` (atomically), then remove them."""
    parts = [part_path(folder, copy, i) for i in range(n_parts)]
    rows, embs = [], []
    for path in parts:
        with np.load(path) as data:
            rows.append(data["rows"])
            embs.append(data["emb"])
    emb = np.concatenate(embs) if embs else embed_rows(inputs, [])
    all_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    write_atomic(folder / f"copy{copy}.npz", lambda tmp: _save_npz(tmp, all_rows, emb))
    for path in parts:
        path.unlink(missing_ok=True)
