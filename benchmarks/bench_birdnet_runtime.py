"""BirdNET v2.4 zero-shot: LiteRT vs its fused graph on ONNX Runtime and OpenVINO (fp32, bf16, int8), speed and AUC.

A script, not a test (timings never go in assertions):

    python benchmarks/bench_birdnet_runtime.py [--data DIR] [--files 4] [--auc-files 30] [--threads 2]
                                               [--batch 36] [--hop 1.0] [--rounds 5] [--no-int8] [--json PATH]

Every method is ``BirdnetPredictor.predict_file`` (``predict --birdnet``'s path: chunks at ``--hop`` inside each
5 s row, sigmoid, max pooling, class mapping; no post-processing, BirdNET's zero-shot defaults) on the same
48 kHz waves, decoded once beforehand (decoding is the same for every method and is reported apart):

- LiteRT: :class:`~birdclef.birdnet.model.BirdnetModel` (the ``.tflite`` on ai-edge-litert, XNNPACK);
- ONNX Runtime fp32, OpenVINO fp32 (the default: a graph compiled per batch length, 2 streams; and, to see what
  each costs, the dynamic-batch graph and 1 stream): :class:`~birdclef.birdnet.fused.FusedBirdnetModel`;
- OpenVINO bf16 (when the CPU has bf16): the same graph, bf16 CNN, float32 front end;
- OpenVINO int8 (``--no-int8`` skips it): the fused graph quantized by nncf (front end float32), calibrated on
  96 chunks of ``DATA/../train_soundscapes`` (never the scored files), written to a temporary folder.

Each method passes the parity gate of :mod:`birdclef.birdnet.fused_gate` (reported; bf16 and int8 are gated on
ranking). Timing: ``--rounds`` rounds over the first ``--files`` soundscapes, the methods in a rotated order each
round (the machine is shared: a burst of load hits different methods in different rounds). Reported per method:
the best and median wall seconds per audio minute, CPU seconds per audio minute (less sensitive to other
processes), and the speed-up over LiteRT as the median of the per-round ratios. AUC: macro ROC-AUC of each
method on the first ``--auc-files`` soundscapes against ``solution.csv`` (classes BirdNET does not know = 0.5,
as ``docs/models.md``; and on the known classes only), and max |dprob| against LiteRT over all rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from birdclef.audio.io import load_audio  # noqa: E402
from birdclef.audio.segments import row_ids, soundscape_windows  # noqa: E402
from birdclef.birdnet.classes import read_scientific_names  # noqa: E402
from birdclef.birdnet.fused import FusedBirdnetModel  # noqa: E402
from birdclef.birdnet.fused_gate import ParityGateError, check_gate, gate_chunks, litert_reference  # noqa: E402
from birdclef.birdnet.model import CHUNK_SAMPLES, SAMPLE_RATE, BirdnetModel  # noqa: E402
from birdclef.birdnet.predictor import BirdnetPredictor  # noqa: E402
from birdclef.eval.metrics import macro_roc_auc  # noqa: E402
from birdclef.export.runtime import OpenVinoGraph, cpu_supports_bf16  # noqa: E402
from birdclef.zoo.build import ZERO_SHOT_DEFAULTS, resolve_classes  # noqa: E402

SHARED_DATA = Path(os.environ.get("BIRDCLEF_SHARED_DATA", REPO.parent / "shared" / "data"))  # as tests/conftest.py
DEFAULT_DATA = SHARED_DATA / "multitaxa-dev-v1" / "test_soundscapes"
TARGET_SPEEDUP, TARGET_AUC = 2.0, 0.002
"""Issue 20 item 6: fused >= 2x LiteRT's speed at the same hop, macro ROC-AUC within 0.002."""
CALIBRATION_CHUNKS = 96


