"""``birdclef analyze``: score a whole archive of recordings, streamed, sharded and resumable.

The archive is any folder tree of recordings (any format libsndfile reads, any length, any sample rate).
Each file is streamed in blocks (:mod:`birdclef.archive.file`), so a 10-hour recording needs no more memory
than a minute; its 5 s windows start every ``hop_s`` seconds. Results go to the ``out`` folder::

    out/settings.json                 models and settings; a re-run with other ones is refused
    out/archive.json                  the archive folder (absolute), for ``birdclef review``'s audio
    out/manifest.csv                  every recording found (relative path, size, mtime), sorted
    out/files/<relative path>.parquet one table per recording, written atomically when it is complete
    out/journal/shard-I-of-N.jsonl    what each shard finished (done / skipped with the reason)
    out/skipped.csv                   recordings that could not be decoded, with the reason
    out/detections.parquet            all files' tables in manifest order, once every file is done
    out/embeddings/<relative path>.parquet, out/embeddings.parquet   with ``embeddings=True``: the same keys
                                      and each window's BirdNET embedding (:mod:`birdclef.archive.file`)

Keys are (path relative to the archive, start_s, end_s), so two files of one name in different folders never
collide. A re-run (after a crash, a kill -9, or on more files) redoes only the files with no matching journal
record (a file whose size or mtime changed is redone). ``shard=(i, n)`` takes the i-th of n disjoint parts of
the manifest (for job arrays); every shard writes its own journal into the same folder, and whichever shard
finds every file done merges the table (``merge_only`` merges on demand). ``engine="dask"`` runs the same
per-file work as Dask tasks (:mod:`birdclef.archive.dask_engine`). Every way gives the same table.

Scores are raw probabilities by default (no smoothing, no power adjustment): an ecologist thresholds them, and
those steps are rank tricks for the competition's metric, not calibration. ``postprocess=True`` applies the
predictor's configured steps to each block of ``block_s`` seconds of windows.

A state file damaged by a crash or a full disk follows :mod:`birdclef.utils.state`: a per-file table is set
aside (``.corrupt``) and its recording redone; an unreadable ``settings.json`` stops the job, saying what to
do; unreadable journal lines are ignored (said once) and their recordings redone.

With ``embeddings=True`` a file is finished only when both its tables are in place (they are written in one
step, so one exists without the other only after a kill between the two renames; the file is then redone).
"""

from __future__ import annotations

import glob
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from birdclef.archive.file import GroupedWriter, analyze_file, embedding_schema, result_schema
from birdclef.archive.manifest import Entry, Journal, Record, discover, in_shard, read_journals
from birdclef.archive.scorers import WindowScorer, window_scorer
from birdclef.errors import AudioError, BirdclefError
from birdclef.infer.base import Predictor
from birdclef.utils.io import atomic_path, exclusive_lock, write_csv_atomic, write_json_atomic
from birdclef.utils.state import intact, read_settings

TABLE = "detections.parquet"
EMBEDDINGS = "embeddings.parquet"


@dataclass
class AnalyzeSummary:
    out: Path
    n_files: int = 0
    """Recordings in the archive."""
    n_shard: int = 0
    """Recordings of this shard."""
    resumed: int = 0
    """Of those, already finished by an earlier run."""
    analysed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(relative path, reason) of this run's recordings that could not be decoded."""
    audio_s: float = 0.0
    """Seconds of audio analysed by this run."""
    pending: int = 0
    """Recordings of the archive (any shard) not finished yet."""
    table: Path | None = None
    """The merged table, when it was written."""
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class Job:
    """What a per-file task needs besides the models (picklable, for Dask)."""

    archive: Path
    out: Path
    hop_s: float
    block_s: float
    embeddings: bool = False


def part_path(out: Path, rel: str) -> Path:
    """Where one recording's table goes: ``out/files/<relative path>.parquet`` (the suffix kept: a.wav != a.flac)."""
    return Path(out) / "files" / f"{rel}.parquet"


