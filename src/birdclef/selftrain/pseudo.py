"""``birdclef pseudo``: soft pseudo-labels for a folder of unlabelled soundscapes, under the fold rule.

Every recording under `soundscapes` (recursive, :func:`~birdclef.archive.manifest.discover`) is scored in 5 s
windows every `hop_s` seconds (:func:`~birdclef.archive.file.analyze_file`, streamed) by a blend of teachers:
trained runs (torch or BirdNET-head runs, each a run folder or one ``foldK/best.pt``) and optionally BirdNET
zero-shot. The result is a pseudo table (:mod:`birdclef.data.pseudo`): path, start_s, end_s, fold, one soft
probability per class.

**The fold rule.** A teacher run that trained on pseudo-labels says which soundscape was in which of its folds
(``RUN/pseudo_folds.csv``); a soundscape it trained on is scored by that run's held-out fold model only
(:func:`~birdclef.data.pseudo.teacher_checkpoints`). Files are grouped by the checkpoints that may label them,
and each distinct set of models is built once. The provenance lists, per file, the checkpoints that scored it.

**Transforms**, in this order, on the blended probability ``p`` (raw by default; ``postprocess`` applies the
predictor's smoothing / power adjustment first):

1. per-class ``thresholds`` (a ``birdclef thresholds`` CSV or one number): ``p < threshold`` becomes 0, the rest
   stays soft. Thresholds compare the teacher's probability before the power below, the scale they were fitted
   on. Classes the CSV gives no threshold are left as they are (listed in the provenance);
2. ``power``: ``p ** power``. The 1st place of BirdCLEF 2024 sharpened with ``p^(1/0.65)``: ``power=1/0.65``
   (1.54). Powers above 1 push uncertain labels down; 1 leaves them.

Classes no teacher scores (BirdNET alone: the classes it does not know) stay NaN, a mask, not a zero, unless
`unknown_fill` gives a value.

**Resume.** Each file's raw scores go to ``<out>.parts/files/<relative path>.parquet`` (atomically) with a
``.json`` beside it naming its checkpoints and the file's size and mtime; a re-run redoes only files without a
matching part. ``<out>.parts/settings.json`` refuses a re-run with other teachers or scoring settings (the
transforms and the fold split may change: they apply when the table is assembled). Undecodable files are skipped
and listed in ``<out stem>.skipped.csv``. A lock refuses a second job on the same `out`. The parts stay after
the table is written (a re-run with another power or thresholds reuses them); delete ``<out>.parts/`` to free
the space. BirdNET alone lists the classes it does not know in ``<out stem>.birdnet_unknown.csv``.

Example:
    >>> s = pseudo_label(Path("train_soundscapes"), Path("pseudo.parquet"), [Path("runs/A"), Path("runs/B")],
    ...                  weights=[0.6, 0.4], power=1 / 0.65)
    >>> s.n_rows, s.masked_classes, s.skipped
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from birdclef.archive.file import analyze_file
from birdclef.archive.manifest import Entry, discover
from birdclef.config import DataConfig, config_to_dict
from birdclef.data.pseudo import read_run_pseudo_folds, soundscape_folds, teacher_checkpoints, write_pseudo
from birdclef.errors import AudioError, BirdclefError
from birdclef.infer.base import ROW_WINDOW_S, Predictor
from birdclef.utils.io import exclusive_lock, read_json, write_csv_atomic, write_json_atomic
from birdclef.utils.state import intact, read_settings, set_aside
from birdclef.zoo.build import PredictorSpec
from birdclef.zoo.runs import Run, run_folder

BIRDNET = "birdnet"
"""How BirdNET zero-shot is named in a file's teacher list."""
NOT_SETTINGS = ("device", "threads", "model", "backend", "geo", "geo_taxonomy", "blend")
"""Fields of the teachers' spec that are not part of the parts' identity (where they run; what pseudo never takes)."""


