"""``birdclef selftrain``: noisy-student rounds (teacher -> pseudo-labels -> student -> the student teaches).

Folder (every step resumable; a killed job continues where it stopped and gives the same result)::

    OUT/selftrain.json          the settings (a re-run with other settings is refused; ``rounds`` may grow)
    OUT/cache/                  the clip cache every round shares
    OUT/round0/run/             the supervised start (clips only), unless ``start`` names a trained run
    OUT/round0/scores.json      its score
    OUT/roundR/pseudo.parquet   pseudo-labels of the soundscapes (and the clips: label_clips) from round R's teachers
    OUT/roundR/run/             the student: the same config, trained on clips + those pseudo-labels
    OUT/roundR/validation.csv   with a validation set: the student's predictions of it
    OUT/roundR/scores.json      score, what was scored, teachers, pseudo settings, wall and CPU seconds
    OUT/rounds.csv              one row per finished round
    OUT/summary.json            the best round and why the rounds stopped

Round 0 trains the config on the clips alone: the supervised start every round is measured against; with
``start`` it is that finished run instead (e.g. an embedding-distilled CNN, ``train.distill_teacher``), scored and
never retrained. **Students** train the config from its pretrained backbone (``student_init: scratch``), or each fold
from the same fold of round 0 (``start``) or of the best run so far (``best``): ``train.init_from``
(:mod:`birdclef.train.init_from`), the winners' "distil, then noisy-student rounds from the distilled start". Round 1's
teachers are the given ``teachers`` (e.g. a BirdNET head run), or the supervised start when none are given;
later rounds' teachers are the best student so far (the student becomes the teacher), plus the given teachers
when ``keep_teachers``; BirdNET zero-shot joins every round when asked (it never trains on anything here). The fold rule (:mod:`birdclef.data.pseudo`) applies to every run teacher: a
soundscape is labelled only by the fold model that held it out.

**The stopping rule.** Rounds stop when ``patience`` rounds in a row fail to beat the best score by more than
``min_gain``. The score is the macro ROC-AUC of the round's model on labelled soundscapes when a validation
set is given (``validate``: a folder with ``solution.csv`` and the audio, or a BirdCLEF folder with
``test_soundscapes/``), otherwise its out-of-fold clip score (optimistic, and blind to soundscapes);
``scores.json`` says which.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from birdclef.config import Config, config_from_dict, config_to_dict
from birdclef.errors import BirdclefError, ConfigError, DatasetError
from birdclef.utils.process import cpu_seconds
from birdclef.utils.io import exclusive_lock, read_json, write_csv_atomic, write_json_atomic
from birdclef.utils.state import read_settings, set_aside

GROWABLE = ("rounds",)
"""Settings a resumed selftrain may change."""
STUDENT_INITS = ("scratch", "start", "best")


class TrainingStopped(BirdclefError):
    """A round's training returned before all its folds finished (interrupted); the job resumes on a re-run."""


