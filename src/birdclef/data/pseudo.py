"""Pseudo-label tables: soft targets for unlabelled soundscape windows, and the fold rule that keeps them honest.

A pseudo table (``birdclef pseudo`` writes it, ``train --pseudo`` reads it) is a Parquet file::

    path     str      the recording, relative to the soundscape folder named in the provenance
    start_s  float64  window start in seconds from the file's start
    end_s    float64  window end (start_s + 5)
    fold     int64    the file's fold under the (n_folds, fold_seed) split of soundscape files
    <class>  float32  one column per class: the teacher's soft probability, NaN where no teacher scores it

NaN is a *mask*, not a zero: the loss skips those targets (a class BirdNET does not know is unknown,
not absent). The schema metadata key ``birdclef.pseudo`` holds the provenance as JSON: at least
``soundscapes`` (the folder the paths are relative to, absolute), ``classes`` (column order) and the
teacher blend, transforms and fold assignment that made the table.

**The fold rule.** Soundscape files are split into folds as clips are (:func:`soundscape_folds`: whole files,
seeded). A student's fold ``k`` trains on the pseudo windows of soundscapes in the other folds only, and a run
trained that way records which soundscape was in which fold (``RUN/pseudo_folds.csv``,
:func:`write_run_pseudo`). When that run becomes a teacher, a soundscape of fold ``j`` is scored by the run's
fold-``j`` model only (:func:`teacher_checkpoints`), the one model that never trained on its pseudo-labels.

**Windows of the labelled clips.** A table may also hold windows of the dataset's own training clips (the
teachers' window-level labels of weakly labelled clips: ``selftrain --label-clips``). Such a window takes its
clip's stratified fold, not a soundscape fold (`clip_folds` of :func:`read_pseudo`, :func:`clip_fold_map`), so
fold ``k`` never trains on a window of a clip it validates on, and ``RUN/pseudo_folds.csv`` records that fold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from birdclef.errors import ConfigError, DatasetError
from birdclef.utils.io import write_csv_atomic, write_json_atomic

KEY_COLUMNS = ("path", "start_s", "end_s", "fold")
METADATA_KEY = b"birdclef.pseudo"
RUN_FOLDS = "pseudo_folds.csv"
"""Per run trained on pseudo-labels: ``path`` (as in the table), ``audio`` (resolved file), ``fold``."""
RUN_RECORD = "pseudo.json"
"""Per run trained on pseudo-labels: the table's path, sha256 and provenance."""


@dataclass
class PseudoLabels:
    """A read pseudo table, aligned to a class list."""

    table: pd.DataFrame
    """The key columns (path, start_s, end_s, fold) and ``audio`` (the resolved file of each row)."""
    targets: np.ndarray
    """(N, K) float32 soft targets, 0 where masked."""
    mask: np.ndarray
    """(N, K) bool: True where the target is known."""
    provenance: dict
    source: Path
    """The table file."""
    sha256: str

    def __len__(self) -> int:
        return len(self.table)

    @property
    def root(self) -> Path:
        return Path(self.provenance["soundscapes"])


