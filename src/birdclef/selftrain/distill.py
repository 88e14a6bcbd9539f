"""``birdclef distill``: an ensemble (trained runs, BirdNET) taught to one small CPU student, then exported.

Folder (each step resumable, as in :mod:`birdclef.selftrain.rounds`)::

    OUT/pseudo.parquet     the ensemble's soft labels of the soundscape windows (raw probabilities, no sharpening
                           unless asked: distillation wants the teacher's own confidence)
    OUT/run/               the student (e.g. ``configs/lite0.yaml``), trained on the labelled clips (hard labels)
                           and the soundscape windows (soft targets, BCE on them is the distillation loss;
                           classes no teacher scores are masked)
    OUT/model/             the student exported (ONNX, fused folds, parity-checked): what runs on a CPU
    OUT/validation.csv     with a validation set: the exported student's predictions of it
    OUT/distill.json       teachers, settings, the student's score, wall and CPU seconds
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from birdclef.config import Config
from birdclef.errors import BirdclefError
from birdclef.selftrain.rounds import SelfTrainSettings, _Rounds, check_inputs
from birdclef.utils.io import exclusive_lock, read_json, write_json_atomic
from birdclef.utils.process import cpu_seconds
from birdclef.utils.state import set_aside


@dataclass
class DistillSummary:
    out: Path
    run: Path
    model: Path | None
    score: float | None
    scored_on: str
    groups: dict[str, float] = field(default_factory=dict)
    pseudo: dict = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0


def distill(config: Config, data: Path, out: Path, settings: SelfTrainSettings, export: str | None = "onnx",
            device: str = "auto", progress: bool = True, log=print) -> DistillSummary:
    """Label the soundscapes with ``settings.teachers`` (+ BirdNET), train `config` on them and the clips, export.

    Args:
        config: the student's config (a small CPU model: ``configs/lite0.yaml``, ``configs/cpu-small.yaml``).
        data: BirdCLEF-layout folder (clips; default soundscapes ``DATA/train_soundscapes``).
        out: the folder of the module docstring; a re-run resumes.
        settings: teachers, weights, BirdNET, soundscapes, power, hop, validate (``rounds`` is not used).
        export: ``onnx`` or ``openvino`` (a format of ``birdclef export``), or None to keep the torch run only.

    Raises:
        ConfigError: no teacher at all.
    """
    from birdclef.errors import ConfigError

    if not settings.teachers and not settings.birdnet:
        raise ConfigError("distill needs teachers: --teacher RUN (repeatable) and/or --birdnet")
    check_inputs(data, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "distill.json"
    with exclusive_lock(record, "birdclef distill"):
        done = _finished(record)
        if done is not None:  # finished before: report it
            return DistillSummary(**{**done, "out": out, "run": out / "run",
                                     "model": Path(done["model"]) if done["model"] else None})
        started, cpu = time.perf_counter(), cpu_seconds()
        job = _Rounds(config, data, out, settings, device, progress, log)
        log(f"distill: labelling {' and '.join(map(str, job.labelled))} with {list(settings.teachers) + (['birdnet'] if settings.birdnet else [])}")
        pseudo = job.label(out / "pseudo.parquet", list(settings.teachers))
        log(f"distill: training the student ({config.model.backbone}) on clips + {pseudo['rows']} soft-labelled windows")
        job.train(out / "run", out / "pseudo.parquet")
        model = None
        if export is not None:
            model = _export(out / "run", out / "model", export)
            log(f"distill: exported the student to {model}")
        if model is not None and job.validation is not None:
            from birdclef.zoo.build import PredictorSpec, build_predictor

            score, kind, groups = job.score_predictor(out, build_predictor(PredictorSpec(model=model)).predictor)
        else:
            score, kind, groups = job.score(out, out / "run")
        summary = DistillSummary(out, out / "run", model, score, kind, groups, pseudo,
                                 time.perf_counter() - started, cpu_seconds() - cpu)
        write_json_atomic({**asdict(summary), "out": str(out), "run": str(summary.run),
                           "model": str(model) if model else None}, record)
    return summary


def _finished(record: Path) -> dict | None:
    """distill.json of a finished job, or None; a damaged one is set aside (:mod:`birdclef.utils.state`) and the
    job's last steps redone from their own state (pseudo-labels, training and export resume)."""
    if not record.is_file():
        return None
    try:
        done = read_json(record)
        DistillSummary(**{**done, "out": None, "run": None, "model": None})
        return done
    except (OSError, ValueError, TypeError) as exc:
        set_aside(record, f"{type(exc).__name__}: truncated or not a distill record", "the last steps are redone")
        return None


def _export(run: Path, where: Path, format: str) -> Path:
    from birdclef.export.export import export_model
    from birdclef.infer.settings import resolve_infer

    from birdclef.export.runtime import read_metadata

    if where.is_dir():
        try:
            read_metadata(where)
            return where  # exported before a kill: reuse it
        except BirdclefError:
            pass
    report = export_model([run], None, format=format, precision="fp32", out=where,
                          config=resolve_infer(runs=[run]).config)
    if not report.written:
        raise BirdclefError(f"exporting {run} failed its parity check: {report.summary()}")
    return where
