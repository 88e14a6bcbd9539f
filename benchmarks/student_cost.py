"""An exported distilled CNN beside the BirdNET head it should stand in for: inference cost and training cost per stage.

A script, not a test (timings never go in assertions):

    python benchmarks/student_cost.py --student RUN --head RUN [--data DIR] [--files 6] [--threads 2]
                                      [--rounds 3] [--formats onnx openvino] [--json PATH]

**Inference.** The student run (a CNN trained with ``train.distill_teacher``, e.g. ``configs/distill-lite0.yaml``)
is exported once per ``--formats`` (fp32, into a temporary folder) as ``birdclef export`` does. On the same
``--files`` test soundscapes, one after another in each round (the best of ``--rounds`` kept: on a shared machine
the minimum is the undisturbed cost), each predictor built by the zoo as ``birdclef predict`` builds it (no
smoothing or power adjustment) scores every file from one decoded wave: the exported student(s), the student's torch
run, and the head (``--head``, all its folds, on the runtime ``infer.birdnet_runtime: auto`` picks). Reported: s per
audio minute and the ratio to the head. The issue's target for the student: at most 0.1 s per audio minute on 2
cores.

**Training.** Per stage, summed over the student's finished folds (``fold{k}/times.csv``: wall and CPU seconds of
each epoch, stage ``distill`` or ``labels``), and the teacher's embedding work (``teacher.json``: rows computed, CPU
seconds; 0 when a cache made by an earlier run was reused).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from birdclef.audio.io import load_audio  # noqa: E402
from birdclef.zoo.build import PredictorSpec, build_predictor  # noqa: E402
from birdclef.zoo.runs import Run  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "multitaxa-dev-v1"
TARGET_S_PER_MIN = 0.1
RAW = ("infer.smoothing=false", "infer.power_adjust=false")


def training_cost(run: Path) -> dict[str, Any]:
    """Wall and CPU seconds per stage over the run's folds, and the teacher's embedding work."""
    frames = [pd.read_csv(p) for p in sorted(run.glob("fold*/times.csv"))]
    stages = {}
    if frames:
        times = pd.concat(frames, ignore_index=True)
        for stage, rows in times.groupby("stage"):
            stages[stage] = {"epochs": int(len(rows)), "wall_s": round(float(rows["wall_s"].sum()), 1),
                             "cpu_s": round(float(rows["cpu_s"].sum()), 1),
                             "cpu_s_per_epoch": round(float(rows["cpu_s"].mean()), 1)}
    teacher = {}
    if (run / "teacher.json").is_file():
        record = json.loads((run / "teacher.json").read_text())
        teacher = {k: record.get(k) for k in ("teacher", "rows_computed", "embed_wall_s", "embed_cpu_s")}
        teacher["rows"] = sum(s["rows"] * (1 + s["copies"]) for s in record.get("sources", []))
    return {"folds": len(frames), "stages": stages, "teacher": teacher}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", type=Path, required=True, help="a distilled CNN run (train.distill_teacher)")
    parser.add_argument("--head", type=Path, required=True, help="an embedding-head run (configs/birdnet-head.yaml)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=["onnx", "openvino"], choices=["onnx", "openvino"])
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "student_cost.json")
    args = parser.parse_args(argv)

    from birdclef.export.export import export_model

    paths = sorted((args.data / "test_soundscapes").glob("*.ogg"))[: args.files]
    with tempfile.TemporaryDirectory(prefix="student_cost_") as tmp:
        specs = {}
        for fmt in args.formats:
            out = Path(tmp) / fmt
            export_model([args.student], format=fmt, out=out, parity_audio=args.data / "test_soundscapes",
                         parity_count=2, threads=args.threads)
            specs[f"student ({fmt})"] = PredictorSpec(model=out, overrides=RAW, threads=args.threads)
        specs["student (torch run)"] = PredictorSpec(runs=(args.student,), overrides=RAW, threads=args.threads,
                                                     device="cpu")
        specs["head"] = PredictorSpec(runs=(args.head,), overrides=RAW, threads=args.threads)
        predictors = {name: build_predictor(spec).predictor for name, spec in specs.items()}
        waves: dict[int, list] = {}
        best = {name: float("inf") for name in predictors}
        audio_min = 0.0
        for _ in range(args.rounds):
            for name, predictor in predictors.items():
                rate = predictor.sample_rate
                if rate not in waves:
                    waves[rate] = [load_audio(p, rate) for p in paths]
                    audio_min = sum(len(w) for w in waves[rate]) / rate / 60
                start = time.perf_counter()
                for wave in waves[rate]:
                    predictor.predict_file(wave)
                best[name] = min(best[name], time.perf_counter() - start)
    rows = [{"predictor": name, "s_per_audio_min": best[name] / audio_min, "vs_head": best[name] / best["head"]}
            for name in predictors]
    meta = {"files": len(paths), "audio_min": round(audio_min, 2), "threads": args.threads, "rounds": args.rounds,
            "head_folds": len(Run.open(args.head).checkpoints), "student_folds": len(Run.open(args.student).checkpoints),
            "machine": platform.processor() or platform.machine(), "target_s_per_audio_min": TARGET_S_PER_MIN}
    cost = training_cost(args.student)
    print(f"{len(paths)} files, {audio_min:.1f} audio min, {args.threads} threads, best of {args.rounds}; student "
          f"{meta['student_folds']} fold(s), head {meta['head_folds']}")
    print(f"{'predictor':<22} {'s/audio min':>12} {'x head':>8}")
    for row in rows:
        print(f"{row['predictor']:<22} {row['s_per_audio_min']:>12.3f} {row['vs_head']:>8.2f}")
    print(f"training ({cost['folds']} fold(s)): " + "; ".join(
        f"{stage}: {s['epochs']} epochs, {s['cpu_s']:.0f} CPU s ({s['cpu_s_per_epoch']:.0f} per epoch)"
        for stage, s in cost["stages"].items()))
    if cost["teacher"]:
        t = cost["teacher"]
        print(f"teacher {t['teacher']}: {t['rows']} rows (with copies), {t['rows_computed']} computed by this run, "
              f"{t['embed_cpu_s'] or 0:.0f} CPU s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows, "training": cost}, indent=2))
    print(f"wrote {args.json}")
    return {"meta": meta, "rows": rows, "training": cost}


if __name__ == "__main__":
    main()
