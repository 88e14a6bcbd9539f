"""BirdNET v2.4 speed: ``predict --birdnet``'s code path vs BirdNET's own LiteRT loop, and ``embed``.

A script, not a test (timings never go in assertions):

    python benchmarks/birdnet_predict.py [--data DIR] [--files 6] [--hops 1.0,3.0] [--threads 2]
                                         [--batch 36] [--rounds 3] [--json PATH]

On the same ``--files`` real soundscapes, at each hop, one after another in each round (the best of
``--rounds`` kept: on a shared machine the minimum is the undisturbed cost):

(a) ours: per file ``load_audio(path, 48000)`` (soundfile + integrity checks + soxr HQ) and
    ``BirdnetPredictor.predict_file`` (chunks inside each 5 s row, the rewritten graph with its
    embedding output, sigmoid, max pooling, class mapping), decoding in the same thread;
(b) plain: BirdNET's own loop on the unmodified ``.tflite``: a bare ai-edge-litert ``Interpreter``,
    ``soundfile.read`` + ``soxr.resample`` 32 -> 48 kHz, chunks every hop over the whole file (zero-padded
    tail kept from 1 s, as BirdNET-Analyzer's ``split_signal``), ``invoke`` in batches of ``--batch``,
    sigmoid;
(c) embed: ``embed_to_parquet`` over the files into a temporary Parquet (decode thread, parts,
    assembly), at the same hop.

The three make different numbers of chunks per audio minute (ours: 3 per 5 s row at hop 1, 2 at hop 3;
plain and embed: one per hop), so besides seconds per audio minute the table gives milliseconds per
chunk, the fair measure of each loop's overhead around the same graph. Ratios are against (b).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
from scipy.special import expit  # noqa: E402

from birdclef.audio.io import load_audio  # noqa: E402
from birdclef.zoo.build import ZERO_SHOT_DEFAULTS as BIRDNET_DEFAULTS  # noqa: E402
from birdclef.zoo.build import resolve_classes  # noqa: E402
from birdclef.birdnet.classes import read_scientific_names  # noqa: E402
from birdclef.birdnet.embed import embed_to_parquet  # noqa: E402
from birdclef.birdnet.model import CHUNK_SAMPLES, SAMPLE_RATE, BirdnetModel, bundled_model_path  # noqa: E402
from birdclef.birdnet.predictor import BirdnetPredictor  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA = SHARED / "xcbirds-dev-v1" / "test_soundscapes"
TARGET_RATIO = 1.2
"""Issue target: ours within 1.2x of BirdNET's own loop."""


class PlainBirdnet:
    """BirdNET's own inference loop: a bare Interpreter on the unmodified file, as birdnet/BirdNET-Analyzer run it."""

    def __init__(self, path: Path, threads: int, batch: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path), num_threads=threads)
        self.input = self.interp.get_input_details()[0]["index"]
        self.output = self.interp.get_output_details()[0]["index"]
        self.batch, self.shape = batch, None

    @staticmethod
    def decode(path: Path) -> np.ndarray:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
        return soxr.resample(wave.mean(axis=1), rate, SAMPLE_RATE, quality="HQ")

    @staticmethod
    def split(wave: np.ndarray, hop_s: float, min_s: float = 1.0) -> list[np.ndarray]:
        """BirdNET-Analyzer's ``split_signal``: a chunk every hop, the tail zero-padded, none under `min_s`."""
        step = int(hop_s * SAMPLE_RATE)
        chunks = []
        for start in range(0, len(wave), step):
            chunk = wave[start : start + CHUNK_SAMPLES]
            if len(chunk) < int(min_s * SAMPLE_RATE):
                break
            chunks.append(np.pad(chunk, (0, CHUNK_SAMPLES - len(chunk))) if len(chunk) < CHUNK_SAMPLES else chunk)
        return chunks

    def scores(self, chunks: list[np.ndarray]) -> np.ndarray:
        out = []
        for begin in range(0, len(chunks), self.batch):
            batch = np.array(chunks[begin : begin + self.batch], dtype=np.float32)
            if batch.shape != self.shape:
                self.interp.resize_tensor_input(self.input, list(batch.shape))
                self.interp.allocate_tensors()
                self.shape = batch.shape
            self.interp.set_tensor(self.input, batch)
            self.interp.invoke()
            out.append(expit(self.interp.get_tensor(self.output)))
        return np.concatenate(out)

    def run(self, paths: list[Path], hop_s: float) -> int:
        """Score every file; the number of chunks invoked."""
        return sum(len(self.scores(chunks)) for chunks in (self.split(self.decode(p), hop_s) for p in paths))


