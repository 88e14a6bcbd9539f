"""The training cache: every training clip decoded once, so training never touches OGG again.

``birdclef prepare DATA --out CACHE`` (:func:`prepare_cache`) decodes each row of
``DATA/train.csv`` (``DATA/train_audio/<filename>``), keeps its training window (DESIGN §2) as
float16 samples and writes::

    CACHE/cache.json                 the config that made it (a re-run must match it)
    CACHE/shards/part-00000.npy      (samples,) float16: the shard's clips end to end
    CACHE/shards/part-00000.parquet  one row per train.csv row of the shard: where its samples
                                     are (offset, length), its window, or why it was skipped
    CACHE/index.parquet              the decoded clips with their train.csv columns
    CACHE/skipped.csv                filename, reason of every file that could not be used

Fixed strategies (center, first, energy, reference, and table: each clip's window read from a table,
:mod:`birdclef.data.window_table`) store exactly the chosen window, tiled when the clip is short;
``random`` stores the first `max_clip_s` seconds so that training draws a new crop each epoch, and
``mil`` stores the same (its cache.json says ``random``: one cache serves both). Shards are
independent and written atomically (the .parquet last, so its presence marks a finished shard): an
interrupted run, even one killed with SIGKILL, resumes where it stopped and gives the same files; worker processes exit when the process that started them dies.
:class:`WaveCache` reads the result through memory maps.

train.csv is checked first (:func:`birdclef.data.validate.require_valid_metadata`, the checks of
``birdclef check``): a table error refuses the run, a broken audio file is skipped and listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from birdclef.audio.io import audio_info, load_audio, tile_to_length
from birdclef.audio.segments import Window, crop, select_window
from birdclef.config import DATA_STRATEGIES, STORED_SPAN_STRATEGIES
from birdclef.data.metadata import subset_round_robin
from birdclef.data.validate import require_valid_metadata
from birdclef.data.window_table import table_sha256, table_starts
from birdclef.errors import AudioError, ConfigError, DatasetError
from birdclef.utils.io import write_atomic, write_csv_atomic, write_json_atomic, write_parquet_atomic
from birdclef.utils.process import die_with_parent

CACHE_FORMAT = 2
"""Version of the folder layout, stored in cache.json (2: ``row`` is the train.csv row also with max_files)."""

CACHE_COLUMNS = ("row", "filename", "shard", "offset", "length", "start_s", "end_s", "duration_s")
"""Per-clip columns of the shard tables and index.parquet: row in train.csv, shard number, sample
offset and length in the shard, stored span [start_s, end_s) in clip seconds, clip duration_s."""

_CSV_PREFIX = "csv_"
"""A train.csv column named like a cache column (other than filename) is kept with this prefix."""

"""How often a worker checks that the process that started it is still alive."""


@dataclass(frozen=True)
class CacheSummary:
    """What :func:`prepare_cache` produced."""

    n_clips: int
    n_skipped: int
    seconds_of_audio: float
    """Seconds of audio stored (at the cache's sample rate)."""
    bytes: int
    """Size of the cache folder on disk."""
    out: Path
    elapsed_s: float


@dataclass(frozen=True)
class _ShardJob:
    """Everything a worker process needs to write one shard (picklable)."""

    shard: int
    rows: tuple[int, ...]
    filenames: tuple[str, ...]
    audio_dir: Path
    shard_dir: Path
    strategy: str
    window_s: float
    sample_rate: int
    max_clip_s: float
    starts: tuple[float, ...] = ()
    """With strategy=table: each row's window start from the table (NaN: not in it, the reference rule)."""


def prepare_cache(
    data_root: Path,
    out: Path,
    strategy: str = "reference",
    window_s: float = 5.0,
    sample_rate: int = 32_000,
    max_clip_s: float = 60.0,
    num_workers: int = 2,
    max_files: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
    window_table: str | Path | None = None,
) -> CacheSummary:
    """Decode every training clip of `data_root` once into a cache folder `out`.

    Re-running into the same folder skips finished shards (resume) and rewrites index.parquet and
    skipped.csv; the result is the same whatever `num_workers` is and however often it stopped.

    Args:
        data_root: BirdCLEF-layout folder holding train.csv and train_audio/.
        out: cache folder (created).
        strategy: window strategy (DESIGN §2): center, first, random, energy, reference, or mil (stored as random).
        window_s: training window length in seconds.
        sample_rate: rate (Hz) the audio is resampled to.
        max_clip_s: with ``random``, seconds kept from the start of each clip (ignored otherwise,
            and stored as null in cache.json).
        num_workers: shard-writing processes (the platform's default start method); <= 1, or a
            single shard to write, works in this process.
        max_files: use at most this many rows of train.csv, round-robin over classes (metadata.subset_round_robin).
        shard_size: train.csv rows per shard.
        progress: show a tqdm bar over the clips.
        window_table: with strategy ``table``: the table of each clip's window
            (:mod:`birdclef.data.window_table`; e.g. a MIL run's ``mil_windows.csv``).

    Returns:
        Counts, size and time of the cache.

    Raises:
        ConfigError: unknown strategy or a non-positive number.
        DatasetError: train.csv missing, or with an error ``birdclef check`` reports (blank or unknown
            primary labels, duplicate filenames, malformed secondary_labels, a broken class table,
            ...); `out` holds a cache made with another config (the message lists the differences);
            no clip could be decoded.

    Warns:
        DataWarning: the warnings of ``birdclef check`` about train.csv (unknown secondary labels, ...).
    """
    started = time.perf_counter()
    data_root, out = Path(data_root), Path(out)
    _check_args(strategy, window_s, sample_rate, max_clip_s, shard_size, max_files)
    if (strategy == "table") != (window_table is not None):
        raise ConfigError("data.strategy=table needs data.window_table=PATH (and the table is read only with it); "
                          f"got strategy={strategy!r}, window_table={window_table!r}")
    strategy = "random" if strategy in STORED_SPAN_STRATEGIES else strategy  # mil stores what random stores
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; give --out a cache folder")
    table = _prepare_table(require_valid_metadata(data_root), max_files)
    config = {"format": CACHE_FORMAT, "strategy": strategy, "window_s": float(window_s),
              "sample_rate": int(sample_rate), "max_clip_s": float(max_clip_s) if strategy == "random" else None,
              "max_files": max_files, "shard_size": int(shard_size),
              "window_table_sha256": None if window_table is None else table_sha256(window_table),
              "train_csv_sha256": _sha256(data_root / "train.csv")}
    _claim(out, config)
    _remove_stale_temporaries(out / "shards")
    starts = table_starts(table["filename"].tolist(), window_table) if window_table is not None else None
    jobs = _plan_shards(table, data_root / "train_audio", out / "shards", config, shard_size, starts)
    _run_jobs([job for job in jobs if not _shard_done(job)], len(table), num_workers, progress)
    index, skipped = _collect(jobs, table)
    write_csv_atomic(skipped, out / "skipped.csv")
    if index.empty:
        raise DatasetError(f"{data_root / 'train.csv'}: none of its {len(table)} files could be decoded; "
                           f"see {out / 'skipped.csv'}")
    write_parquet_atomic(index, out / "index.parquet")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return CacheSummary(len(index), len(skipped), float(index["length"].sum()) / sample_rate, size, out,
                        time.perf_counter() - started)


def prepare_audio_store(folder: Path, root: Path, sample_rate: int = 32_000, max_s: float = 600.0,
                        num_workers: int = 2, shard_size: int = 64, progress: bool = True) -> CacheSummary:
    """Decode the first `max_s` seconds of every recording under `folder` (unlabelled audio: no train.csv) once into
    ``root/<key>/``, a folder :class:`WaveCache` reads as it reads a clip cache (``filename``: the path relative to
    `folder`). The key covers the folder, each file's name, size and mtime, the rate and `max_s`, so a changed
    folder gets a new store; resumable shard by shard, as :func:`prepare_cache`; broken files are skipped and listed
    in ``skipped.csv``.

    Returns:
        The summary; its ``out`` is the store.

    Raises:
        BirdclefError: `folder` is missing or holds no recording.
        DatasetError: no recording could be decoded.
    """
    from birdclef.audio.discover import discover_audio

    started, folder = time.perf_counter(), Path(folder)
    found = discover_audio(folder, what="unlabelled audio folder", items="recordings").warn()
    table = pd.DataFrame({"filename": [r.rel for r in found.recordings]})
    identity = json.dumps([[r.rel, r.size, r.mtime_ns] for r in found.recordings]).encode()
    config = {"format": CACHE_FORMAT, "strategy": "random", "window_s": 5.0, "sample_rate": int(sample_rate),
              "max_clip_s": float(max_s), "max_files": None, "shard_size": int(shard_size),
              "window_table_sha256": None, "source": str(folder.resolve()),
              "files_sha256": hashlib.sha256(identity).hexdigest()}
    out = Path(root) / hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    _claim(out, config)
    _remove_stale_temporaries(out / "shards")
    jobs = _plan_shards(table, folder, out / "shards", config, shard_size)
    _run_jobs([job for job in jobs if not _shard_done(job)], len(table), num_workers, progress)
    index, skipped = _collect(jobs, table)
    write_csv_atomic(skipped, out / "skipped.csv")
    if index.empty:
        raise DatasetError(f"{folder}: none of its {len(table)} recordings could be decoded; see {out / 'skipped.csv'}")
    write_parquet_atomic(index, out / "index.parquet")
    return CacheSummary(len(index), len(skipped), float(index["length"].sum()) / sample_rate,
                        sum(p.stat().st_size for p in out.rglob("*") if p.is_file()), out, time.perf_counter() - started)


def write_window_store(out: Path, filenames: list[str], windows: Iterable[np.ndarray], length: int, sample_rate: int,
                       source: str) -> WaveCache:
    """Write equal windows as a folder :class:`WaveCache` reads (each window one "recording" of `length` samples,
    named by `filenames`), unless it is complete already (its index.parquet, written last, is there).

    The windows of a pseudo table that no teacher source holds become a source of their own this way
    (:mod:`birdclef.train.distill_pseudo`): one row each, embedded and read as any other source.

    Raises:
        ValueError: a window is not `length` samples long.
    """
    out = Path(out)
    if (out / "index.parquet").is_file():
        return WaveCache(out)
    config = {"format": CACHE_FORMAT, "strategy": "random", "window_s": length / sample_rate,
              "sample_rate": int(sample_rate), "max_clip_s": length / sample_rate, "max_files": None,
              "shard_size": len(filenames), "window_table_sha256": None, "source": source}
    _claim(out, config)
    (out / "shards").mkdir(parents=True, exist_ok=True)

    def checked() -> Iterable[np.ndarray]:
        for name, wave in zip(filenames, windows, strict=True):
            if len(wave) != length:
                raise ValueError(f"{out}: window {name} has {len(wave)} samples, not {length}")
            yield wave

    npy_path, _ = _shard_paths(out / "shards", 0)
    write_atomic(npy_path, lambda tmp: _write_npy(tmp, checked(), len(filenames) * length))
    seconds = length / sample_rate
    index = pd.DataFrame({"row": np.arange(len(filenames)), "filename": list(filenames), "shard": 0,
                          "offset": np.arange(len(filenames), dtype=np.int64) * length, "length": length,
                          "start_s": 0.0, "end_s": seconds, "duration_s": seconds})
    write_parquet_atomic(index, out / "index.parquet")
    return WaveCache(out)


def _check_args(strategy: str, window_s: float, sample_rate: int, max_clip_s: float, shard_size: int,
                max_files: int | None) -> None:
    if strategy not in DATA_STRATEGIES:
        raise ConfigError(f"unknown window strategy {strategy!r}; choose from {list(DATA_STRATEGIES)}")
    for name, value in (("window_s", window_s), ("sample_rate", sample_rate), ("max_clip_s", max_clip_s),
                        ("shard_size", shard_size)):
        if value <= 0:
            raise ConfigError(f"prepare_cache: {name} must be positive, got {value}")
    if max_files is not None and max_files < 1:
        raise ConfigError(f"prepare_cache: max_files must be positive, got {max_files}")


def _prepare_table(table: pd.DataFrame, max_files: int | None) -> pd.DataFrame:
    """A checked train.csv, `max_files` rows round-robin over classes; object columns as strings.

    The index stays train.csv's row number (0 = the first data row): it becomes the cache's ``row``.
    """
    table = subset_round_robin(table, max_files) if max_files is not None else table
    for col in ("primary_label", "filename"):  # stripped, as the checks read them
        table[col] = table[col].astype(str).str.strip()
    for col in table.columns[table.dtypes == object]:  # mixed cells would not fit a Parquet column
        table[col] = table[col].map(lambda v: v if pd.isna(v) else str(v))
    return table


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _claim(out: Path, config: dict[str, Any]) -> None:
    """Record `config` in out/cache.json, or check that the cache already there was made with it."""
    path = out / "cache.json"
    if not path.is_file():
        write_json_atomic(config, path)
        return
    old = _read_config(path)
    diff = [f"{key}={old.get(key)!r} there, {value!r} now" for key, value in config.items() if old.get(key) != value]
    if diff:
        raise DatasetError(f"{out} holds a cache prepared with another config ({'; '.join(diff)}); "
                           f"use another --out folder or delete this one")


def _read_config(path: Path) -> dict[str, Any]:
    """The settings stored in a cache's cache.json."""
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable cache config ({exc}); delete {path.parent} and prepare again"
                           ) from None
    missing = [key for key in ("strategy", "window_s", "sample_rate") if key not in config]
    if missing:
        raise DatasetError(f"{path}: not a birdclef cache config (no {missing}); "
                           f"delete {path.parent} and prepare again")
    return config


