"""Soundscape prediction speed on CPU: eager torch vs ONNX Runtime vs OpenVINO (fp32, bf16, int8), one run.

A script, not a test (timings never go in assertions):

    python benchmarks/bench_predict.py [--data DIR] [--files 6] [--threads 2] [--configs baseline,v3,sed]
                                       [--folds 1,5] [--runs NAME=DIR,...] [--json PATH]

Models are the real configs (``configs/<name>.yaml``) with random weights (``model.pretrained=false``;
speed does not depend on the weights) and the 206 BirdCLEF 2025 classes when their list is in
``../shared/data``, or trained runs (``--runs baseline=runs/b0,v3=runs/v3``): then the export parity
check scores the true labels of ``--data``'s ``solution.csv`` instead of pseudo-labels. Everything
runs with ``--threads`` threads (torch, BLAS, the runtimes).

(a) stages, eager torch: seconds per audio minute of one 60 s soundscape split into decode / front
    end / model (every fold) / post-processing (+ blend), and the extrapolated time for 700 files;
(b) end to end: ``predict_to_csv`` over ``--files`` real soundscapes (decoding overlapped with
    compute, CSV written) in seconds per audio minute, for every backend side by side; exported
    graphs also split into decode / graph / post, and the model-only throughput (windows/s of a
    12-window batch, every fold) with the achieved fraction of the matmul ceiling:
    FLOPs per window x windows/s / the measured matmul rate of the row's precision (fp32, bf16,
    int8; the best of torch's and OpenVINO's square matmuls) on the same threads.
Targets (issue): 5-fold baseline <= 0.4 s per audio minute, 5-fold v3 <= 1.0, >= 3x eager torch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: with the decoding thread (or any other process) on
# the same 2 cores, spinning barriers make eager torch 5x slower (efficientnet_b0: 2.7 s vs 0.55 s
# per 12 windows measured on a shared machine). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from birdclef.audio.io import audio_info, load_audio  # noqa: E402
from birdclef.config import InferConfig, load_config  # noqa: E402
from birdclef.export.export import build_graph, check_target, export_model  # noqa: E402
from birdclef.export.runtime import ExportedPredictor  # noqa: E402
from birdclef.infer.base import context_windows, row_count  # noqa: E402
from birdclef.infer.ensemble import combine_runs  # noqa: E402
from birdclef.infer.job import predict_to_csv  # noqa: E402
from birdclef.infer.predict import TorchPredictor  # noqa: E402
from birdclef.models import create_model, save_checkpoint  # noqa: E402
from timing import time_calls  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA = SHARED / "xcbirds-dev-v1" / "test_soundscapes"
LABELS_206 = SHARED / "birdclef2025-metadata" / "primary_labels_206.txt"
TARGETS = {"baseline": 0.4, "v3": 1.0}
BACKENDS = [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
"""Exported backends timed. ONNX Runtime int8 (QDQ) is left out: 2-3x slower than its fp32 here."""


def best_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Fastest of `repeats` timed calls after `warmup`: on a shared machine the minimum is the
    undisturbed cost (medians drift with other processes' load)."""
    return min(time_calls(fn, repeats, warmup))