def embedding_path(out: Path, rel: str) -> Path:
    """Where one recording's embedding table goes: ``out/embeddings/<relative path>.parquet``."""
    return Path(out) / "embeddings" / f"{rel}.parquet"


def process_entry(scorer: WindowScorer, job: Job, entry: Entry) -> Record:
    """Analyse one recording into its table; an undecodable one becomes a ``skipped`` record, never an error."""
    dest = part_path(job.out, entry.path)
    emb_dest = embedding_path(job.out, entry.path) if job.embeddings else None
    for target in (dest, emb_dest) if emb_dest else (dest,):
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):  # left by a run killed on this file
            stale.unlink(missing_ok=True)
    try:
        extra = {} if emb_dest is None else {"embeddings_dest": emb_dest}
        result = analyze_file(scorer, job.archive / entry.path, entry.path, dest, job.hop_s, job.block_s, **extra)
    except AudioError as exc:
        return Record(entry.path, entry.size, entry.mtime_ns, "skipped", reason=exc.reason)
    return Record(entry.path, entry.size, entry.mtime_ns, "done", windows=result.windows, audio_s=result.audio_s)


def _settings(predictor: Predictor, hop_s: float, block_s: float, postprocess: bool, embeddings: bool) -> dict:
    settings = {"predictor": predictor.settings(), "sample_rate": predictor.sample_rate, "hop_s": hop_s,
                "postprocess": postprocess,
                "block_s": block_s if postprocess else None}  # raw scores do not depend on the block size
    if embeddings:  # only when on: folders made before the option keep their settings
        settings["embeddings"] = True
    return settings


def _embeds(out: Path) -> bool:
    """Whether the results in `out` carry embedding tables (its settings.json says so)."""
    path = Path(out) / "settings.json"
    return path.is_file() and bool(read_settings(path).get("embeddings", False))


def _check_settings(out: Path, settings: dict) -> str:
    """Store `settings` in out/settings.json, or refuse when the folder holds results of other ones; their key."""
    path = out / "settings.json"
    settings = json.loads(json.dumps(settings, default=str))
    if path.is_file() and read_settings(path) != settings:
        raise BirdclefError(f"{out} holds results made with other models or settings (see {path}); use another "
                            "--out, or delete it to start over")
    write_json_atomic(settings, path)
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finished(out: Path, entries: list[Entry]) -> dict[str, Record]:
    """The journal records of `entries` still valid: done (with whole tables in place) or skipped.

    A table damaged by a crash or a full disk is set aside (``.corrupt``, :mod:`birdclef.utils.state`): its
    recording is no longer finished, and the next run of its shard redoes it.
    """
    records, embeds = read_journals(out / "journal", entries), _embeds(out)

    def whole(path: Path, rel: str) -> bool:
        return intact(path, redo=f"{rel} is redone by the next run of its shard")

    return {p: r for p, r in records.items() if r.status == "skipped" or (
        whole(part_path(out, p), p) and (not embeds or whole(embedding_path(out, p), p)))}