def _remove_stale_temporaries(shard_dir: Path) -> None:
    """Delete the half-written temporaries a killed run left (``.part-00003.npy.<random>.tmp``).

    One prepare per cache folder at a time: a second one running into the same folder would lose
    its temporaries here.
    """
    if shard_dir.is_dir():
        for tmp in shard_dir.glob(".part-*.tmp"):
            tmp.unlink(missing_ok=True)


def _plan_shards(table: pd.DataFrame, audio_dir: Path, shard_dir: Path, config: dict[str, Any],
                 shard_size: int, starts: list[float] | None = None) -> list[_ShardJob]:
    filenames, rows = table["filename"].tolist(), [int(r) for r in table.index]
    return [_ShardJob(k, tuple(rows[begin : begin + shard_size]),
                      tuple(filenames[begin : begin + shard_size]), audio_dir, shard_dir, config["strategy"],
                      config["window_s"], config["sample_rate"], config["max_clip_s"] or 0.0,
                      tuple(starts[begin : begin + shard_size]) if starts is not None else ())
            for k, begin in enumerate(range(0, len(table), shard_size))]


def _shard_paths(shard_dir: Path, shard: int) -> tuple[Path, Path]:
    """(samples .npy, table .parquet) of shard number `shard`."""
    stem = f"part-{shard:05d}"
    return shard_dir / f"{stem}.npy", shard_dir / f"{stem}.parquet"