def soundscape_folds(paths: list[str], n_folds: int, seed: int) -> dict[str, int]:
    """Fold of each distinct soundscape path: whole files, a seeded permutation dealt round-robin.

    The same (paths, n_folds, seed) always give the same folds, whatever the order of `paths`.
    """
    unique = sorted(set(paths))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i]: int(rank % n_folds) for rank, i in enumerate(order)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_provenance(path: Path) -> dict:
    """The ``birdclef.pseudo`` metadata of a pseudo table (DatasetError naming the file when absent)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable Parquet pseudo-label table ({exc})") from None
    if METADATA_KEY not in meta:
        raise DatasetError(f"{path}: no {METADATA_KEY.decode()} provenance; write pseudo tables with `birdclef pseudo`")
    provenance = json.loads(meta[METADATA_KEY])
    for key in ("soundscapes", "classes"):
        if key not in provenance:
            raise DatasetError(f"{path}: its provenance lacks {key!r}")
    return provenance


def clip_fold_map(audio_dir: Path, filenames: Sequence[str], folds: Sequence[int]) -> dict[str, int]:
    """{resolved file of each training clip (`audio_dir` / its cache ``filename``): its fold}: the `clip_folds`
    of :func:`read_pseudo`."""
    return {str((Path(audio_dir) / name).resolve()): int(fold) for name, fold in zip(filenames, folds)}


def read_pseudo(path: str | Path, classes: list[str], n_folds: int | None = None, seed: int | None = None,
                check_audio: bool = True, clip_folds: dict[str, int] | None = None) -> PseudoLabels:
    """Read and check a pseudo table against the run's `classes`.

    A class of `classes` without a column is masked in every row (no teacher scored it); a class column
    that is not in `classes` is an error, as are values outside [0, 1], missing key columns and (with
    `check_audio`) recordings that are not on disk. With `n_folds` and `seed` the ``fold`` column is
    recomputed (:func:`soundscape_folds`) so that it follows the student's split; then a window of a file in
    `clip_folds` (:func:`clip_fold_map`: the run's labelled clips) takes that clip's fold.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such pseudo-label table")
    provenance = read_provenance(path)
    frame = pd.read_parquet(path)
    missing = [c for c in KEY_COLUMNS[:3] if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing key columns {missing}")
    class_cols = [c for c in frame.columns if c not in KEY_COLUMNS]
    extra = sorted(set(class_cols) - set(classes))
    if extra:
        raise DatasetError(f"{path}: {len(extra)} class columns are not classes of this dataset: {extra[:5]}")
    values = np.full((len(frame), len(classes)), np.nan, dtype=np.float32)
    for k, name in enumerate(classes):
        if name in frame.columns:
            values[:, k] = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float32)
    bad = np.argwhere(~np.isnan(values) & ((values < 0) | (values > 1)))
    if len(bad):
        row, k = bad[0]
        raise DatasetError(f"{path}: row {row} ({frame['path'].iloc[row]} at {frame['start_s'].iloc[row]} s), "
                           f"class {classes[k]}: {values[row, k]} is not a probability in [0, 1]")
    table = frame[list(KEY_COLUMNS[:3])].copy()
    table["path"] = table["path"].astype(str)
    if n_folds is not None and seed is not None:
        folds = soundscape_folds(table["path"].tolist(), n_folds, seed)
        table["fold"] = table["path"].map(folds).astype(np.int64)
    else:
        table["fold"] = frame["fold"].astype(np.int64) if "fold" in frame else -1
    attach_audio(table, Path(provenance["soundscapes"]), path, check_audio)
    mask = ~np.isnan(values)
    labels = PseudoLabels(table.reset_index(drop=True), np.nan_to_num(values, nan=0.0), mask, provenance, path,
                          _sha256(path))
    return follow_clip_folds(labels, clip_folds)


def follow_clip_folds(labels: PseudoLabels | None, clip_folds: dict[str, int] | None) -> PseudoLabels | None:
    """`labels` with each window of a file in `clip_folds` (:func:`clip_fold_map`) in that clip's fold (in place)."""
    if labels is not None and clip_folds:
        table = labels.table
        own = table["audio"].map({a: clip_folds.get(str(Path(a).resolve()), -1) for a in table["audio"].unique()})
        table["fold"] = np.where(own >= 0, own, table["fold"]).astype(np.int64)
    return labels


def attach_audio(table: pd.DataFrame, root: Path, source: Path, check: bool = True) -> None:
    """Add the ``audio`` column (each row's recording: `root` / its ``path``) to a table of windows read from
    `source`.

    Raises:
        DatasetError: with `check`, recordings that are not on disk (a few named).
    """
    table["audio"] = [str(root / p) for p in table["path"]]
    if check:
        absent = sorted({a for a in table["audio"] if not Path(a).is_file()})
        if absent:
            raise DatasetError(f"{source}: {len(absent)} of its recordings are not on disk (relative to {root}): "
                               f"{absent[:3]}")


def write_run_pseudo(run: Path, labels: PseudoLabels) -> None:
    """Record in `run` the table it trained on and each soundscape's fold (the fold rule's input)."""
    files = labels.table.drop_duplicates("path")[["path", "audio", "fold"]].copy()
    files["audio"] = [str(Path(a).resolve()) for a in files["audio"]]
    write_csv_atomic(files.sort_values("path").reset_index(drop=True), Path(run) / RUN_FOLDS)
    write_json_atomic({"table": str(labels.source.resolve()), "sha256": labels.sha256, "rows": len(labels),
                       "provenance": labels.provenance}, Path(run) / RUN_RECORD)


def read_run_pseudo_folds(run: Path) -> dict[str, int] | None:
    """{resolved audio path: fold} of the soundscapes `run` trained on, or None for a run without pseudo-labels."""
    where = Path(run) / RUN_FOLDS
    if not where.is_file():
        return None
    frame = pd.read_csv(where)
    return dict(zip(frame["audio"].astype(str), frame["fold"].astype(int)))


_UNREAD = object()


def teacher_checkpoints(run: Path, audio: Path, folds: dict[str, int] | None = _UNREAD) -> list[Path] | None:
    """Which of `run`'s fold checkpoints may pseudo-label `audio` under the fold rule.

    None: every finished fold may (the run never trained on `audio`'s pseudo-labels). Otherwise the one
    ``fold{j}/best.pt`` whose fold held `audio` out; a DatasetError when that fold is not finished.
    `folds`: the run's :func:`read_run_pseudo_folds`, when the caller asks for many files (read once, not once
    per file: 10,000 soundscapes would read a 10,000-row table 10,000 times).
    """
    folds = read_run_pseudo_folds(run) if folds is _UNREAD else folds
    key = str(Path(audio).resolve())
    if folds is None or key not in folds:
        return None
    best = Path(run) / f"fold{folds[key]}" / "best.pt"
    if not (best.parent / "done.json").is_file() or not best.is_file():
        raise DatasetError(f"{run}: trained on pseudo-labels of {audio} in folds other than {folds[key]}, and fold "
                           f"{folds[key]} (the only one that may label it) is not finished")
    return [best]


def write_pseudo(frame: pd.DataFrame, classes: list[str], provenance: dict, out: str | Path) -> Path:
    """Write a pseudo table atomically: `frame` holds the key columns and one column per class (NaN: masked).

    `provenance` must name ``soundscapes``; ``classes`` is added. Class columns are stored as float32.
    """
    import pyarrow as pa

    from birdclef.utils.io import atomic_path

    if "soundscapes" not in provenance:
        raise ValueError("provenance must name the soundscape folder ('soundscapes')")
    columns = {"path": frame["path"].astype(str).to_numpy(), "start_s": frame["start_s"].to_numpy(np.float64),
               "end_s": frame["end_s"].to_numpy(np.float64), "fold": frame["fold"].to_numpy(np.int64)}
    columns.update({c: frame[c].to_numpy(np.float32) for c in classes})
    table = pa.table(columns)
    meta = {METADATA_KEY: json.dumps({**provenance, "classes": list(classes)}).encode()}
    table = table.replace_schema_metadata(meta)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def trained_folds(run: Path) -> list[str]:
    """The folds of `run` that trained at all (finished, or with a resumable ``last.ckpt``), by name."""
    return sorted({p.parent.name for name in ("done.json", "last.ckpt") for p in Path(run).glob(f"fold*/{name}")})


def check_resumed_table(run: Path, record: Path, table: Path | None, sha256: str | None, what: str, flag: str,
                        without: str) -> None:
    """The one rule for resuming a run with a table of extra examples (``--pseudo``, ``--reviews``): what its
    trained folds learned from stays what it learns from.

    A run that recorded a table (`record`, read when it exists) must be given that same table (same sha256); a
    run whose folds trained without one may not be given one (its folds would change their training set
    halfway); a run with no trained fold takes anything (nothing learned yet).

    Args:
        table, sha256: the table given now (None, None: none).
        what: its name in messages ("pseudo-label table"); flag: its flag ("--pseudo"); without: how a run
            without it is described ("pseudo-labels").

    Raises:
        ConfigError: one of the changes above (the message names the run and the recorded table).
    """
    before = None
    if record.is_file():
        try:
            before = json.loads(record.read_text())
        except ValueError:
            raise ConfigError(f"{record}: unreadable record of the {what} this run trained on; delete the run "
                              "folder to start again, or choose another --out") from None
    if before is not None and table is None:
        raise ConfigError(f"cannot resume {run}: it was trained with the {what} {before['table']}; pass {flag} "
                          f"{before['table']} again (a run trains on the {what} it began with: {before['table']}, "
                          f"sha256 {before['sha256']})")
    if before is not None and sha256 != before["sha256"]:
        raise ConfigError(f"cannot resume {run} with the {what} {table} (sha256 {sha256}): it trains on the "
                          f"{what} {before['table']} (sha256 {before['sha256']}); choose another --out")
    trained = trained_folds(run)
    if before is None and table is not None and trained:
        raise ConfigError(f"cannot resume {run} with {flag} {table}: its finished folds ({', '.join(trained)}) "
                          f"trained without {without}; choose another --out")



def open_run_pseudo(run: Path, pseudo: Path | None, classes: list[str], n_folds: int, fold_seed: int,
                    record: bool, existed: bool, clip_folds: dict[str, int] | None = None) -> PseudoLabels | None:
    """Read `pseudo` (folds following the run's ``n_folds`` / ``fold_seed`` split, windows of its labelled clips
    their clip's fold: `clip_folds`, :func:`clip_fold_map`) for a run that trains on it: a
    resumed run (`existed`) keeps the table it trained on (:func:`check_resumed_table`), and with `record` the
    table and the soundscapes' folds are written to `run` (:func:`write_run_pseudo`; False in a DDP rank > 0).

    Raises:
        ConfigError: a resumed run given another table, or a table it did not train on.
        DatasetError: a broken table (named).
    """
    labels = None if pseudo is None else read_pseudo(pseudo, classes, n_folds, fold_seed, clip_folds=clip_folds)
    if existed and record:
        check_resumed_table(run, Path(run) / RUN_RECORD, None if labels is None else labels.source,
                            None if labels is None else labels.sha256, "pseudo-label table", "--pseudo",
                            "pseudo-labels")
    if labels is not None and record:
        write_run_pseudo(run, labels)
    return labels


MASS_RECORD = "pseudo_mass.json"
"""Per fold trained with ``train.pseudo_mass_cap``: the cap, how many classes it scaled and their factors."""


def pseudo_mass_factors(labelled_target: np.ndarray, labelled_weight: np.ndarray, pool_target: np.ndarray,
                        pool_mask: np.ndarray, pool_weight: np.ndarray | float, n_drawn: int,
                        cap: float) -> np.ndarray:
    """(K,) float32 factor per class on the loss of the pseudo rows, so that no class learns more from pseudo-labels
    than `cap` times what it learns from labels in an epoch (``train.pseudo_mass_cap``).

    Labelled mass ``M_k = sum_i target_ik w_i`` over the rows every epoch trains on (the fold's training clips, and
    reviewed windows: masked targets are 0); pseudo mass ``P_k = n_drawn * mean_j(target_jk mask_jk w_j)`` over the
    fold's pool of pseudo windows (the expected mass of an epoch's draw of `n_drawn` of them). The factor is
    ``cap M_k / P_k`` where ``P_k > cap M_k``, else 1. A class with no labelled mass (``M_k = 0``) keeps 1: there is
    no label to protect from the teacher's view, and a 0 would silence the only evidence of a class that has no clip.

    Args:
        labelled_target: (N, K) targets in [0, 1]; labelled_weight: (N,) their loss weights.
        pool_target: (M, K) pseudo targets (0 where masked); pool_mask: (M, K) bool or 0-1; pool_weight: (M,) or one
            weight for all.
        n_drawn: pseudo windows drawn per epoch.
        cap: the multiple (> 0).
    """
    if not cap > 0:
        raise ValueError(f"the pseudo mass cap must be positive, got {cap}")
    n_classes = labelled_target.shape[1]
    labelled = (np.asarray(labelled_target, np.float64) * np.asarray(labelled_weight, np.float64)[:, None]).sum(0)
    if len(pool_target) == 0 or n_drawn == 0:
        return np.ones(n_classes, np.float32)
    weight = np.broadcast_to(np.asarray(pool_weight, np.float64), (len(pool_target),))
    pseudo = n_drawn * (np.asarray(pool_target, np.float64) * np.asarray(pool_mask, np.float64)
                        * weight[:, None]).mean(0)
    over = (labelled > 0) & (pseudo > cap * labelled)
    factors = np.ones(n_classes, np.float64)
    factors[over] = cap * labelled[over] / pseudo[over]
    return factors.astype(np.float32)


def mass_record(factors: np.ndarray, classes: list[str], cap: float) -> dict:
    """What :data:`MASS_RECORD` holds: the cap, the number of classes scaled, the smallest factor and each scaled
    class's factor."""
    capped = np.flatnonzero(factors < 1.0)
    return {"cap": cap, "classes_capped": int(len(capped)), "min_factor": float(factors.min()) if len(factors) else 1.0,
            "factors": {classes[k]: round(float(factors[k]), 6) for k in capped}}