def analyze_archive(archive: Path, out: Path, predictor: Predictor, hop_s: float = 5.0,
                    block_s: float = 60.0, postprocess: bool = False, shard: tuple[int, int] = (0, 1),
                    engine: str = "plain", scheduler: str = "local", workers: int = 2, progress: bool = True,
                    merge: bool = True, rebuild: Callable[[], Predictor] | None = None,
                    raven: float | Mapping[str, float] | None = None, embeddings: bool = False) -> AnalyzeSummary:
    """Analyse every recording of this shard of `archive` into `out` (module docstring), then merge if all are done.

    Args:
        archive: folder tree of recordings.
        out: results folder (created).
        predictor: the models (``TorchPredictor``, ``ExportedPredictor``, ``BirdnetPredictor``, a blend).
        hop_s: seconds between window starts (5: ``predict``'s rows; 2.5: half-overlapping windows).
        block_s: seconds of windows scored at a time (memory; post-processing span).
        postprocess: apply the predictor's smoothing / power adjustment per block (default raw probabilities).
        shard: (index, count) of the part of the manifest to do.
        engine: ``plain`` (this process) or ``dask``.
        scheduler: with dask, ``local`` (a LocalCluster of `workers` processes) or a scheduler address.
        workers: LocalCluster worker processes.
        merge: write ``detections.parquet`` when every file of the archive is finished.
        rebuild: with dask, builds the same predictor on each worker (once per worker); it must pickle
            (cloudpickle), e.g. ``functools.partial(build_predictor, args)``.
        raven: with the table, also write Raven selection tables and detections.csv of the windows scoring
            at least this, one number or {class: threshold} (:mod:`birdclef.archive.raven`).
        embeddings: also write each window's BirdNET embedding (``out/embeddings/``, ``embeddings.parquet``);
            the predictor must hold BirdNET (alone or in a blend).

    Raises:
        BirdclefError: no recordings; `out` holds results of other settings; this shard is already running;
            a bad hop/block; dask is not installed; `embeddings` without a BirdNET member.
    """
    started, archive, out = time.perf_counter(), Path(archive), Path(out)
    _check_args(hop_s, block_s, raven, engine, rebuild, scheduler)
    check_not_archive(archive, out)
    if embeddings and window_scorer(predictor, postprocess).embedder is None:
        raise BirdclefError(f"--embeddings needs BirdNET (--birdnet, alone or in a blend); the "
                            f"{type(predictor).__name__} given has no BirdNET member")
    entries = discover(archive, exclude=out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"archive": str(archive.resolve())}, out / "archive.json")  # where `birdclef review` finds audio
    key = _check_settings(out, _settings(predictor, hop_s, block_s, postprocess, embeddings))
    write_csv_atomic(pd.DataFrame([asdict(e) for e in entries]), out / "manifest.csv")
    index, count = shard
    journal_path = out / "journal" / f"shard-{index}-of-{count}.jsonl"
    summary = AnalyzeSummary(out, n_files=len(entries))
    with exclusive_lock(journal_path, f"birdclef analyze (shard {index}/{count})"):
        mine = [e for e in entries if in_shard(e.path, index, count)]
        done = finished(out, mine)
        todo = [e for e in mine if e.path not in done]
        summary.n_shard, summary.resumed = len(mine), len(mine) - len(todo)
        bar = tqdm(total=len(mine), initial=summary.resumed, desc="analyze", unit="file", disable=not progress)
        record = partial(_record, Journal(journal_path), summary, bar)
        job = Job(archive, out, hop_s, block_s, embeddings)
        if engine == "dask":
            from birdclef.archive.dask_engine import run_dask

            run_dask(todo, process_entry, partial(_worker_scorer, rebuild, postprocess), key, job, record, scheduler,
                     workers)
        else:
            scorer = window_scorer(predictor, postprocess)
            for entry in todo:
                record(process_entry(scorer, job, entry))
        bar.close()
    _finish(summary, entries, merge)
    if summary.table is not None and raven is not None:
        write_raven(out, entries, raven)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def check_not_archive(archive: Path, out: Path) -> None:
    """Refuse an output folder that is the archive itself (results would mix with the recordings).

    Raises:
        BirdclefError: `out` and `archive` are one folder.
    """
    if Path(out).resolve() == Path(archive).resolve():
        raise BirdclefError(f"--out {out}: is the archive itself; results go to a folder of their own (inside "
                            f"the archive is fine: it is not searched), e.g. --out {Path(archive) / 'results'}")


def _check_args(hop_s: float, block_s: float, raven: float | Mapping | None, engine: str, rebuild: object,
                scheduler: str = "local") -> None:
    if hop_s <= 0 or block_s <= 0:
        raise BirdclefError(f"--hop and --block-s must be positive seconds, got {hop_s} and {block_s}")
    if raven is not None and not isinstance(raven, Mapping) and not 0.0 < raven <= 1.0:
        raise BirdclefError(f"--raven threshold must be in (0, 1], got {raven}")
    if engine not in ("plain", "dask"):
        raise BirdclefError(f"--engine {engine!r}: choose plain or dask")
    if engine == "dask" and rebuild is None:
        raise BirdclefError("engine='dask' needs `rebuild`, a picklable callable that builds the predictor")
    if engine == "dask":
        from birdclef.archive.dask_engine import check_scheduler

        check_scheduler(scheduler)