@dataclass
class PseudoSummary:
    out: Path
    n_rows: int = 0
    n_files: int = 0
    """Recordings found."""
    resumed: int = 0
    """Of those, scored by an earlier run."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_path: Path | None = None
    masked_classes: list[str] = field(default_factory=list)
    """Classes NaN in every row (no teacher scores them)."""
    elapsed_s: float = 0.0


def pseudo_label(soundscapes: Path | Sequence[Path], out: Path, teachers: list[Path] | None = None,
                 weights: list[float] | None = None, birdnet: bool = False, power: float = 1.0,
                 thresholds: Path | dict[str, float] | float | None = None, hop_s: float = ROW_WINDOW_S,
                 postprocess: bool = False, n_folds: int | None = None,
                 fold_seed: int | None = None, data: Path | None = None, taxonomy: Path | None = None,
                 sample_submission: Path | None = None, birdnet_model: Path | None = None,
                 unknown_fill: float | None = None, config_file: Path | None = None, overrides: list[str] = (),
                 device: str = "auto", threads: int | None = None, progress: bool = True) -> PseudoSummary:
    """Pseudo-label every recording under `soundscapes` into the table `out` (module docstring).

    Args:
        soundscapes: one folder, or several (e.g. ``train_soundscapes`` and the dataset's own ``train_audio``: the
            teachers' window labels of the labelled clips). With several, the table's root is their common folder
            and each row's ``path`` is relative to it.
        teachers: run folders or ``foldK/best.pt`` files, blended with `weights` (then BirdNET's, with `birdnet`).
        power: exponent of the transform ``p ** power`` (> 0).
        thresholds: per-class CSV (``birdclef thresholds``), {class: threshold}, or one threshold for all.
        n_folds, fold_seed: the student's split of soundscape files (default: the first teacher run's
            ``data.n_folds`` / ``data.fold_seed``, else 5 / 42).
        data, taxonomy, sample_submission: with BirdNET alone, the class list (and scientific names).
        config_file, overrides: infer settings over the first teacher's stored ones (``-c`` / ``--set``).

    Raises:
        BirdclefError: no teacher, bad power / thresholds / weights, another job on `out`, a teacher whose
            held-out fold is unfinished, settings differing from an earlier run's parts, or no file scored.
    """
    start = time.time()
    spec = PredictorSpec(runs=tuple(Path(t) for t in teachers or ()),
                         weights=None if weights is None else tuple(weights), birdnet=birdnet,
                         birdnet_model=birdnet_model, data=data, taxonomy=taxonomy, sample_submission=sample_submission,
                         unknown_fill=unknown_fill, config_file=config_file, overrides=tuple(overrides), device=device,
                         threads=threads)
    _check_flags(spec, power, hop_s)
    limits = _thresholds(thresholds)
    n_folds, fold_seed = _fold_split(spec.runs, n_folds, fold_seed)
    out = Path(out)
    soundscapes, entries = _discover_folders(soundscapes, parts_dir(out))
    summary = PseudoSummary(out, n_files=len(entries))
    with exclusive_lock(out, "pseudo job"):
        parts = parts_dir(out)
        _check_settings(parts, spec, hop_s, postprocess)
        run_folds = {run: read_run_pseudo_folds(run_folder(run)) for run in spec.runs}  # once per run, not per file
        sets = {e.path: _teacher_set(spec, soundscapes / e.path, run_folds) for e in entries}
        todo = [e for e in entries if not _is_done(parts, e, sets[e.path])]
        summary.resumed = len(entries) - len(todo)
        bar = tqdm(total=len(entries), initial=summary.resumed, disable=not progress, unit="file", desc="pseudo")
        for key in dict.fromkeys(sets[e.path] for e in todo):  # each distinct set of models built once
            group = [e for e in todo if sets[e.path] == key]
            summary.skipped += _score_group(spec, key, group, soundscapes, parts, hop_s, postprocess, out, bar)
        bar.close()
        summary.skipped_path = _write_skipped(out, summary.skipped)
        frame, records = _assemble(parts, [e for e in entries if e.path not in dict(summary.skipped)])
        if frame.empty:
            raise BirdclefError(f"{soundscapes}: no recording could be scored (see {summary.skipped_path})")
        classes = [c for c in frame.columns if c not in ("path", "start_s", "end_s")]
        _check_classes(classes, limits, parts)
        frame = transform(frame, classes, power, limits)
        folds = soundscape_folds(frame["path"].tolist(), n_folds, fold_seed)
        frame.insert(3, "fold", frame["path"].map(folds).astype(np.int64))
        summary.masked_classes = [c for c in classes if frame[c].isna().all()]
        provenance = _provenance(soundscapes, spec, records, power, thresholds, limits, classes, hop_s, postprocess,
                                 n_folds, fold_seed, summary)
        write_pseudo(frame, classes, provenance, out)
    summary.n_rows, summary.elapsed_s = len(frame), time.time() - start
    return summary


def _discover_folders(folders: Path | Sequence[Path], exclude: Path) -> tuple[Path, list[Entry]]:
    """(root, every recording under `folders`, its path relative to root): one folder is its own root; several
    share their common folder (a file two folders both hold is listed once).

    Raises:
        BirdclefError: a folder that is not there, or holds no audio file.
    """
    folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    if not folders:
        raise BirdclefError("--soundscapes: no folder given")
    for folder in folders:
        if not folder.is_dir():
            raise BirdclefError(f"--soundscapes {folder}: folder not found")
    if len(folders) == 1:
        return folders[0], discover(folders[0], exclude=exclude)
    root = Path(os.path.commonpath([str(f.resolve()) for f in folders]))
    entries, seen = [], set()
    for folder in folders:
        prefix = folder.resolve().relative_to(root)
        for entry in discover(folder, exclude=exclude):
            path = (prefix / entry.path).as_posix()
            if (file := (root / path).resolve()) not in seen:
                seen.add(file)
                entries.append(replace(entry, path=path))
    return root, sorted(entries, key=lambda e: e.path)


def parts_dir(out: Path) -> Path:
    """Where the per-file parts of `out` go: ``<out>.parts/``."""
    return Path(out).with_name(f"{Path(out).name}.parts")


def skipped_path(out: Path) -> Path:
    return Path(out).with_name(f"{Path(out).stem}.skipped.csv")


def transform(frame: pd.DataFrame, classes: list[str], power: float,
              thresholds: dict[str, float] | float | None) -> pd.DataFrame:
    """`frame` with its class columns thresholded (below: 0) then raised to `power`; NaN stays NaN."""
    frame = frame.copy()
    for name in classes:
        values = frame[name].to_numpy(np.float64)
        limit = thresholds.get(name) if isinstance(thresholds, dict) else thresholds
        if limit is not None:
            values = np.where(values < limit, 0.0, values)  # NaN < limit is False: the mask survives
        frame[name] = (values ** power).astype(np.float32)
    return frame


def _check_flags(spec: PredictorSpec, power: float, hop_s: float) -> None:
    if not spec.runs and not spec.birdnet:
        raise BirdclefError("give at least one --teacher run, or --birdnet")
    if not (np.isfinite(power) and power > 0):
        raise BirdclefError(f"--power must be a number above 0 (p ** power; 1 leaves labels as scored), got {power}")
    if not (np.isfinite(hop_s) and hop_s > 0):
        raise BirdclefError(f"--hop must be above 0 seconds, got {hop_s}")
    if spec.unknown_fill is not None and not 0.0 <= spec.unknown_fill <= 1.0:
        raise BirdclefError(f"--unknown-fill must be a probability in [0, 1], got {spec.unknown_fill}")
    birdnet_only = [flag for flag, value in (("--data", spec.data), ("--taxonomy", spec.taxonomy),
                    ("--birdnet-model", spec.birdnet_model), ("--unknown-fill", spec.unknown_fill))
                    if value is not None]
    if birdnet_only and not spec.birdnet:
        raise BirdclefError(f"{', '.join(birdnet_only)}: only used with --birdnet")
    expected = len(spec.runs) + spec.birdnet
    if spec.weights is not None and len(spec.weights) != expected:
        raise BirdclefError(f"--weights: got {len(spec.weights)} for {len(spec.runs)} teacher(s)"
                            f"{' and BirdNET' if spec.birdnet else ''}; give one per --teacher"
                            f"{', then one for --birdnet' if spec.birdnet else ''}")
    for run in spec.runs:
        if not run.exists():
            raise BirdclefError(f"--teacher {run}: no such run folder or checkpoint file")


def _thresholds(value: Path | str | dict[str, float] | float | None) -> dict[str, float] | float | None:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, (int, float)):
        if not 0.0 <= float(value) <= 1.0:
            raise BirdclefError(f"--thresholds: one threshold must be a probability in [0, 1], got {value}")
        return float(value)
    from birdclef.eval.thresholds import read_thresholds

    return read_thresholds(Path(value))


def _check_classes(classes: list[str], limits: dict[str, float] | float | None, parts: Path) -> None:
    if "fold" in classes:
        raise BirdclefError("a class named 'fold' clashes with the pseudo table's fold column; rename that class")
    unknown = sorted(set(limits) - set(classes)) if isinstance(limits, dict) else []
    if unknown:
        raise BirdclefError(f"--thresholds names {len(unknown)} classes the teachers do not score "
                            f"({', '.join(unknown[:5])}); the scores are kept in {parts}: re-run with the "
                            "thresholds of these teachers' classes")


def _fold_split(runs: tuple[Path, ...], n_folds: int | None, seed: int | None) -> tuple[int, int]:
    """(n_folds, fold_seed): as given, else the first teacher run's data section, else the defaults."""
    stored = Run.open(runs[0]).fold_settings() if runs else {}
    n_folds = int(n_folds if n_folds is not None else stored.get("n_folds", DataConfig.n_folds))
    seed = int(seed if seed is not None else stored.get("fold_seed", DataConfig.fold_seed))
    if n_folds < 2:
        raise BirdclefError(f"--folds must be at least 2, got {n_folds}")
    return n_folds, seed


def _teacher_set(spec: PredictorSpec, audio: Path, run_folds: dict[Path, dict[str, int] | None]) -> tuple[str, ...]:
    """The models that may label `audio`: each teacher run, or its one held-out fold (the fold rule).

    Raises:
        BirdclefError: a teacher given as one fold checkpoint that trained on `audio`'s pseudo-labels.
    """
    allowed = []
    for run in spec.runs:
        restricted = teacher_checkpoints(run_folder(run), audio, run_folds[run])
        if restricted and run.is_file() and restricted[0].resolve() != run.resolve():
            raise BirdclefError(f"--teacher {run} trained on the pseudo-labels of {audio} (only "
                                f"{restricted[0]} held it out); give the run folder, so that each soundscape "
                                "is labelled by its held-out fold")
        allowed.append(str((restricted[0] if restricted else run).resolve()))
    return tuple(allowed)


def _part(parts: Path, rel: str) -> Path:
    return parts / "files" / f"{rel}.parquet"


def _record_path(parts: Path, rel: str) -> Path:
    return parts / "files" / f"{rel}.json"


def _is_done(parts: Path, entry: Entry, key: tuple[str, ...]) -> bool:
    record, part = _record_path(parts, entry.path), _part(parts, entry.path)
    if not record.is_file():
        return False
    redo = f"{entry.path} is scored again"
    if not intact(part, redo=redo):
        return False
    try:
        saved = read_json(record)
    except (OSError, ValueError) as exc:
        set_aside(record, f"{type(exc).__name__}: truncated or not JSON", redo)
        return False
    return (saved.get("teachers"), saved.get("size"), saved.get("mtime_ns")) == (list(key), entry.size,
                                                                                 entry.mtime_ns)


def _check_settings(parts: Path, spec: PredictorSpec, hop_s: float, postprocess: bool) -> None:
    settings = {**{k: v for k, v in asdict(spec).items() if k not in NOT_SETTINGS},
                "runs": [str(r.resolve()) for r in spec.runs], "hop_s": hop_s, "postprocess": postprocess}
    settings = json.loads(json.dumps(settings, default=str))
    path = parts / "settings.json"
    if path.is_file() and read_settings(path) != settings:
        raise BirdclefError(f"{parts} holds scores made with other teachers or settings (see {path}); use another "
                            "--out, or delete that folder to start over")
    write_json_atomic(settings, path)


def _score_group(spec: PredictorSpec, key: tuple[str, ...], group: list[Entry], soundscapes: Path, parts: Path,
                 hop_s: float, postprocess: bool, out: Path, bar) -> list[tuple[str, str]]:
    """Score `group`'s files with the models `key` names; (path, reason) of the files that could not be decoded."""
    from birdclef.archive.scorers import window_scorer
    from birdclef.zoo.foundation import predictor_provenance

    predictor = build_teacher(spec, [Path(k) for k in key], out)
    scorer = window_scorer(predictor, postprocess=postprocess)
    foundations = predictor_provenance(predictor)
    checkpoints = list(predictor.checkpoints) + ([BIRDNET] if spec.birdnet else [])
    skipped = []
    for entry in group:
        dest = _part(parts, entry.path)
        for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):  # left by a job killed on this file
            stale.unlink(missing_ok=True)
        try:
            result = analyze_file(scorer, soundscapes / entry.path, entry.path, dest, hop_s)
        except AudioError as exc:
            skipped.append((entry.path, exc.reason))
        else:
            write_json_atomic({"teachers": list(key), "checkpoints": checkpoints, "size": entry.size,
                               "mtime_ns": entry.mtime_ns, "windows": result.windows,
                               "birdnet_model": next(iter(predictor.model_files), None),
                               "foundation_models": foundations, "infer": config_to_dict(scorer.config)},
                              _record_path(parts, entry.path))
        bar.update(1)
    return skipped