def run_ours(paths: list[Path], predictor: BirdnetPredictor) -> int:
    """``predict --birdnet``'s per-file path; the number of chunks invoked."""
    n = 0
    for path in paths:
        wave = load_audio(path, SAMPLE_RATE)
        probs = predictor.predict_file(wave)
        n += len(probs) * len(predictor.offsets)
    return n


def run_embed(paths: list[Path], model: BirdnetModel, hop_s: float, out: Path) -> int:
    summary = embed_to_parquet(paths, out, model, hop_s=hop_s, progress=False)
    out.unlink()
    return summary.n_rows


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def bench_hop(hop_s: float, paths: list[Path], classes: list[str], names: dict[str, str],
              args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Best-of-rounds seconds and chunks of (a), (b), (c) at one hop, interleaved round by round."""
    config = dataclasses.replace(BIRDNET_DEFAULTS, birdnet_hop_s=hop_s, birdnet_batch_size=args.batch)
    model = BirdnetModel(threads=args.threads, batch_size=args.batch)
    predictor = BirdnetPredictor(classes, names, config, model=model)
    plain = PlainBirdnet(bundled_model_path(), args.threads, args.batch)
    embedder = BirdnetModel(threads=args.threads, batch_size=args.batch)  # its own: no resizes between methods
    runs = {"ours (predict --birdnet)": lambda: run_ours(paths, predictor),
            "plain LiteRT loop": lambda: plain.run(paths, hop_s),
            "embed (embed_to_parquet)": lambda: run_embed(paths, embedder, hop_s, tmp / "emb.parquet")}
    for fn in runs.values():  # warm-up: first invokes of each batch shape, file caches
        fn()
    best: dict[str, tuple[float, int]] = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            seconds, n = timed(fn)
            best[name] = min(best.get(name, (seconds, n)), (seconds, n))
    minutes = sum(sf.info(p).duration for p in paths) / 60
    rows = [{"hop_s": hop_s, "method": name, "seconds": s, "chunks": n, "audio_min": minutes,
             "s_per_audio_min": s / minutes, "ms_per_chunk": 1000 * s / n} for name, (s, n) in best.items()]
    base = next(r for r in rows if r["method"].startswith("plain"))
    for r in rows:
        r["ratio_per_min"] = r["s_per_audio_min"] / base["s_per_audio_min"]
        r["ratio_per_chunk"] = r["ms_per_chunk"] / base["ms_per_chunk"]
    return rows


def print_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    print(f"\n{meta['files']} files ({meta['audio_min']:.1f} audio min), {meta['threads']} threads, batch "
          f"{meta['batch']}, best of {meta['rounds']}; load {meta['load_before']} -> {meta['load_after']}")
    print(f"{'hop':>4} {'method':26} {'chunks':>6} {'s/audio min':>11} {'ms/chunk':>8} {'x plain/min':>11} "
          f"{'x plain/chunk':>13}")
    for r in rows:
        print(f"{r['hop_s']:4.1f} {r['method']:26} {r['chunks']:6d} {r['s_per_audio_min']:11.3f} "
              f"{r['ms_per_chunk']:8.2f} {r['ratio_per_min']:11.2f} {r['ratio_per_chunk']:13.2f}")
    print(f"target: ours within {TARGET_RATIO}x of the plain loop (per chunk: same work per invoke)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of soundscapes (its parent holds "
                        "taxonomy.csv)")
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--hops", default="1.0,3.0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=36, help="chunks per invoke, for every method")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per method (best kept)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "birdnet_predict.json")
    args = parser.parse_args(argv)
    paths = sorted(args.data.glob("*.ogg"))[: args.files]
    if not paths:
        parser.error(f"no .ogg soundscapes in {args.data}")
    classes, taxonomy = resolve_classes(args.data.parent, None, None)
    names = read_scientific_names(taxonomy)
    warnings.filterwarnings("ignore")
    meta = {"files": len(paths), "threads": args.threads, "batch": args.batch, "rounds": args.rounds,
            "cpu_count": os.cpu_count(), "load_before": _loadavg(), "data": str(args.data)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for hop in (float(h) for h in args.hops.split(",")):
            rows += bench_hop(hop, paths, classes, names, args, Path(tmp))
            print(f"done hop {hop}", flush=True)
    meta["load_after"], meta["audio_min"] = _loadavg(), rows[0]["audio_min"]
    print_table(rows, meta)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.json}")
    return {"meta": meta, "rows": rows}


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