def matmul_rate(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> float:
    """Best GFLOP/s of square torch matmuls in `dtype` on the current threads."""
    rates = []
    for size in sizes:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        rates.append(2 * size**3 / best_time(lambda: a @ b, repeats) / 1e9)
    return max(rates)


def openvino_matmul_rate(precision: str, threads: int, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """Best GFLOP/s (GOP/s for int8) of a square MatMul compiled by OpenVINO for the CPU (0 without
    OpenVINO). Its oneDNN brgemm kernels are the ones the exported convolutions run on; torch has no
    int8 CPU matmul and its bf16 one is slower, so the ceiling is the higher of the two readings.
    int8 is a u8 activation x s8 weight product (FakeQuantize on the input, dequantized int8 weights),
    the pattern nncf writes."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return 0.0
    core, rates = ov.Core(), []
    rng = np.random.default_rng(0)
    for size in sizes:
        a = ops.parameter([size, size], np.float32)
        weight = rng.standard_normal((size, size)).astype(np.float32)
        if precision == "int8":
            low, high = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
            quantized = np.clip(np.round(weight * 32), -127, 127).astype(np.int8)
            weight_node = ops.multiply(ops.convert(ops.constant(quantized), np.float32), ops.constant(np.float32(1 / 32)))
            product = ops.matmul(ops.fake_quantize(a, low, high, low, high, 256), weight_node, False, False)
        else:
            product = ops.matmul(a, ops.constant(weight), False, False)
        compiled = core.compile_model(ov.Model([ops.result(product)], [a]), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
        request, x = compiled.create_infer_request(), rng.standard_normal((size, size)).astype(np.float32)
        rates.append(2 * size**3 / best_time(lambda: request.infer({0: x}), repeats) / 1e9)
    return max(rates)


def ceilings(threads: int) -> dict[str, float]:
    """The matmul ceiling of each precision: the best of torch's and OpenVINO's readings."""
    return {"fp32": max(matmul_rate(torch.float32), openvino_matmul_rate("fp32", threads)),
            "bf16": max(matmul_rate(torch.bfloat16), openvino_matmul_rate("bf16", threads)),
            "int8": openvino_matmul_rate("int8", threads)}


def make_run(root: Path, name: str, folds: int, classes: list[str]) -> Path:
    config = load_config(REPO / "configs" / f"{name}.yaml", ["model.pretrained=false"])
    for fold in range(folds):
        torch.manual_seed(fold)
        model = create_model(config.model, len(classes))
        save_checkpoint(root / f"fold{fold}" / "best.pt", model, config, classes, epoch=0, score=None)
        (root / f"fold{fold}" / "done.json").write_text("{}")
    return root


def trained_run(run: Path, folds: int) -> Path:
    """A trained run as TorchPredictor takes it: the folder when it has exactly `folds` finished
    folds, its first fold's best.pt when one is asked."""
    done = sorted(run.glob("fold*/best.pt"))
    if folds == len(done):
        return run
    if folds == 1 and done:
        return done[0]
    raise SystemExit(f"{run}: {len(done)} finished folds; --folds can ask for 1 or {len(done)}")


def flops_per_window(predictor: TorchPredictor) -> float:
    """FLOPs (2 x multiply-adds of matmuls / convs) of the fused graph for one window."""
    module = build_graph(predictor)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, module.num_samples))
    return float(counter.get_total_flops())


def torch_stages(predictor: TorchPredictor, path: Path, repeats: int) -> dict[str, float]:
    """Seconds of decode / front end / model / post for one file (best of repeats), eager torch."""
    sr, ens = predictor.sample_rate, predictor.ensembles[0]
    wave = load_audio(path, sr)
    windows = torch.from_numpy(context_windows(wave, sr, row_count(len(wave), sr), ens.window_s))
    models = [m for e in predictor.ensembles for m in e.models]
    with torch.no_grad():
        mel = models[0].forward_mel(windows)
        front = best_time(lambda: models[0].forward_mel(windows), repeats)
        model = best_time(lambda: [m.forward_head(m.forward_backbone(mel)) for m in models], repeats)
    runs = predictor.predict_runs(wave)
    return {"decode": best_time(lambda: load_audio(path, sr), repeats), "frontend": front, "model": model,
            "post": best_time(lambda: combine_runs(runs, predictor.weights, predictor.config), repeats),
            "minutes": len(wave) / sr / 60}


def exported_stages(predictor: ExportedPredictor, path: Path, repeats: int) -> dict[str, float]:
    """Seconds of decode / graph (front end + folds) / post for one file (best of repeats)."""
    wave = load_audio(path, predictor.sample_rate)
    windows = context_windows(wave, predictor.sample_rate, row_count(len(wave), predictor.sample_rate), predictor.window_s)
    runs = predictor.predict_runs(wave)
    return {"decode": best_time(lambda: load_audio(path, predictor.sample_rate), repeats),
            "graph": best_time(lambda: predictor.predict_windows(windows), repeats),
            "post": best_time(lambda: combine_runs(runs, predictor.weights, predictor.config), repeats),
            "windows": len(windows), "minutes": len(wave) / predictor.sample_rate / 60}