class GraphModel:
    """BirdnetModel's ``infer`` over an OpenVINO graph with (logits, embeddings) outputs (the int8 IR)."""

    def __init__(self, graph: OpenVinoGraph, reference: BirdnetModel, batch: int):
        self.graph, self.labels, self.path, self.batch_size = graph, reference.labels, reference.path, batch

    def infer(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.graph.outputs(np.ascontiguousarray(chunks[i : i + self.batch_size], dtype=np.float32))
                 for i in range(0, len(chunks), self.batch_size)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def logits(self, chunks: np.ndarray) -> np.ndarray:
        return self.infer(chunks)[0]


def int8_model(litert: BirdnetModel, fused: FusedBirdnetModel, calibration: Path, tmp: Path,
               args: argparse.Namespace) -> GraphModel:
    """The fused graph quantized by nncf on chunks of `calibration`'s soundscapes (front end left float32)."""
    from birdclef.export.export import to_openvino

    windows = []
    for path in sorted(calibration.glob("*.ogg")):
        wave = load_audio(path, SAMPLE_RATE)
        windows += [wave[s : s + CHUNK_SAMPLES] for s in range(0, len(wave) - CHUNK_SAMPLES + 1, 2 * SAMPLE_RATE)]
        if len(windows) >= CALIBRATION_CHUNKS:
            break
    to_openvino(fused.graph_file, tmp / "int8.xml", "int8", np.stack(windows[:CALIBRATION_CHUNKS]))
    return GraphModel(OpenVinoGraph(tmp / "int8.xml", args.threads, "int8", static=True), litert, args.batch)


def build_models(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """name -> model (BirdnetModel's surface), and name -> the parity gate's verdict."""
    litert = BirdnetModel(threads=args.threads, batch_size=args.batch)
    kw = {"threads": args.threads, "batch_size": args.batch, "gate": False}
    models: dict[str, Any] = {"LiteRT": litert,
                              "ONNX Runtime fp32": FusedBirdnetModel(runtime="onnx", **kw),
                              "OpenVINO fp32": FusedBirdnetModel(runtime="openvino", **kw),
                              "OpenVINO fp32 dynamic": FusedBirdnetModel(runtime="openvino", static=False, **kw),
                              "OpenVINO fp32 1 stream": FusedBirdnetModel(runtime="openvino", streams=1, **kw)}
    if cpu_supports_bf16():
        models["OpenVINO bf16"] = FusedBirdnetModel(runtime="openvino", precision="bf16", **kw)
    calibration = args.data.parent / "train_soundscapes"
    if args.int8 and calibration.is_dir():
        models["OpenVINO int8"] = int8_model(litert, models["OpenVINO fp32"], calibration, tmp, args)
    reference = litert_reference(litert.path, gate_chunks())
    gates = {}
    for name, model in models.items():
        if name == "LiteRT":
            continue
        precision = "int8" if "int8" in name else getattr(model, "precision", "fp32")
        try:
            if isinstance(model, FusedBirdnetModel):
                gates[name] = model.check().summary()
            else:
                gates[name] = check_gate(reference, model.infer(gate_chunks()), precision).summary()
        except ParityGateError as exc:
            gates[name] = exc.result.summary()
    return models, gates


def time_round(predictors: dict[str, BirdnetPredictor], waves: list[np.ndarray],
               order: list[str]) -> dict[str, tuple[float, float]]:
    """name -> (wall s, CPU s) of predicting every wave once, methods in `order`."""
    out = {}
    for name in order:
        wall, cpu = time.perf_counter(), time.process_time()
        for wave in waves:
            predictors[name].predict_file(wave)
        out[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    return out


def speed_rows(predictors: dict[str, BirdnetPredictor], waves: list[np.ndarray], rounds: int) -> list[dict[str, Any]]:
    names = list(predictors)
    for name in names:  # warm-up: first-call allocations, kernel selection, both batch shapes
        predictors[name].predict_file(waves[0])
    per_round = []
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        per_round.append(time_round(predictors, waves, order))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {per_round[-1][n][0]:.2f} s" for n in names), flush=True)
    minutes = sum(len(w) for w in waves) / SAMPLE_RATE / 60
    rows = []
    for name in names:
        wall = [rnd[name][0] for rnd in per_round]
        ratios = [rnd["LiteRT"][0] / rnd[name][0] for rnd in per_round]
        rows.append({"method": name, "best_s_per_min": min(wall) / minutes,
                     "median_s_per_min": statistics.median(wall) / minutes,
                     "cpu_s_per_min": statistics.median(rnd[name][1] for rnd in per_round) / minutes,
                     "speedup_median": statistics.median(ratios),
                     "speedup_best": min(rnd["LiteRT"][0] for rnd in per_round) / min(wall), "speedup_rounds": ratios})
    return rows


def auc_rows(predictors: dict[str, BirdnetPredictor], paths: list[Path], waves: list[np.ndarray],
             solution: pd.DataFrame) -> dict[str, dict[str, float]]:
    ids = [i for p, w in zip(paths, waves) for i in row_ids(p.stem, soundscape_windows(len(w) / SAMPLE_RATE))]
    classes = predictors["LiteRT"].classes
    target = solution.loc[ids, classes].to_numpy()
    known = ~np.isin(classes, predictors["LiteRT"].unscored)
    probs = {name: np.concatenate([p.predict_file(w) for w in waves]) for name, p in predictors.items()}
    out = {}
    for name, p in probs.items():
        filled = np.nan_to_num(p, nan=0.5)
        out[name] = {"auc": macro_roc_auc(target, filled),
                     "auc_known": macro_roc_auc(target[:, known], filled[:, known]),
                     "max_abs_dprob": float(np.abs(p[:, known] - probs["LiteRT"][:, known]).max())}
    for name in out:
        out[name]["dauc"] = out[name]["auc"] - out["LiteRT"]["auc"]
    return out


def print_table(rows: list[dict[str, Any]], aucs: dict[str, dict[str, float]], gates: dict[str, str],
                meta: dict[str, Any]) -> None:
    print(f"\nBirdNET zero-shot at hop {meta['hop']} s, batch {meta['batch']}, {meta['threads']} threads; speed on "
          f"{meta['files']} files ({meta['audio_min']:.1f} audio min, {meta['rounds']} rounds, decode "
          f"{meta['decode_s_per_min']:.3f} s/min not included); AUC on {meta['auc_files']} files; "
          f"load {meta['load_before']} -> {meta['load_after']}")
    print(f"{'method':24} {'best s/min':>10} {'median':>7} {'CPU s/min':>9} {'x LiteRT':>8} {'AUC':>7} {'dAUC':>8} "
          f"{'AUC known':>9} {'max|dp|':>8}")
    for r in rows:
        a = aucs.get(r["method"], {})
        print(f"{r['method']:24} {r['best_s_per_min']:10.3f} {r['median_s_per_min']:7.3f} {r['cpu_s_per_min']:9.3f} "
              f"{r['speedup_median']:8.2f} {a.get('auc', float('nan')):7.4f} {a.get('dauc', float('nan')):+8.4f} "
              f"{a.get('auc_known', float('nan')):9.4f} {a.get('max_abs_dprob', float('nan')):8.1e}")
    print(f"goal: fused >= {TARGET_SPEEDUP}x LiteRT at the same hop, |dAUC| <= {TARGET_AUC}")
    for name, gate in gates.items():
        print(f"  {name}: {gate}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="test soundscapes; solution.csv and "
                        "taxonomy.csv beside the folder, train_soundscapes for int8 calibration")
    parser.add_argument("--files", type=int, default=4, help="soundscapes timed")
    parser.add_argument("--auc-files", type=int, default=30, help="soundscapes scored for AUC (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=36)
    parser.add_argument("--hop", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "bench_birdnet_runtime.json")
    args = parser.parse_args(argv)
    paths = sorted(args.data.glob("*.ogg"))
    if not paths:
        parser.error(f"no .ogg soundscapes in {args.data}")
    warnings.filterwarnings("ignore")
    classes, taxonomy = resolve_classes(args.data.parent, None, None)
    config = dataclasses.replace(ZERO_SHOT_DEFAULTS, birdnet_hop_s=args.hop, birdnet_batch_size=args.batch)
    meta = {"files": min(args.files, len(paths)), "auc_files": min(args.auc_files, len(paths)), "hop": args.hop,
            "batch": args.batch, "threads": args.threads, "rounds": args.rounds, "cpu_count": os.cpu_count(),
            "data": str(args.data), "load_before": _loadavg()}
    start = time.perf_counter()
    waves = [load_audio(p, SAMPLE_RATE) for p in paths[: max(meta["files"], meta["auc_files"])]]
    meta["decode_s_per_min"] = (time.perf_counter() - start) / (sum(len(w) for w in waves) / SAMPLE_RATE / 60)
    with tempfile.TemporaryDirectory() as tmp:
        models, gates = build_models(args, Path(tmp))
        names = read_scientific_names(taxonomy)
        predictors = {name: BirdnetPredictor(classes, names, config, model=m) for name, m in models.items()}
        rows = speed_rows(predictors, waves[: meta["files"]], args.rounds)
        aucs = {}
        if meta["auc_files"]:
            solution = pd.read_csv(args.data.parent / "solution.csv", dtype={"row_id": str}).set_index("row_id")
            aucs = auc_rows(predictors, paths[: meta["auc_files"]], waves[: meta["auc_files"]], solution)
    meta["load_after"], meta["audio_min"] = _loadavg(), sum(len(w) for w in waves[: meta["files"]]) / SAMPLE_RATE / 60
    print_table(rows, aucs, gates, meta)
    result = {"meta": meta, "rows": rows, "auc": aucs, "gates": gates}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return result


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