def _shard_done(job: _ShardJob) -> bool:
    return all(path.is_file() for path in _shard_paths(job.shard_dir, job.shard))


def _run_jobs(jobs: list[_ShardJob], n_rows: int, num_workers: int, progress: bool) -> None:
    """Write the shards of `jobs`, in this process or in `num_workers` worker processes."""
    pending = sum(len(job.rows) for job in jobs)
    with tqdm(total=n_rows, initial=n_rows - pending, unit="clip", desc="prepare", disable=not progress) as bar:
        if num_workers <= 1 or len(jobs) <= 1:
            with threadpool_limits(limits=1, user_api="blas"):
                for job in jobs:
                    _write_shard(job, on_clip=lambda: bar.update(1))
            return
        # The platform's default start method, as torch's DataLoader uses: fork on Linux works from
        # notebooks, stdin and unguarded scripts; where it is spawn (macOS, Windows) callers need the
        # usual `if __name__ == "__main__":` guard. Workers run numpy, libsndfile and soxr only.
        with ProcessPoolExecutor(min(num_workers, len(jobs)), initializer=_init_worker,
                                 initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_write_shard, job): job for job in jobs}
            for future in as_completed(futures):
                future.result()
                bar.update(len(futures[future].rows))


def _init_worker(parent_pid: int) -> None:
    """One BLAS thread per worker, and end the worker when its parent dies (no orphan after kill -9).

    The energy rule's small mel matmul runs about 3x slower on a loaded 2-core machine when
    OpenBLAS spreads it over threads that the other workers need. A worker killed mid-shard leaves
    nothing half-done: the shard's files are written atomically.
    """
    threadpool_limits(limits=1, user_api="blas")
    die_with_parent(parent_pid)