@dataclass(frozen=True)
class SelfTrainSettings:
    rounds: int = 4
    """Most student rounds after round 0."""
    teachers: tuple[str, ...] = ()
    """Trained runs that label round 1 (none: the supervised start, round 0, labels it)."""
    weights: tuple[float, ...] | None = None
    """Blend weights of `teachers` (then BirdNET, when asked) in round 1; later rounds' teachers blend equally."""
    birdnet: bool = False
    """BirdNET v2.4 zero-shot joins the teachers of every round (its unknown classes stay masked)."""
    birdnet_model: str | None = None
    keep_teachers: bool = False
    """The given teachers stay teachers beside the best student in every round."""
    soundscapes: str | None = None
    """Unlabelled soundscapes to pseudo-label (default DATA/train_soundscapes)."""
    label_clips: bool = False
    """The teachers also label the dataset's own training clips (DATA/train_audio) window by window: students learn
    where in a weakly labelled clip its call is, and what else it holds (each window in its clip's fold)."""
    power: float = 1.0
    """Pseudo-label sharpening p -> p ** power (the BirdCLEF 2025 winner: 1 / 0.65 = 1.54)."""
    thresholds: str | None = None
    """Per-class thresholds CSV (``birdclef thresholds``): pseudo-labels below them become 0."""
    hop_s: float = 5.0
    """Seconds between pseudo-labelled windows."""
    validate: str | None = None
    """Labelled soundscapes to score each round on (see the module docstring)."""
    patience: int = 1
    min_gain: float = 0.0
    start: str | None = None
    """A finished run that is round 0 (scored, not trained); None: round 0 trains the config on the clips."""
    student_init: str = "scratch"
    """Where each student's fold starts: scratch (the config's pretrained backbone), start (round 0's same fold) or
    best (the best round so far's same fold)."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.patience < 1:
            raise ConfigError(f"--rounds and --patience must be at least 1, got {self.rounds} and {self.patience}")
        if self.power <= 0 or self.hop_s <= 0:
            raise ConfigError(f"--power and --hop must be positive, got {self.power} and {self.hop_s}")
        if self.keep_teachers and not self.teachers:
            raise ConfigError("--keep-teachers needs --teacher runs")
        if self.student_init not in STUDENT_INITS:
            raise ConfigError(f"--student-init must be one of {', '.join(STUDENT_INITS)}, got {self.student_init!r}")


@dataclass
class RoundResult:
    round: int
    score: float | None
    scored_on: str
    """``soundscapes`` (labelled validation soundscapes) or ``oof_clips``."""
    groups: dict[str, float] = field(default_factory=dict)
    teachers: list[str] = field(default_factory=list)
    student: str | None = None
    pseudo: dict = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0


@dataclass
class SelfTrainSummary:
    out: Path
    rounds: list[RoundResult]
    best_round: int
    stopped: str

    @property
    def best(self) -> RoundResult:
        return next(r for r in self.rounds if r.round == self.best_round)


def validation_set(validate: Path) -> tuple[Path, Path]:
    """(audio folder, solution.csv) of a validation set: DIR/test_soundscapes or DIR itself, and DIR/solution.csv."""
    validate = Path(validate)
    solution = validate / "solution.csv"
    if not solution.is_file():
        raise DatasetError(f"{validate}: a validation set needs solution.csv (true 0/1 labels per 5 s row)")
    audio = validate / "test_soundscapes" if (validate / "test_soundscapes").is_dir() else validate
    return audio, solution


def check_inputs(data: Path, settings: SelfTrainSettings) -> None:
    """Every input of ``selftrain`` / ``distill`` checked before any work (each takes minutes to hours to reach).

    The dataset's class list, the soundscape folder (recordings in it), each teacher (a trained run, not an
    empty folder, trained on this dataset's classes), the thresholds CSV and the validation set.

    Raises:
        BirdclefError: naming the flag and what is wrong.
    """
    from birdclef.audio.discover import discover_audio
    from birdclef.data.metadata import DatasetLayout, load_classes

    classes = load_classes(DatasetLayout.from_root(data))
    soundscapes = Path(settings.soundscapes) if settings.soundscapes else Path(data) / "train_soundscapes"
    flag = "--soundscapes" if settings.soundscapes else f"--data {data} (its train_soundscapes/, the default " \
                                                          "--soundscapes)"
    try:
        discover_audio(soundscapes, recursive=True, what="soundscape folder", items="soundscapes")
    except BirdclefError as exc:
        raise BirdclefError(f"{flag}: {exc}") from None
    for teacher in settings.teachers:
        _check_teacher(Path(teacher), classes, data)
    if settings.start:
        _check_teacher(Path(settings.start), classes, data, flag="--start")
    if settings.thresholds:
        from birdclef.eval.thresholds import read_thresholds

        read_thresholds(Path(settings.thresholds))
    if settings.validate:
        validation_set(Path(settings.validate))


def _check_teacher(teacher: Path, classes: list[str], data: Path, flag: str = "--teacher") -> None:
    """A teacher (or the ``--start`` run) must be a trained run (or checkpoint) of `classes` (its class list read
    from its checkpoint)."""
    from birdclef.zoo.runs import Run

    if teacher.is_dir() and not any(teacher.iterdir()):
        raise BirdclefError(f"{flag} {teacher}: an empty folder, not a trained run (train one with `birdclef "
                            "train`, or give its foldK/best.pt)")
    try:
        taught = Run.open(teacher).classes
    except BirdclefError as exc:
        raise BirdclefError(f"{flag} {teacher}: {exc}") from None
    only_teacher = sorted(set(taught) - set(classes))
    only_data = sorted(set(classes) - set(taught))
    if only_teacher or only_data:
        raise BirdclefError(f"{flag} {teacher} was trained on {len(taught)} classes, --data {data} lists "
                            f"{len(classes)}: {len(only_teacher)} only in the teacher "
                            f"({', '.join(only_teacher[:3]) or '-'}), {len(only_data)} only in the data "
                            f"({', '.join(only_data[:3]) or '-'}); give a teacher trained on this dataset")


def _check_student_init(config: Config, settings: SelfTrainSettings) -> None:
    """Students that start from a round's weights need a CNN config and, with ``start``, a start of every fold.

    Raises:
        ConfigError: naming the flag and what is wrong.
    """
    if settings.student_init == "scratch":
        return
    if config.model.freeze_backbone:
        raise ConfigError(f"--student-init {settings.student_init}: the config trains a head on frozen embeddings, "
                          "which starts from no weights; use --student-init scratch")
    if settings.start:
        from birdclef.train.init_from import check_init_from

        try:
            check_init_from(dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                                   init_from=settings.start)))
        except ConfigError as exc:
            raise ConfigError(f"--start with --student-init {settings.student_init}: {exc}") from None


def _check_settings(out: Path, config: Config, data: Path, settings: SelfTrainSettings) -> None:
    record = {"config": config_to_dict(config), "data": str(Path(data).resolve()), "settings": asdict(settings)}
    path = out / "selftrain.json"
    if path.is_file():
        old = read_settings(path)
        mine = json.loads(json.dumps(record))  # tuples as lists, as stored
        # The stored config is re-read so that fields a newer birdclef added (with their defaults) are no change.
        old["config"] = json.loads(json.dumps(config_to_dict(config_from_dict(old["config"]))))
        defaults = json.loads(json.dumps(asdict(SelfTrainSettings())))  # a setting newer than the job: its default
        changed = [k for k in mine["settings"]
                   if k not in GROWABLE and old["settings"].get(k, defaults[k]) != mine["settings"][k]]
        changed += [k for k in ("config", "data") if old.get(k) != mine[k]]
        if changed:
            raise ConfigError(f"{out} holds a selftrain with other settings (changed: {', '.join(changed)}); "
                              "choose another --out")
    write_json_atomic(record, path)


class _Rounds:
    """One selftrain job: the steps of each round, each skipped when its output is already there."""

    def __init__(self, config: Config, data: Path, out: Path, settings: SelfTrainSettings, device: str,
                 progress: bool, log):
        self.config, self.data, self.out, self.settings = config, Path(data), Path(out), settings
        self.device, self.progress, self.log = device, progress, log
        self.soundscapes = Path(settings.soundscapes) if settings.soundscapes else self.data / "train_soundscapes"
        self.labelled = [self.soundscapes] + ([self.data / "train_audio"] if settings.label_clips else [])
        """The folders the teachers label: the soundscapes, and the training clips with ``label_clips``."""
        self.validation = validation_set(Path(settings.validate)) if settings.validate else None

    # ------------------------------------------------------------------ steps

    def train(self, run: Path, pseudo: Path | None, init: str | None = None) -> None:
        """Train the config into `run` (resuming it), on `pseudo` when given, each fold starting from `init`'s."""
        from birdclef.train.kfold import train_kfold

        config = self.config
        if init is not None:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, init_from=str(init)))
        train_kfold(config, self.data, run, cache_dir=self.out / "cache", resume=(run / "config.yaml").is_file(),
                    progress=self.progress, pseudo=pseudo)
        unfinished = [f for f in self.config.train.folds if not (run / f"fold{f}" / "done.json").is_file()]
        if unfinished:  # Lightning stopped early (Ctrl-C, a callback): never score or teach with a partial run
            raise TrainingStopped(f"training {run} stopped before folds {unfinished} finished; re-run the same "
                                  "command to resume")

    def label(self, where: Path, teachers: list[str]) -> dict:
        from birdclef.selftrain.pseudo import pseudo_label

        s = self.settings
        weights = None
        if s.weights is not None and teachers == list(s.teachers):
            weights = list(s.weights)
        summary = pseudo_label(self.labelled, where, [Path(t) for t in teachers], weights=weights,
                               birdnet=s.birdnet, birdnet_model=Path(s.birdnet_model) if s.birdnet_model else None,
                               power=s.power, thresholds=Path(s.thresholds) if s.thresholds else None, hop_s=s.hop_s,
                               n_folds=self.config.data.n_folds, fold_seed=self.config.data.fold_seed,
                               data=self.data if s.birdnet else None, device=self.device, progress=self.progress)
        return {"rows": summary.n_rows, "files": summary.n_files, "skipped": len(summary.skipped),
                "masked_classes": len(summary.masked_classes), "power": s.power, "thresholds": s.thresholds,
                "hop_s": s.hop_s, "birdnet": s.birdnet}

    def score(self, where: Path, run: Path) -> tuple[float | None, str, dict[str, float]]:
        """(score, what was scored, per taxon group) of `run` on the validation set, else its OOF clip score."""
        if self.validation is None:
            summary = Path(run) / "summary.json"
            return (read_json(summary).get("oof_auc") if summary.is_file() else None), "oof_clips", {}
        from birdclef.zoo.build import PredictorSpec, build_predictor

        return self.score_predictor(where, build_predictor(PredictorSpec(runs=(Path(run),), device=self.device)).predictor)

    def score_predictor(self, where: Path, predictor) -> tuple[float, str, dict[str, float]]:
        """Macro ROC-AUC (and per taxon group) of `predictor` on the validation set (its CSV kept in `where`)."""
        from birdclef.eval.metrics import evaluate_submission, group_scores
        from birdclef.infer.job import predict_to_csv

        audio, solution = self.validation
        csv = where / "validation.csv"
        predict_to_csv(audio, predictor, csv, progress=self.progress)
        report = evaluate_submission(csv, solution)
        groups = {}
        taxonomy = self.data / "taxonomy.csv"
        if taxonomy.is_file():
            table = group_scores(report, taxonomy)
            groups = {row.group: float(row.auc) for row in table.itertuples() if row.auc == row.auc}
        return float(report.score), "soundscapes", groups

    # ------------------------------------------------------------------ rounds

    def round_zero(self) -> RoundResult:
        """The supervised start: the config trained on clips only (what every round is measured against)."""
        where = self.out / "round0"
        done = where / "scores.json"
        if (result := _finished_round(done)) is not None:
            return result
        started, cpu = time.perf_counter(), cpu_seconds()
        where.mkdir(parents=True, exist_ok=True)
        if self.settings.start:
            student = Path(self.settings.start).resolve()
            self.log(f"round 0: the given start {student} (scored, not trained)")
        else:
            student = where / "run"
            self.log(f"round 0: the supervised start on clips -> {student}")
            self.train(student, None)
        score, kind, groups = self.score(where, student)
        result = RoundResult(0, score, kind, groups, student=str(student), wall_s=time.perf_counter() - started,
                             cpu_s=cpu_seconds() - cpu)
        write_json_atomic(asdict(result), done)
        return result

    def student_round(self, r: int, teachers: list[str], init: str | None = None) -> RoundResult:
        where = self.out / f"round{r}"
        done = where / "scores.json"
        if (result := _finished_round(done)) is not None:
            return result
        started, cpu = time.perf_counter(), cpu_seconds()
        where.mkdir(parents=True, exist_ok=True)
        shown = teachers + (["birdnet"] if self.settings.birdnet else [])
        self.log(f"round {r}: pseudo-labelling {' and '.join(map(str, self.labelled))} with {shown}")
        pseudo = self.label(where / "pseudo.parquet", teachers)
        student = where / "run"
        start = f", each fold from {init}'s" if init else ""
        self.log(f"round {r}: training the student on clips + {pseudo['rows']} pseudo-labelled windows{start} -> "
                 f"{student}")
        self.train(student, where / "pseudo.parquet", init)
        score, kind, groups = self.score(where, student)
        result = RoundResult(r, score, kind, groups, teachers=shown, student=str(student), pseudo=pseudo,
                             wall_s=time.perf_counter() - started, cpu_s=cpu_seconds() - cpu)
        write_json_atomic(asdict(result), done)
        return result


