"""``birdclef embed`` throughput, one process against Dask workers, and what a competition-size training set costs.

A script, not a test (timings never go in assertions):

    python benchmarks/embed_scale.py [--audio DIR] [--minutes 10] [--foundation birdnet] [--threads 2]
                                     [--workers 2] [--json PATH]

On the same files (a seeded draw of ``--minutes`` of audio from ``--audio``, recursively), at the model's own hop
(BirdNET: 3 s windows every 3 s):

(a) plain: ``embed_to_parquet`` in this process, the model with ``--threads`` runtime threads (loaded before the
    clock starts);
(b) dask, cold: ``--engine dask`` on a LocalCluster of ``--workers`` single-threaded processes started before the
    clock (its start is reported apart); each worker builds its model during the run (one-thread runtimes);
(c) dask, warm: the same files again into another table, the workers keeping their models: the steady rate.

(a) and (c) alternate for ``--rounds`` rounds and the best of each is kept: on a shared machine the minimum is the
least disturbed cost.

Each gives seconds per audio hour of this clip mix and milliseconds per window (the model's unit of work; short
clips add a zero-padded tail window each). The dask table must equal the plain one. From the per-window rates,
the cost of embedding BirdCLEF+ 2026's training data (``--focal-h`` of focal clips, ``--soundscape-h`` of
soundscapes) is projected for the ``embed`` grid (one window per 3 s) and for a head's grid
(``infer.birdnet_hop_s`` 0.5: 5 windows per 5 s row; clean rows, and for the clips the recipe's 4 background
copies at probability 0.8, i.e. 4.2 passes; a soundscape's pseudo-labelled windows are embedded once), on one
machine (a) and on N one-core workers (c's rate per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402

from birdclef.birdnet.embed import embed_to_parquet, list_audio  # noqa: E402
from birdclef.zoo.build import foundation_model  # noqa: E402

DEFAULT_AUDIO = REPO.parent / "shared" / "data" / "multitaxa-dev-v1" / "train_audio"
FOCAL_H, SOUNDSCAPE_H = 344.0, 178.0
"""BirdCLEF+ 2026's training data: hours of focal clips (train_audio) and of train_soundscapes."""
HEAD_PASSES = 1 + 4 * 0.8
"""configs/birdnet-head.yaml: the clean rows plus 4 copies, each mixing a row with probability 0.8."""


def _loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def pick_files(folder: Path, minutes: float, seed: int = 0) -> tuple[list[Path], float]:
    """A seeded draw of the folder's audio files adding up to `minutes` of audio; (files, seconds)."""
    paths, _ = list_audio(folder)
    order = np.random.default_rng(seed).permutation(len(paths))
    picked, seconds = [], 0.0
    for i in order:
        if seconds >= minutes * 60:
            break
        picked.append(paths[i])
        seconds += sf.info(paths[i]).duration
    return sorted(picked), seconds


def timed_run(name: str, files: list[Path], out: Path, model, audio_s: float, **kwargs: Any) -> dict[str, Any]:
    started = time.perf_counter()
    summary = embed_to_parquet(files, out, model, progress=False, **kwargs)
    wall = time.perf_counter() - started
    row = {"run": name, "wall_s": round(wall, 2), "windows": summary.n_rows, "files": summary.n_files,
           "s_per_audio_h": round(wall / (audio_s / 3600), 1), "ms_per_window": round(1000 * wall / summary.n_rows, 2),
           "load": _loadavg()}
    print(f"{name}: {row}", flush=True)
    return row


def project(ms_per_window: float, hours: float, windows_per_h: float, parallel: int = 1) -> float:
    """Hours of wall time to embed `hours` of audio at `windows_per_h`, over `parallel` equal workers."""
    return hours * windows_per_h * ms_per_window / 1000 / 3600 / parallel


def projections(plain: dict, warm: dict, workers: int, focal_h: float, soundscape_h: float) -> list[dict[str, Any]]:
    """Wall hours of the competition's training data per grid: one machine (plain) and 1, 8, 32 one-core workers."""
    per_worker_ms = warm["ms_per_window"] * workers  # each of the measured workers did 1/workers of the windows
    grids = [("embed, hop 3.0 (1 window / 3 s)", 1200.0), ("head, hop 0.5, clean rows (5 windows / 5 s row)", 3600.0),
             (f"head, hop 0.5, recipe ({HEAD_PASSES:.1f} passes)", 3600.0 * HEAD_PASSES)]
    rows = []
    for grid, per_h in grids:
        for data, hours in (("focal", focal_h), ("soundscapes", soundscape_h)):
            if data == "soundscapes" and "recipe" in grid:  # pseudo-labelled windows are embedded once, unmixed
                continue
            rows.append({"grid": grid, "data": data, "audio_h": hours, "windows": int(hours * per_h),
                         "one_machine_h": round(project(plain["ms_per_window"], hours, per_h), 1),
                         **{f"workers_{n}_h": round(project(per_worker_ms, hours, per_h, n), 2) for n in (1, 8, 32)}})
    return rows


