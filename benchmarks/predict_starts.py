"""Prediction speed of trained runs (CNNs, BirdNET heads, fine-tuned BirdNET) and BirdNET zero-shot, side by side.

A script, not a test (timings never go in assertions):

    python benchmarks/predict_starts.py --run runs/b0 --run runs/head [--model EXPORTED] [--birdnet] [--data DIR]
                                        [--files 6] [--rounds 3] [--threads 2] [--json PATH]

Each model predicts the same ``--files`` soundscapes of ``DATA/test_soundscapes`` the way ``birdclef predict``
does (``load_audio`` at the model's rate, then ``predict_file`` with the run's stored settings), one model after
another in each round; the best of ``--rounds`` is kept (on a shared machine the minimum is the undisturbed
cost). Loading the models is not timed. Ratios are against BirdNET zero-shot when it is timed, else the
first run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from birdclef.audio.io import load_audio  # noqa: E402
from birdclef.zoo.build import PredictorSpec, build_predictor  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "xcbirds-dev-v1"


def build(args: argparse.Namespace) -> dict[str, Any]:
    """name -> predictor, in the order given (BirdNET zero-shot last)."""
    models: dict[str, Any] = {}
    for run in args.runs:
        models[f"run {run.name}"] = build_predictor(PredictorSpec(runs=(run,), device="cpu",
                                                                  threads=args.threads)).predictor
    for model in args.models:  # exported folders (`birdclef export`), on their own runtime
        from birdclef.export.runtime import ExportedPredictor

        models[f"exported {model.name}"] = ExportedPredictor(model, threads=args.threads)
    if args.birdnet:
        spec = PredictorSpec(birdnet=True, data=args.data, threads=args.threads, unknown_fill=0.5)
        models["BirdNET zero-shot"] = build_predictor(spec).predictor
    return models


def timed(predictor: Any, paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        predictor.predict_file(load_audio(path, predictor.sample_rate))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", dest="runs", type=Path, action="append", default=[])
    parser.add_argument("--model", dest="models", type=Path, action="append", default=[],
                        help="an exported model folder (`birdclef export`), run on its own runtime")
    parser.add_argument("--birdnet", action="store_true", help="also time BirdNET v2.4 zero-shot (the reference)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder (its test_soundscapes)")
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch and LiteRT threads")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "predict_starts.json")
    args = parser.parse_args(argv)
    if not args.runs and not args.models and not args.birdnet:
        parser.error("give --run, --model and/or --birdnet")
    paths = sorted((args.data / "test_soundscapes").glob("*.ogg"))[: args.files]
    if not paths:
        parser.error(f"no .ogg soundscapes in {args.data / 'test_soundscapes'}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    models = build(args)
    for predictor in models.values():  # warm-up: first invokes, allocations, file caches
        timed(predictor, paths[:1])
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, predictor in models.items():
            best[name] = min(best.get(name, float("inf")), timed(predictor, paths))
    minutes = sum(sf.info(p).duration for p in paths) / 60
    reference = "BirdNET zero-shot" if args.birdnet else next(iter(models))
    rows = [{"model": name, "seconds": s, "s_per_audio_min": s / minutes,
             "ratio": s / best[reference]} for name, s in best.items()]
    meta = {"files": len(paths), "audio_min": minutes, "rounds": args.rounds, "threads": args.threads,
            "cpu_count": os.cpu_count(), "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "data": str(args.data), "reference": reference}
    print(f"\n{len(paths)} files ({minutes:.1f} audio min), {args.threads} threads, best of {args.rounds}; "
          f"load {meta['load_after']}")
    print(f"{'model':40} {'s/audio min':>11} {'x ' + reference:>20}")
    for r in rows:
        print(f"{r['model']:40} {r['s_per_audio_min']:11.3f} {r['ratio']:20.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.json}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