def end_to_end(files: list[Path], predictor: Any, out: Path) -> float:
    """Seconds per audio minute of the batch job over `files` (decoding in 1 thread beside compute)."""
    shutil.rmtree(out.with_name(f".{out.name}.parts"), ignore_errors=True)
    summary = predict_to_csv(files, predictor, out, num_workers=1, progress=False)
    return summary.elapsed_s / (sum(audio_info(p).duration_s for p in files) / 60)


def export_backends(name: str, folds: int, run: Path, files: list[Path], tmp: Path,
                    args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, ExportedPredictor]]:
    """Export `run` for every backend of BACKENDS: (rows with parity / skip notes, predictors by label)."""
    rows, predictors = [], {}
    for fmt, precision in BACKENDS:
        label = f"{fmt} {precision}"
        try:
            check_target(fmt, precision)
        except Exception as exc:  # missing backend or CPU feature: reported, not fatal
            rows.append({"config": name, "folds": folds, "backend": label, "skipped": str(exc)})
            continue
        out, started = tmp / f"{name}-{folds}-{fmt}-{precision}", time.perf_counter()
        report = export_model([run], format=fmt, precision=precision, out=out, parity_audio=files[0].parent,
                              parity_count=args.parity_files, force=True, config=InferConfig(), threads=args.threads)
        predictors[label] = ExportedPredictor(out, threads=args.threads)
        rows.append({"config": name, "folds": folds, "backend": label, "export_s": time.perf_counter() - started,
                     "parity": report.parity.summary(), "precision": precision})
    return rows, predictors