def build_teacher(spec: PredictorSpec, runs: list[Path], out: Path) -> Predictor:
    """The predictor of `runs` (torch and head runs, in order: `spec`'s, or their held-out folds) blended with
    BirdNET when `spec.birdnet`; classes no teacher scores stay NaN (masked) unless ``spec.unknown_fill``."""
    from birdclef.zoo.build import build_predictor, unknown_report_path

    return build_predictor(replace(spec, runs=tuple(runs)), unknown_report=unknown_report_path(out),
                           nan_ok=True).predictor


def _assemble(parts: Path, entries: list[Entry]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """All scored files' windows in manifest order, and each file's part record."""
    frames, records = [], {}
    for entry in entries:
        frames.append(pd.read_parquet(_part(parts, entry.path)))
        records[entry.path] = read_json(_record_path(parts, entry.path))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame, records


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> Path | None:
    where = skipped_path(out)
    if not skipped:
        where.unlink(missing_ok=True)
        return None
    return write_csv_atomic(pd.DataFrame(skipped, columns=["path", "reason"]), where)


def _provenance(soundscapes: Path, spec: PredictorSpec, records: dict[str, dict], power: float, thresholds,
                limits, classes: list[str], hop_s: float, postprocess: bool, n_folds: int, fold_seed: int,
                summary: PseudoSummary) -> dict:
    infers = list({json.dumps(r["infer"], sort_keys=True): r["infer"] for r in records.values()}.values())
    given = thresholds if isinstance(thresholds, (int, float, dict)) or thresholds is None else str(
        Path(thresholds).resolve())
    return {"soundscapes": str(soundscapes.resolve()), "teachers": [str(r.resolve()) for r in spec.runs],
            "weights": None if spec.weights is None else list(spec.weights), "birdnet": spec.birdnet,
            "birdnet_model": next((r["birdnet_model"] for r in records.values() if r.get("birdnet_model")), None),
            "foundation_models": list({json.dumps(m, sort_keys=True): m for r in records.values()
                                       for m in r.get("foundation_models", [])}.values()),
            "unknown_fill": spec.unknown_fill, "postprocess": postprocess,
            "infer": infers[0] if len(infers) == 1 else infers, "power": power, "thresholds": given,
            "threshold_values": limits,
            "thresholds_missing": [c for c in classes if c not in limits] if isinstance(limits, dict) else [],
            "hop_s": hop_s, "window_s": ROW_WINDOW_S, "n_folds": n_folds, "fold_seed": fold_seed,
            "assignment": {path: r["checkpoints"] for path, r in records.items()},
            "masked_classes": summary.masked_classes, "n_masked_classes": len(summary.masked_classes),
            "skipped": [list(s) for s in summary.skipped]}


__all__ = ["PseudoSummary", "build_teacher", "parts_dir", "pseudo_label", "skipped_path", "transform"]
