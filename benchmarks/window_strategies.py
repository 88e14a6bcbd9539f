"""Which window of a weakly labelled clip to train on: hand-made rules against multiple-instance learning.

An ablation run by hand, never as a test (it trains one model per strategy and fold):

    python benchmarks/window_strategies.py --data ../shared/data/multitaxa-dev-v1 --out abl/ \
        [--folds 0 1 2] [--strategies first center ... mil-attention] [-c configs/lite0.yaml] [--set K=V ...]

Every strategy trains the same backbone with the same recipe (``configs/lite0.yaml`` with the demo's CNN
settings: 64 mels, background mixing, 12 epochs at batch 16), one run per fold (``train.folds=[k]``, so each
fold is a replicate with its own split and seed). Each run predicts DATA/test_soundscapes and is scored
with ``birdclef evaluate --taxonomy`` (macro ROC-AUC, overall and per taxon group).

The budget is matched: a one-window strategy sees one 5 s window per clip per epoch at 16 windows a step;
``mil-*`` sees bags of 4 windows (2.5 s hop) at 4 bags a step for a quarter of the epochs, so every
strategy takes the same optimizer steps over the same number of windows. ``mil-attention-4x`` keeps the
12 epochs (4x the steps and windows); ``random-4x`` (48 epochs) is its control at the same compute.
``learned`` and ``learned-4x`` train one window per clip, 12 epochs, from the windows that the same fold's
``mil-attention`` or ``mil-attention-4x`` run chose (``RUN/mil_windows.csv``).

Finished runs are kept (``OUT/NAME-fK.eval.json``) and skipped on a rerun. Prints a markdown table (mean
and standard deviation over folds, the per-fold difference to ``reference``) and writes ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

from birdclef.demo import DEMO_OVERRIDES  # noqa: E402
from birdclef.utils.io import read_json, write_json_atomic  # noqa: E402

_MIL = ["data.strategy=mil", "train.mil_windows=4", "train.mil_hop_s=2.5", "train.batch_size=4"]
STRATEGIES: dict[str, list[str]] = {
    "first": ["data.strategy=first"],
    "center": ["data.strategy=center"],
    "energy": ["data.strategy=energy"],
    "reference": ["data.strategy=reference"],
    "random": ["data.strategy=random"],
    "learned": ["data.strategy=table"],  # + data.window_table from the fold's mil-attention run
    "learned-4x": ["data.strategy=table"],  # ... from its mil-attention-4x run
    "mil-attention": [*_MIL, "train.mil_pooling=attention", "train.epochs=3"],
    "mil-max": [*_MIL, "train.mil_pooling=max", "train.epochs=3"],
    "mil-topk": [*_MIL, "train.mil_pooling=topk", "train.mil_topk=2", "train.epochs=3"],
    "mil-mean": [*_MIL, "train.mil_pooling=mean", "train.epochs=3"],
    "mil-attention-4x": [*_MIL, "train.mil_pooling=attention"],
    "random-4x": ["data.strategy=random", "train.epochs=48"],
}
BASE = [o for o in DEMO_OVERRIDES if not o.startswith(("model.backbone=", "model.pretrained=", "train.folds="))]
"""The demo's CNN recipe on ``configs/lite0.yaml`` (its ImageNet start, not the demo's random b0)."""


def _cache(name: str, fold: int) -> str:
    """Runs share a training cache when they read the same windows."""
    if name.startswith("learned"):
        return f"cache-{name}-f{fold}"
    return "cache-random" if name.startswith(("mil", "random")) else f"cache-{name}"


def _birdclef(args: list[str], log: Path) -> tuple[float, float]:
    """Run ``python -m birdclef ARGS`` appending to LOG; (CPU s, wall s) of the child; raise on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("a") as out:
        code = subprocess.call([sys.executable, "-m", "birdclef", *args], stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise RuntimeError(f"birdclef {args[0]} failed (exit {code}); see {log}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def run_one(name: str, fold: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train, predict and score one strategy on one fold (or read the finished record)."""
    out: Path = args.out
    tag = f"{name}-f{fold}"
    record = out / f"{tag}.eval.json"
    if record.exists():
        return read_json(record)
    overrides = [*BASE, *args.set, f"train.folds=[{fold}]", *STRATEGIES[name]]
    if name.startswith("learned"):
        teacher = "mil-attention" + name.removeprefix("learned")
        table = out / f"{teacher}-f{fold}" / "mil_windows.csv"
        if not table.exists():
            run_one(teacher, fold, args)
        overrides.append(f"data.window_table={table.resolve()}")
    log = out / f"{tag}.log"
    log.write_text("")
    run = out / tag
    resume = ["--resume"] if (run / "config.yaml").exists() else []
    cpu, wall = _birdclef(["train", "-c", str(args.config), "--data", str(args.data), "--out", str(run),
                           "--cache", str(out / _cache(name, fold)), "--no-progress", *resume,
                           "--set", *overrides], log)
    submission = out / f"{tag}.csv"
    _birdclef(["predict", "--run", str(run), "--soundscapes", str(args.data / "test_soundscapes"),
               "--out", str(submission), "--no-progress"], log)
    scored = out / f"{tag}.score.json"
    _birdclef(["evaluate", "--submission", str(submission), "--solution", str(args.data / "solution.csv"),
               "--taxonomy", str(args.data / "taxonomy.csv"), "--out", str(scored)], log)
    score = read_json(scored)
    result = {"strategy": name, "fold": fold, "auc": score["score"],
              "groups": {g["group"]: g["auc"] for g in score["groups"]},
              "train_cpu_s": cpu, "train_wall_s": wall, "overrides": overrides, "resumed": bool(resume)}
    write_json_atomic(result, record)
    return result


def _ms(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    """Markdown: mean ± sd over folds per strategy, and the paired difference to ``reference``."""
    ref = {r["fold"]: r["auc"] for r in results if r["strategy"] == "reference"}
    groups = sorted({g for r in results for g in r["groups"]})
    lines = ["| strategy | folds | test AUC | Δ vs reference | " + " | ".join(groups) + " | train CPU s |",
             "|---|---|---|---|" + "---|" * len(groups) + "---|"]
    for name in names:
        rows = [r for r in results if r["strategy"] == name]
        if not rows:
            continue
        delta = [r["auc"] - ref[r["fold"]] for r in rows if r["fold"] in ref]
        lines.append(f"| {name} | {len(rows)} | {_ms([r['auc'] for r in rows])} | "
                     f"{_ms(delta) if delta else '-'} | "
                     + " | ".join(_ms([r["groups"][g] for r in rows]) for g in groups)
                     + f" | {statistics.mean(r['train_cpu_s'] for r in rows):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a BirdCLEF-layout set with solution.csv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("-c", "--config", type=Path, default=REPO / "configs" / "lite0.yaml")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--set", nargs="*", default=[],
                        help="extra overrides for every run (a strategy's own settings, e.g. its epochs, win)")
    args = parser.parse_args(argv)
    if not (args.data / "solution.csv").exists():
        parser.error(f"{args.data}: no solution.csv to score the test soundscapes against")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for fold in args.folds:
        for name in args.strategies:
            print(f"{name} fold {fold} ...", flush=True)
            results.append(run_one(name, fold, args))
    print(table(results, args.strategies))
    summary = args.out / "summary.json"
    write_json_atomic({"data": str(args.data), "config": str(args.config), "base": BASE, "results": results},
                      summary)
    print(f"wrote {summary}")


if __name__ == "__main__":
    main()