def bench_config(name: str, folds: int, files: list[Path], tmp: Path, classes: list[str],
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of one config x folds: eager torch, then each exported backend; end-to-end runs alternate
    between the backends for `args.rounds` rounds and keep each one's best, so load spikes from other
    processes hit all of them alike."""
    run = trained_run(args.runs[name], folds) if name in args.runs else make_run(tmp / f"{name}-{folds}", name, folds, classes)
    torch_side = TorchPredictor([run], config=InferConfig(), device="cpu")
    flops = flops_per_window(torch_side)
    eager = {"config": name, "folds": folds, "backend": "torch eager", **torch_stages(torch_side, files[0], args.repeats),
             "precision": "fp32"}
    eager["graph"] = eager["frontend"] + eager["model"]
    rows, predictors, exported = [eager], {"torch eager": torch_side}, {}
    if folds == max(args.folds) or args.export_all:
        exported_rows, exported = export_backends(name, folds, run, files, tmp, args)
        rows += exported_rows
        predictors.update(exported)
    for row in rows:
        row["gflop_per_window"] = flops / 1e9
        if row["backend"] in exported:
            row.update(exported_stages(predictors[row["backend"]], files[0], args.repeats))
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for label, predictor in predictors.items():
            seconds = end_to_end(files, predictor, tmp / "e2e.csv")
            best[label] = min(best.get(label, seconds), seconds)
    for row in rows:
        if row["backend"] in best:
            row["e2e_s_per_min"] = best[row["backend"]]
    return rows


def finish_row(row: dict[str, Any], eager: dict[str, Any], threads: int) -> None:
    """Derived numbers: per-minute stages, throughput, ceiling fraction, speedup, 700-file estimate."""
    if "skipped" in row:
        return
    m = row["minutes"]
    windows = row.get("windows", 12 * m)
    row["windows_per_s"] = windows * row["folds"] / row["graph"]  # window x fold evaluations per second
    row["ceiling_fraction"] = row["gflop_per_window"] * (windows / row["graph"]) / row["matmul_gflops"]
    row["speedup_vs_eager"] = eager["e2e_s_per_min"] / row["e2e_s_per_min"]
    row["minutes_700_files"] = 700 * row["e2e_s_per_min"] / 60


def print_tables(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    print(f"\n{meta['threads']} threads, {meta['files']} files, matmul ceiling fp32 {meta['fp32']:.0f} / "
          f"bf16 {meta['bf16']:.0f} GFLOP/s / int8 {meta['int8']:.0f} GOP/s, load {meta['load_before']} -> {meta['load_after']}")
    print("\n(a) eager torch, seconds per audio minute by stage")
    print(f"{'config':9} {'folds':>5} {'decode':>7} {'front':>7} {'model':>7} {'post':>7} {'total':>7} {'700 files min':>14}")
    for r in rows:
        if r["backend"] == "torch eager":
            per = {k: r[k] / r["minutes"] for k in ("decode", "frontend", "model", "post")}
            total = sum(per.values())
            print(f"{r['config']:9} {r['folds']:>5} {per['decode']:7.3f} {per['frontend']:7.3f} {per['model']:7.3f} "
                  f"{per['post']:7.3f} {total:7.3f} {700 * total / 60:14.1f}")
    print("\n(b) end to end (predict_to_csv, decode overlapped), seconds per audio minute")
    print(f"{'config':9} {'folds':>5} {'backend':15} {'e2e s/min':>9} {'decode':>7} {'graph':>7} {'post':>6} "
          f"{'win/s':>7} {'GFLOP/w':>8} {'%ceil':>6} {'x eager':>7} {'700f min':>8} {'target':>6}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['config']:9} {r['folds']:>5} {r['backend']:15} skipped: {r['skipped'][:80]}")
            continue
        target = TARGETS.get(r["config"]) if r["folds"] == 5 else None
        verdict = "-" if target is None else ("ok" if r["e2e_s_per_min"] <= target else "miss")
        m = r["minutes"]
        print(f"{r['config']:9} {r['folds']:>5} {r['backend']:15} {r['e2e_s_per_min']:9.3f} {r['decode'] / m:7.3f} "
              f"{r['graph'] / m:7.3f} {r['post'] / m:6.3f} {r['windows_per_s']:7.1f} {r['gflop_per_window']:8.2f} "
              f"{100 * r['ceiling_fraction']:5.1f}% {r['speedup_vs_eager']:7.2f} {r['minutes_700_files']:8.1f} {verdict:>6}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of 60 s soundscapes")
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="baseline,v3,sed")
    parser.add_argument("--folds", default="1,5")
    parser.add_argument("--runs", default="", help="trained runs to time instead of random weights, "
                        "e.g. baseline=runs/b0,v3=runs/v3 (their classes; parity then scores true labels "
                        "when --data's solution.csv covers them)")
    parser.add_argument("--parity-files", type=int, default=12, help="soundscapes the export parity check scores")
    parser.add_argument("--export-all", action="store_true", help="also export the 1-fold models")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per stage (best kept)")
    parser.add_argument("--rounds", type=int, default=2, help="end-to-end passes per backend (best kept)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "predict.json")
    args = parser.parse_args(argv)
    args.folds = [int(f) for f in args.folds.split(",")]
    args.runs = {k: Path(v) for k, v in (item.split("=", 1) for item in args.runs.split(",") if item)}
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights and quiet audio make denormals, which slow eager torch ~10x
    files = sorted(args.data.glob("*.ogg"))[: args.files]
    classes = LABELS_206.read_text().split() if LABELS_206.is_file() else [f"class{i}" for i in range(206)]
    warnings.filterwarnings("ignore")
    meta = {"threads": args.threads, "files": len(files), "load_before": _loadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpu_count": os.cpu_count()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=args.threads):
        meta.update(ceilings(args.threads))
        blocks = []
        for name in args.configs.split(","):
            for folds in args.folds:
                blocks.append(bench_config(name, folds, files, Path(tmp), classes, args))
                print(f"done {name} x{folds}", flush=True)
        # the ceiling again at the end; the higher reading is the less disturbed one
        for precision, rate in ceilings(args.threads).items():
            meta[precision] = max(meta[precision], rate)
    for block in blocks:
        for row in block:
            row["matmul_gflops"] = meta[row.get("precision", "fp32")] or meta["fp32"]
            finish_row(row, block[0], args.threads)
        rows += block
    meta["load_after"] = _loadavg()
    print_tables(rows, meta)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return {"meta": meta, "rows": rows}


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