def _write_shard(job: _ShardJob, on_clip: Callable[[], object] | None = None) -> int:
    """Decode the shard's clips, write its .npy then its .parquet; return the number decoded."""
    records, chunks, offset = [], [], 0
    for i, (row, filename) in enumerate(zip(job.rows, job.filenames)):
        record: dict[str, Any] = {"row": row, "filename": filename, "shard": job.shard, "offset": offset,
                                  "length": 0, "start_s": np.nan, "end_s": np.nan, "duration_s": np.nan,
                                  "skip_reason": ""}
        try:
            samples, window, duration_s = _clip_samples(job, filename, job.starts[i] if job.starts else np.nan)
        except AudioError as exc:  # a broken file is reported, never fatal
            record["skip_reason"] = exc.reason
        else:
            record.update(length=len(samples), start_s=window.start_s, end_s=window.end_s, duration_s=duration_s)
            chunks.append(samples)
            offset += len(samples)
        records.append(record)
        if on_clip is not None:
            on_clip()
    npy_path, table_path = _shard_paths(job.shard_dir, job.shard)
    write_atomic(npy_path, lambda tmp: _write_npy(tmp, chunks, offset))
    write_parquet_atomic(pd.DataFrame(records), table_path)
    return len(chunks)


def _clip_samples(job: _ShardJob, filename: str, start_s: float = np.nan) -> tuple[np.ndarray, Window, float]:
    """(float16 samples to store, their span in clip seconds, clip duration_s) of one clip (`start_s`: the
    table's window start with strategy=table)."""
    path = job.audio_dir / filename
    if job.strategy == "random":
        duration_s = audio_info(path).duration_s
        wave = load_audio(path, job.sample_rate, duration_s=job.max_clip_s)
        return wave.astype(np.float16), Window(0.0, len(wave) / job.sample_rate), duration_s
    wave = load_audio(path, job.sample_rate)
    duration_s = len(wave) / job.sample_rate
    if job.strategy == "table" and not np.isnan(start_s):  # clamped into the clip, as the fixed rules are
        start_s = min(float(start_s), max(duration_s - job.window_s, 0.0))
        window = Window(start_s, start_s + job.window_s) if duration_s > job.window_s else Window(0.0, job.window_s)
    else:
        rule = "reference" if job.strategy == "table" else job.strategy
        window = select_window(wave, job.sample_rate, rule, filename, job.window_s)
    samples = crop(wave, job.sample_rate, window, job.window_s)
    return samples.astype(np.float16), window, duration_s