def print_tables(meta: dict, runs: list[dict], rows: list[dict]) -> None:
    print(f"\n{meta['files']} files, {meta['audio_min']:.1f} audio min, {meta['foundation']}; plain "
          f"{meta['threads']} threads, dask {meta['workers']} x 1 thread; load {meta['load_before']} -> "
          f"{meta['load_after']}; LocalCluster start {meta['cluster_start_s']} s; tables equal: {meta['same_table']}")
    print(f"{'run':12} {'wall s':>7} {'windows':>7} {'s/audio h':>9} {'ms/window':>9}")
    for r in runs:
        print(f"{r['run']:12} {r['wall_s']:7.1f} {r['windows']:7d} {r['s_per_audio_h']:9.1f} {r['ms_per_window']:9.2f}")
    print(f"\n{'grid':52} {'data':12} {'windows':>10} {'1 machine h':>11} {'1 worker h':>10} {'8 w. h':>7} "
          f"{'32 w. h':>7}")
    for r in rows:
        print(f"{r['grid']:52} {r['data']:12} {r['windows']:10d} {r['one_machine_h']:11.1f} {r['workers_1_h']:10.1f} "
              f"{r['workers_8_h']:7.2f} {r['workers_32_h']:7.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help="folder of clips (searched recursively)")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of audio to embed per run")
    parser.add_argument("--foundation", default="birdnet", help="KIND[:FILE] (Perch v2 needs its ONNX file)")
    parser.add_argument("--threads", type=int, default=2, help="model runtime threads of the plain run")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers (one thread each)")
    parser.add_argument("--rounds", type=int, default=3, help="plain and warm dask runs, interleaved (best kept)")
    parser.add_argument("--focal-h", type=float, default=FOCAL_H)
    parser.add_argument("--soundscape-h", type=float, default=SOUNDSCAPE_H)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "embed_scale.json")
    args = parser.parse_args(argv)
    from distributed import Client, LocalCluster

    warnings.filterwarnings("ignore")
    files, audio_s = pick_files(args.audio, args.minutes)
    meta = {"files": len(files), "audio_min": round(audio_s / 60, 2), "foundation": args.foundation,
            "threads": args.threads, "workers": args.workers, "cpu_count": os.cpu_count(),
            "load_before": _loadavg(), "audio": str(args.audio)}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain_model = foundation_model(args.foundation, args.threads)
        started = time.perf_counter()
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):
            meta["cluster_start_s"] = round(time.perf_counter() - started, 1)
            dask = {"engine": "dask", "scheduler": cluster.scheduler_address,
                    "rebuild": partial(foundation_model, args.foundation, 1)}
            driver_model = foundation_model(args.foundation, 1)  # the driver's: settings and provenance only
            runs.append(timed_run("dask cold", files, tmp / "cold.parquet", driver_model, audio_s, **dask))
            for k in range(args.rounds):  # interleaved, so that both see the same neighbours
                runs.append(timed_run("plain", files, tmp / f"plain{k}.parquet", plain_model, audio_s))
                runs.append(timed_run("dask warm", files, tmp / f"warm{k}.parquet", driver_model, audio_s, **dask))
        plain = pd.read_parquet(tmp / "plain0.parquet")
        meta["same_table"] = all(pd.read_parquet(p).equals(plain) for p in tmp.glob("*.parquet"))
    meta["load_after"] = _loadavg()
    best = {name: min((r for r in runs if r["run"] == name), key=lambda r: r["wall_s"])
            for name in ("plain", "dask cold", "dask warm")}
    rows = projections(best["plain"], best["dask warm"], args.workers, args.focal_h, args.soundscape_h)
    print_tables(meta, list(best.values()), rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "runs": runs, "best": best, "projections": rows}, indent=2))
    print(f"\nwrote {args.json}")
    return {"meta": meta, "runs": runs, "best": best, "projections": rows}


if __name__ == "__main__":  # LocalCluster's worker processes import this file again
    main()
