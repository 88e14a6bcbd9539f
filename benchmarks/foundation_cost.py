"""What a head and a blend cost against their foundation model's zero-shot run: the embeddings are the cost.

A script, not a test (timings never go in assertions):

    python benchmarks/foundation_cost.py --head RUN [--data DIR] [--files 6] [--threads 2] [--rounds 3]
                                         [--foundation SPEC] [--json PATH]

On the same ``--files`` test soundscapes, one after another in each round (the best of ``--rounds`` kept: on a
shared machine the minimum is the undisturbed cost), every predictor built by the zoo
(:func:`~birdclef.zoo.build.build_predictor`, as ``birdclef predict`` builds it) from one decoded wave per file:

(a) zero-shot: ``--birdnet`` alone at the head's hop (``infer.birdnet_hop_s`` of the run);
(b) head: ``--run HEAD`` (all its finished folds);
(c) head + zero-shot: ``--run HEAD --birdnet`` (one model, its windows shared by both parts).

Ratios: (b)/(a) (issue target <= 1.1: the fold heads are tiny) and (c)/(b) (target <= 1.1: the model runs once
per window). It also counts the windows the foundation model computed in (c) against (b).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

from birdclef.audio.io import load_audio  # noqa: E402
from birdclef.zoo.build import PredictorSpec, build_predictor  # noqa: E402
from birdclef.zoo.runs import Run  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "multitaxa-dev-v1"
TARGET = 1.1


def _shared_models(predictor) -> list:
    return list({id(p.model): p.model for p in predictor.parts() if hasattr(p, "model")}.values())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head", type=Path, required=True, help="an embedding-head run (configs/birdnet-head.yaml)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--foundation", default=None, help="the zero-shot model (default: the head's first)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "foundation_cost.json")
    args = parser.parse_args(argv)

    paths = sorted((args.data / "test_soundscapes").glob("*.ogg"))[: args.files]
    run = Run.open(args.head)
    foundation = args.foundation or run.foundations[0]
    hop = float((run.config.get("infer") or {}).get("birdnet_hop_s", 1.0))
    raw = ("infer.smoothing=false", "infer.power_adjust=false", f"infer.birdnet_hop_s={hop}")
    specs = {
        "zero-shot": PredictorSpec(birdnet=True, birdnet_model=foundation, data=args.data, unknown_fill=0.5,
                                   overrides=raw, threads=args.threads),
        "head": PredictorSpec(runs=(args.head,), overrides=raw, threads=args.threads),
        "head + zero-shot": PredictorSpec(runs=(args.head,), birdnet=True, birdnet_model=foundation, data=args.data,
                                          unknown_fill=0.5, overrides=raw, threads=args.threads),
    }
    predictors = {name: build_predictor(spec).predictor for name, spec in specs.items()}
    rate = predictors["head"].sample_rate
    waves = [load_audio(p, rate) for p in paths]
    audio_min = sum(len(w) for w in waves) / rate / 60
    best = {name: float("inf") for name in predictors}
    windows = {}
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            before = sum(m.windows_run for m in _shared_models(predictor))
            start = time.perf_counter()
            for wave in waves:
                predictor.predict_file(wave)
            best[name] = min(best[name], time.perf_counter() - start)
            windows[name] = sum(m.windows_run for m in _shared_models(predictor)) - before
    rows = [{"predictor": name, "s_per_audio_min": best[name] / audio_min, "model_windows": windows[name],
             "vs_zero_shot": best[name] / best["zero-shot"], "vs_head": best[name] / best["head"]}
            for name in predictors]
    meta = {"files": len(paths), "audio_min": round(audio_min, 2), "threads": args.threads, "hop_s": hop,
            "folds": len(run.checkpoints), "foundation": foundation, "rounds": args.rounds,
            "machine": platform.processor() or platform.machine(), "target": TARGET}
    print(f"{len(paths)} files, {audio_min:.1f} audio min, hop {hop} s, {meta['folds']} folds, "
          f"{args.threads} threads, best of {args.rounds}")
    print(f"{'predictor':<18} {'s/audio min':>12} {'windows':>8} {'x zero-shot':>12} {'x head':>8}")
    for row in rows:
        print(f"{row['predictor']:<18} {row['s_per_audio_min']:>12.3f} {row['model_windows']:>8} "
              f"{row['vs_zero_shot']:>12.2f} {row['vs_head']:>8.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.json}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
