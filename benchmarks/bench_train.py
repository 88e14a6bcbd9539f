"""Training throughput on CPU: examples/s, peak memory, and data-loading vs model time per config.

Not a test. Each config runs in its own process (a clean peak-memory reading), on windows from a
cache of a real dataset (default ../shared/data/xcbirds-dev-v1; a synthetic one when absent):

    python benchmarks/bench_train.py [--configs baseline v3 v4 sed] [--batch-size 4] [--steps 6] [--threads 2]

Prints a table and writes benchmarks/results/train.json. "loader" is the time the DataLoader takes to
produce one batch (random crops, background mixing) with the config's workers; "model" is one
training step (mixup, forward, configured loss, backward, AdamW). The loader keeps up when
loader/model < 1 (with workers it runs in parallel with the model).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "xcbirds-dev-v1"


def dataset(path: Path | None, scratch: Path) -> Path:
    if path is not None:
        return path
    if (DEFAULT_DATA / "train.csv").is_file():
        return DEFAULT_DATA
    from birdclef.data.synth import synthesize_dataset

    synthesize_dataset(scratch / "synth", progress=False)
    return scratch / "synth"


def measure_one(config_name: str, data: Path, batch_size: int, steps: int, threads: int, workers: int) -> dict:
    """Runs in a child process: time the loader and the training step of one config."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from birdclef.config import load_config
    from birdclef.data.cache import WaveCache, prepare_cache
    from birdclef.data.dataset import EpochSampler, WindowDataset
    from birdclef.data.metadata import DatasetLayout, load_classes
    from birdclef.train.kfold import build_targets
    from birdclef.train.module import BirdModule

    torch.set_num_threads(threads)
    config = load_config(REPO / "configs" / f"{config_name}.yaml",
                         ["model.pretrained=false", f"train.batch_size={batch_size}", f"train.num_workers={workers}"])
    with tempfile.TemporaryDirectory() as tmp:
        prepare_cache(data, Path(tmp) / "cache", strategy=config.data.strategy, window_s=config.data.window_s,
                      num_workers=1, progress=False)
        cache = WaveCache(Path(tmp) / "cache")
        classes = load_classes(DatasetLayout.from_root(data))
        targets, weights = build_targets(cache.index, classes, 1.0, False)
        rows = np.arange(len(cache))
        ds = WindowDataset(cache, rows, targets, weights, train=True)
        loader = DataLoader(ds, batch_size=batch_size, sampler=EpochSampler(len(ds)), num_workers=workers)
        batches, started = [], time.perf_counter()
        for batch in loader:
            batches.append(batch)
            if len(batches) == steps + 1:
                break
        loader_s = (time.perf_counter() - started) / len(batches)
        module = BirdModule(config, classes).train()
        optimizer = torch.optim.AdamW(module.parameters(), lr=config.train.lr)
        times = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log() outside a Trainer
            for i, batch in enumerate(batches):
                t0 = time.perf_counter()
                loss = module.training_step(batch, i)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                times.append(time.perf_counter() - t0)
    model_s = float(np.median(times[1:]))  # the first step pays one-off allocation costs
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": config_name, "backbone": config.model.backbone, "head": config.model.head,
            "batch_size": batch_size, "examples_per_s": batch_size / model_s, "model_s_per_batch": model_s,
            "loader_s_per_batch": loader_s, "loader_over_model": loader_s / model_s, "peak_rss_mb": peak_mb,
            "input": f"{config.model.frontend.n_mels} mels, image {config.model.frontend.image_size}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["baseline", "v3", "v4", "sed"])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "train.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.data, args.batch_size, args.steps, args.threads, args.workers)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        data = dataset(args.data, Path(scratch))
        rows = []
        for name in args.configs:
            cmd = [sys.executable, __file__, "--one", name, "--data", str(data), "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--workers", str(args.workers)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = f"{'config':<9} {'backbone':<34} {'head':<6} {'ex/s':>6} {'model s/batch':>13} {'loader s/batch':>14} {'loader/model':>12} {'peak MB':>8}"
    print(f"training on CPU, {args.threads} threads, batch {args.batch_size}, data {data.name}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:<9} {r['backbone']:<34} {r['head']:<6} {r['examples_per_s']:>6.2f} {r['model_s_per_batch']:>13.3f} "
              f"{r['loader_s_per_batch']:>14.3f} {r['loader_over_model']:>12.3f} {r['peak_rss_mb']:>8.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "batch_size": args.batch_size, "rows": rows}, indent=2))
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