def _finished_round(done: Path) -> RoundResult | None:
    """The result of a finished round from its ``scores.json``, or None when it has none.

    A damaged one (a crash, a full disk) is set aside (:mod:`birdclef.utils.state`) and the round's last step
    redone: its pseudo-labels and student training resume from their own state, so only the scoring repeats.
    """
    if not done.is_file():
        return None
    try:
        return RoundResult(**read_json(done))
    except (OSError, ValueError, TypeError) as exc:
        set_aside(done, f"{type(exc).__name__}: truncated or not a round record", "the round's score is redone")
        return None


def _format(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


def run_selftrain(config: Config, data: Path, out: Path, settings: SelfTrainSettings, device: str = "auto",
                  progress: bool = True, log=print) -> SelfTrainSummary:
    """Run (or resume) the rounds of the module docstring into `out`.

    Raises:
        ConfigError: bad settings, or `out` holds a selftrain with other settings.
        DatasetError: a validation set without solution.csv; as ``train`` and ``pseudo`` for their inputs.
    """
    out = Path(out).resolve()  # round folders are recorded as teachers: absolute, whatever the cwd of a resume
    check_inputs(data, settings)
    _check_student_init(config, settings)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / "selftrain.json", "birdclef selftrain"):
        _check_settings(out, config, data, settings)
        job = _Rounds(config, data, out, settings, device, progress, log)
        results = [job.round_zero()]
        log(f"round 0: {results[0].scored_on} macro ROC-AUC {_format(results[0].score)}")
        best, misses, stopped = results[0], 0, f"ran all {settings.rounds} rounds"
        for r in range(1, settings.rounds + 1):
            teachers = list(settings.teachers) if r == 1 and settings.teachers else [best.student]
            if r > 1 and settings.keep_teachers:
                teachers = list(dict.fromkeys(list(settings.teachers) + teachers))
            init = {"scratch": None, "start": results[0].student, "best": best.student}[settings.student_init]
            result = job.student_round(r, teachers, init)
            results.append(result)
            log(f"round {r}: {result.scored_on} macro ROC-AUC {_format(result.score)} (best so far "
                f"{_format(best.score)} in round {best.round})")
            if result.score is not None and (best.score is None or result.score > best.score + settings.min_gain):
                best, misses = result, 0
            else:
                misses += 1
            if misses >= settings.patience:
                stopped = (f"round {r} did not beat round {best.round}'s {_format(best.score)} by more than "
                           f"{settings.min_gain} ({misses} round(s) in a row)")
                break
        _write_tables(out, results, best, stopped)
    return SelfTrainSummary(out, results, best.round, stopped)


def _write_tables(out: Path, results: list[RoundResult], best: RoundResult, stopped: str) -> None:
    rows = []
    for r in results:
        row = {"round": r.round, "score": r.score, "scored_on": r.scored_on, "teachers": " + ".join(r.teachers),
               "student": r.student or "", "pseudo_rows": r.pseudo.get("rows"), "power": r.pseudo.get("power"),
               "wall_s": round(r.wall_s, 1), "cpu_s": round(r.cpu_s, 1)}
        row.update({f"auc_{group}": auc for group, auc in r.groups.items()})
        rows.append(row)
    write_csv_atomic(pd.DataFrame(rows), out / "rounds.csv")
    write_json_atomic({"best_round": best.round, "best_score": best.score, "best_run": best.student,
                       "scored_on": best.scored_on, "stopped": stopped}, out / "summary.json")