def _record(journal: Journal, summary: AnalyzeSummary, bar: tqdm, rec: Record) -> None:
    """Journal one finished recording (after its table is in place) and count it."""
    journal.append(rec)
    summary.analysed += rec.status == "done"
    summary.audio_s += rec.audio_s
    if rec.status == "skipped":
        summary.skipped.append((rec.path, rec.reason))
    bar.update(1)
    bar.set_postfix_str(f"{summary.audio_s / 3600:.2f} h audio", refresh=False)


def _worker_scorer(rebuild: Callable[[], Predictor], postprocess: bool) -> WindowScorer:
    return window_scorer(rebuild(), postprocess)


def _finish(summary: AnalyzeSummary, entries: list[Entry], merge: bool) -> None:
    records = finished(summary.out, entries)
    write_skipped(summary.out, entries, records)
    summary.pending = sum(e.path not in records for e in entries)
    if merge and not summary.pending:
        try:
            summary.table = merge_results(summary.out, entries, records)
        except BirdclefError:  # another shard finished at the same moment and is merging: it writes the table
            summary.table = None


def write_skipped(out: Path, entries: list[Entry], records: dict[str, Record]) -> None:
    """out/skipped.csv (path, reason) of every skipped recording of the archive; removed when there are none."""
    rows = [(e.path, records[e.path].reason) for e in entries if e.path in records
            and records[e.path].status == "skipped"]
    path = out / "skipped.csv"
    if rows:
        write_csv_atomic(pd.DataFrame(rows, columns=["path", "reason"]), path)
    elif path.exists():
        path.unlink()


def merge_results(out: Path, entries: list[Entry] | None = None, records: dict[str, Record] | None = None) -> Path:
    """Concatenate the finished files' tables, in manifest order, into ``out/detections.parquet`` (streamed),
    and their embedding tables into ``out/embeddings.parquet`` when the run wrote them.

    Raises:
        BirdclefError: some recording of the manifest is not finished (the message counts them and names
            one), or another process is merging.
    """
    out = Path(out)
    if entries is None:
        entries = [Entry(**row) for row in pd.read_csv(out / "manifest.csv", keep_default_na=False)
                   .to_dict("records")]
    records = finished(out, entries) if records is None else records
    missing = [e.path for e in entries if e.path not in records]
    if missing:
        raise BirdclefError(f"{out}: {len(missing)} of {len(entries)} recordings are not analysed yet (e.g. "
                            f"{missing[0]}); run the remaining shards first")
    target = out / TABLE
    done = [e for e in entries if records[e.path].status == "done"]
    with exclusive_lock(target, "birdclef analyze merge"):
        _concat(out / TABLE, [part_path(out, e.path) for e in done], result_schema([]))
        if _embeds(out):
            _concat(out / EMBEDDINGS, [embedding_path(out, e.path) for e in done], embedding_schema(0))
    return target


def _concat(target: Path, parts: list[Path], empty: object) -> None:
    """Stream `parts` into `target` atomically (schema of the first; `empty` when there are none)."""
    with atomic_path(target) as tmp:
        schema = pq.read_schema(parts[0]) if parts else empty
        with GroupedWriter(tmp, schema, rows=65_536) as writer:
            for part in parts:
                writer.write(pq.ParquetFile(part).read())


def write_raven(out: Path, entries: list[Entry], threshold: float | Mapping[str, float]) -> Path:
    """Raven selection tables and ``detections.csv`` of every finished recording (:mod:`birdclef.archive.raven`)."""
    from birdclef.archive.raven import write_detections

    records = finished(out, entries)
    parts = [(e.path, part_path(out, e.path), records[e.path].audio_s) for e in entries
             if e.path in records and records[e.path].status == "done"]
    high_hz = read_settings(out / "settings.json")["sample_rate"] / 2
    return write_detections(out, parts, threshold, high_hz)