def _write_npy(path: Path, chunks: list[np.ndarray], total: int) -> None:
    """One (total,) float16 .npy from `chunks`, without concatenating them in memory first."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (total,)})
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype="<f2").tobytes())


def _collect(jobs: list[_ShardJob], table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(index of decoded clips joined with train.csv columns, skipped files with reasons)."""
    parts = pd.concat([pd.read_parquet(_shard_paths(job.shard_dir, job.shard)[1]) for job in jobs],
                      ignore_index=True)
    bad = parts["skip_reason"] != ""
    skipped = parts.loc[bad, ["filename", "skip_reason"]].rename(columns={"skip_reason": "reason"})
    good = parts.loc[~bad, list(CACHE_COLUMNS)].reset_index(drop=True)
    meta = table.loc[good["row"].to_numpy()].drop(columns=["filename"]).reset_index(drop=True)
    meta = meta.rename(columns={col: _CSV_PREFIX + col for col in meta.columns if col in CACHE_COLUMNS})
    return pd.concat([good, meta], axis=1), skipped.reset_index(drop=True)


class WaveCache:
    """Read access to a prepared cache: one training window per clip, from memory-mapped shards.

    Pickling (DataLoader workers) carries the index and settings only; each process maps the
    shard files again on first use.

    Attributes:
        path: the cache folder.
        index: one row per decoded clip: :data:`CACHE_COLUMNS` then the train.csv columns.
        strategy: window strategy the cache was made with.
        window_s: window length in seconds.
        sample_rate: rate of the stored samples (Hz).

    Raises:
        DatasetError: `path` is not a complete cache (run ``birdclef prepare`` first) or a shard
            file is missing or shorter than the index says.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        config_path, index_path = self.path / "cache.json", self.path / "index.parquet"
        if not (config_path.is_file() and index_path.is_file()):
            raise DatasetError(f"{self.path}: not a complete wave cache (no cache.json or index.parquet); "
                               f"run `birdclef prepare DATA --out {self.path}` first")
        config = _read_config(config_path)
        self.strategy: str = config["strategy"]
        self.window_s = float(config["window_s"])
        self.sample_rate = int(config["sample_rate"])
        self.index = pd.read_parquet(index_path)
        self._locations = self.index[["shard", "offset", "length"]].to_numpy(np.int64)  # (N, 3)
        missing = [p for k in np.unique(self._locations[:, 0]) if not (p := self._shard_path(int(k))).is_file()]
        if missing:
            raise DatasetError(f"{self.path}: shard file(s) missing: {[p.name for p in missing]}; "
                               f"run `birdclef prepare DATA --out {self.path}` again to rebuild them")
        self._shards: dict[int, np.ndarray] = {}

    @property
    def window_length(self) -> int:
        """Samples in one window: round(window_s * sample_rate)."""
        return int(round(self.window_s * self.sample_rate))

    def __len__(self) -> int:
        return len(self._locations)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = {}  # memory maps are reopened lazily in the receiving process
        return state

    def segment(self, i: int) -> np.ndarray:
        """(length,) float32: the samples stored for clip `i` (a window, or the clip's head for random)."""
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range for a cache of {len(self)} clips ({self.path})")
        shard, offset, length = (int(v) for v in self._locations[i])
        return np.asarray(self._shard(shard)[offset : offset + length], dtype=np.float32)

    def window(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """(window_length,) float32: one training window of clip `i`.

        A random-strategy cache holds more than a window: `rng` draws a crop start uniformly (in
        samples), and `rng` None takes the centre crop (deterministic validation). Stored audio
        shorter than a window is tiled; fixed-strategy windows are returned as stored.
        """
        wave, length = self.segment(i), self.window_length
        if len(wave) > length:
            start = int(rng.integers(0, len(wave) - length + 1)) if rng is not None else (len(wave) - length) // 2
            wave = wave[start : start + length]
        return tile_to_length(wave, length)

    def _shard_path(self, shard: int) -> Path:
        return _shard_paths(self.path / "shards", shard)[0]

    def _shard(self, shard: int) -> np.ndarray:
        if shard not in self._shards:
            path = self._shard_path(shard)
            try:
                data = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{path}: unreadable cache shard ({exc}); delete it and prepare again") from None
            rows = self._locations[self._locations[:, 0] == shard]
            if len(data) < int((rows[:, 1] + rows[:, 2]).max()):
                raise DatasetError(f"{path}: holds {len(data)} samples, fewer than the index needs; "
                                   f"delete it and prepare again")
            self._shards[shard] = data
        return self._shards[shard]

    def __repr__(self) -> str:
        return f"WaveCache({str(self.path)!r}, clips={len(self)}, strategy={self.strategy!r}, window_s={self.window_s})"
