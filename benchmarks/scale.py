"""Competition-size data: time and peak memory of each verb on a dataset of BirdCLEF+ 2026's shape.

BirdCLEF+ 2026 had 35,549 training recordings, 10,658 train soundscapes, 234 classes and ~600 test soundscapes.
This script writes a dataset of that shape at a fraction of it (file counts, class counts, a long-tailed class
distribution, secondary labels, the CSV columns and names of the real one) with a few seconds of synthetic audio
per file (rendered once per pool entry with :mod:`birdclef.data.synth`'s call and background generators, then
copied: writing 47,000 files takes a minute, not hours), and measures, each as its own process:

    check      birdclef check DATA (metadata and every audio header)
    prepare    birdclef prepare DATA (decode every training clip into the cache)
    folds      the stratified fold split of train.csv (birdclef.data.folds.assign_folds)
    loader     one epoch of fold 0's training DataLoader (no model: what feeding the GPU costs)
    pseudo     birdclef pseudo over DATA/train_soundscapes (a tiny teacher run)
    predict    birdclef predict over DATA/test_soundscapes with the sample_submission (the same run)
    analyze    birdclef analyze DATA (every recording of the dataset, nested folders; the same run)

Time is wall seconds of the process; peak RSS is its ``ru_maxrss`` (``os.wait4``: the process and the children
it waited for). The teacher is trained once, on the smallest size, with a tiny random-init model
(``test_efficientnet``, 32 mel bands): the numbers measure the toolkit's bookkeeping and I/O at scale, which is
what could grow faster than linearly, not a real model's compute.

Usage (niced, in the background; small sizes first)::

    nice -n 10 python benchmarks/scale.py --root /tmp/scale --sizes 1/16 1/4 1

Writes ``benchmarks/results/scale.json`` (every measurement, appended per size) and ``scale.md`` (the table).
Real soundscapes are 60 s and real clips ~20-60 s; here they are 10 s and 3 s, so per-file compute is smaller
than the competition's while the file and row counts are the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

REAL = {"train_recordings": 35_549, "train_soundscapes": 10_658, "classes": 234, "test_soundscapes": 600}
"""BirdCLEF+ 2026's counts."""
CLIP_S, SOUNDSCAPE_S, SAMPLE_RATE, POOL = 3.0, 10.0, 32_000, 24
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.image_size=null", "train.batch_size=32", "train.num_workers=0", "train.folds=[0]",
        "train.epochs=1"]
CLASS_NAMES = [("Aves", 0.72), ("Insecta", 0.12), ("Amphibia", 0.1), ("Mammalia", 0.04), ("Reptilia", 0.02)]
HERE = Path(__file__).resolve().parent
BIRDCLEF = [sys.executable, "-m", "birdclef"]


# ------------------------------------------------------------------ the dataset


def _labels(rng: np.random.Generator) -> pd.DataFrame:
    """234 classes: eBird-style six-letter codes for birds, iNat numeric ids for the rest (as the real one)."""
    groups = rng.choice([g for g, _ in CLASS_NAMES], size=REAL["classes"], p=[p for _, p in CLASS_NAMES])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    rows, seen = [], set()
    for j, group in enumerate(groups):
        label = "".join(rng.choice(letters, 6)) if group == "Aves" else str(int(rng.integers(10_000, 9_999_999)))
        while label in seen:
            label += "1"
        seen.add(label)
        rows.append((label, int(rng.integers(1, 9_999_999)), f"Genus{j} species{j}", f"Common {group} {j}", group))
    frame = pd.DataFrame(rows, columns=["primary_label", "inat_taxon_id", "scientific_name", "common_name",
                                        "class_name"])
    return frame.sort_values("primary_label", ignore_index=True)


def _class_counts(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed clips per class summing to `n` (Zipf-like, as BirdCLEF's: a few hundred down to one)."""
    weights = 1.0 / (np.arange(n_classes) + 4.0) ** 1.1
    counts = np.maximum(1, np.floor(weights / weights.sum() * n)).astype(int)
    counts[0] += n - counts.sum()
    return rng.permutation(counts)


def _pool(kind: str, seconds: float, seed: int) -> list[bytes]:
    """`POOL` OGG files of synthetic audio (background + a bout of a synthetic call), as bytes."""
    import tempfile

    from birdclef.audio.io import write_audio
    from birdclef.data.synth import design_species, make_background, make_bout

    specs, out = design_species(8, seed, SAMPLE_RATE), []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(POOL):
            rng = np.random.default_rng([seed, k, len(kind)])
            wave = make_background(seconds, SAMPLE_RATE, rng)
            bout = make_bout(specs[k % len(specs)], min(2.0, seconds), SAMPLE_RATE, rng)
            start = int(rng.integers(0, len(wave) - len(bout)))
            wave[start: start + len(bout)] += 0.3 * bout / max(float(np.abs(bout).max()), 1e-6)
            path = Path(tmp) / f"{k}.ogg"
            write_audio(path, (0.9 * wave / max(float(np.abs(wave).max()), 1e-6)).astype(np.float32), SAMPLE_RATE)
            out.append(path.read_bytes())
    return out


def make_dataset(root: Path, fraction: Fraction, seed: int = 0) -> dict:
    """The dataset of the module docstring at `fraction` of the real counts (classes stay 234)."""
    if (root / "done.json").is_file():
        return json.loads((root / "done.json").read_text())
    started, rng = time.perf_counter(), np.random.default_rng(seed)
    n_train, n_sound, n_test = (max(REAL["classes"], round(REAL["train_recordings"] * fraction)),
                                max(8, round(REAL["train_soundscapes"] * fraction)),
                                max(4, round(REAL["test_soundscapes"] * fraction)))
    taxonomy = _labels(np.random.default_rng(seed))
    labels = taxonomy["primary_label"].to_numpy()
    clips, scapes = _pool("clip", CLIP_S, seed), _pool("soundscape", SOUNDSCAPE_S, seed)
    rows = []
    ids = rng.choice(np.arange(100_000, 10_000_000), size=n_train, replace=False)
    for j, count in enumerate(_class_counts(n_train, len(labels), rng)):
        for _ in range(count):
            k = len(rows)
            collection = rng.choice(["XC", "iNat", "CSA"], p=[0.85, 0.13, 0.02])
            n_secondary = rng.choice([0, 1, 2, 3], p=[0.82, 0.12, 0.04, 0.02])
            secondary = list(rng.choice(labels[labels != labels[j]], size=n_secondary, replace=False))
            rows.append({"primary_label": labels[j], "secondary_labels": str([str(s) for s in secondary]),
                         "type": str(["call"] if rng.random() < 0.6 else ["song"]),
                         "filename": f"{labels[j]}/{collection}{ids[k]}.ogg", "collection": collection,
                         "rating": float(rng.choice([0.0, 3.0, 3.5, 4.0, 4.5, 5.0])),
                         "url": f"https://xeno-canto.org/{ids[k]}", "latitude": round(float(rng.uniform(-30, 10)), 4),
                         "longitude": round(float(rng.uniform(-75, -35)), 4),
                         "scientific_name": taxonomy["scientific_name"][j], "common_name": taxonomy["common_name"][j],
                         "author": f"Recordist {int(rng.integers(1, 3000))}", "license": "cc-by-nc-sa 4.0"})
    train = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(train["filename"]):
        (root / "train_audio" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "train_audio" / name).write_bytes(clips[k % POOL])
    (root / "train_soundscapes").mkdir(exist_ok=True)
    start = pd.Timestamp("2025-04-01 00:00:00")
    for k in range(n_sound):  # site_date_time names, as the real ones (one file per site every 10 minutes)
        when = (start + pd.Timedelta(minutes=10 * (k // 50))).strftime("%Y%m%d_%H%M%S")
        (root / "train_soundscapes" / f"H{k % 50:02d}_{when}.ogg").write_bytes(scapes[k % POOL])
    (root / "test_soundscapes").mkdir(exist_ok=True)
    stems = [f"BC2026_Test_{k:04d}_S{k % 20:02d}_20250227_0{k % 10}0000" for k in range(n_test)]
    for k, stem in enumerate(stems):
        (root / "test_soundscapes" / f"{stem}.ogg").write_bytes(scapes[(k + 7) % POOL])
    row_ids = [f"{stem}_{end}" for stem in stems for end in range(5, int(SOUNDSCAPE_S) + 1, 5)]
    taxonomy.to_csv(root / "taxonomy.csv", index=False)
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame(0.0, index=pd.Index(row_ids, name="row_id"), columns=labels).reset_index().to_csv(
        root / "sample_submission.csv", index=False)
    info = {"fraction": str(fraction), "train_recordings": n_train,
            "train_soundscapes": len(list((root / "train_soundscapes").iterdir())), "test_soundscapes": n_test, "classes": len(labels), "rows_with_secondary": int(
                (train["secondary_labels"] != "[]").sum()), "train_csv_mb": round(
                (root / "train.csv").stat().st_size / 2**20, 2), "sample_submission_rows": len(row_ids),
            "generate_s": round(time.perf_counter() - started, 1)}
    (root / "done.json").write_text(json.dumps(info))
    return info


# ------------------------------------------------------------------ measuring


def measure(argv: list[str], log: Path, timeout_s: float) -> dict:
    """Run `argv` as a process: wall seconds, peak RSS (MiB) and exit code; its output goes to `log`."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    return {"wall_s": round(time.perf_counter() - started, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "rc": os.waitstatus_to_exitcode(status)}


FOLDS = """
import pandas as pd, sys
from birdclef.data.folds import assign_folds
folds = assign_folds(pd.read_csv(sys.argv[1], usecols=['primary_label'], dtype=str)['primary_label'], 5, 42)
print(len(folds))
"""
LOADER = """
import sys
from birdclef.config import load_config
from birdclef.data.cache import WaveCache
from birdclef.data.examples import build_examples
from birdclef.data.metadata import DatasetLayout, load_classes
from birdclef.train.fold_data import FoldData
config = load_config(None, sys.argv[3:])
classes = load_classes(DatasetLayout.from_root(sys.argv[1]))
examples = build_examples(WaveCache(sys.argv[2]), classes, config)
n = sum(len(batch[0]) for batch in FoldData(config, examples, 0, None).train_dataloader())
print(n, 'examples')
"""


def run_size(label: str, root: Path, teacher: Path, timeout_s: float, verbs: list[str] | None = None,
             shard: int = 1) -> dict:
    data, work = root / "data", root / "work"
    info = make_dataset(data, Fraction(label))
    work.mkdir(parents=True, exist_ok=True)
    outputs = {"prepare": ["cache"], "pseudo": ["pseudo.parquet", "pseudo.parquet.parts", "pseudo.skipped.csv"],
               "predict": ["sub.csv", ".sub.csv.parts"], "analyze": ["analyze"]}
    steps = {
        "check": [*BIRDCLEF, "check", str(data), "--num-workers", "2"],
        "prepare": [*BIRDCLEF, "prepare", str(data), "--out", str(work / "cache"), "--num-workers", "2"],
        "folds": [sys.executable, "-c", FOLDS, str(data / "train.csv")],
        "loader": [sys.executable, "-c", LOADER, str(data), str(work / "cache"), "train.num_workers=0",
                   "train.batch_size=32", "train.background_prob=0"],
        "pseudo": [*BIRDCLEF, "pseudo", "--teacher", str(teacher), "--soundscapes", str(data / "train_soundscapes"),
                   "--out", str(work / "pseudo.parquet"), "--device", "cpu", "--no-progress"],
        "predict": [*BIRDCLEF, "predict", "--run", str(teacher), "--soundscapes", str(data / "test_soundscapes"),
                    "--sample-submission", str(data / "sample_submission.csv"), "--out", str(work / "sub.csv"),
                    "--device", "cpu", "--num-workers", "1", "--no-progress"],
        "analyze": [*BIRDCLEF, "analyze", str(data), "--run", str(teacher), "--out", str(work / "analyze"),
                    "--device", "cpu", "--no-progress", "--shard", f"0/{shard}"],
    }
    steps = {name: argv for name, argv in steps.items() if verbs is None or name in verbs}
    if shard > 1 and "analyze" in steps:  # a part of the lot: its own row, beside a whole run's
        steps[f"analyze (shard 0/{shard})"] = steps.pop("analyze")
    result = {"size": label, "data": info, "verbs": {}}
    for name, argv in steps.items():
        for stale in outputs.get(name.split()[0], []):  # each verb starts from nothing (a resume would measure less)
            path = work / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        m = measure(argv, work / f"{name.replace('/', '-').replace(' ', '_')}.log", timeout_s)
        result["verbs"][name] = m
        print(f"{label:>5} {name:8} {m['wall_s']:9.1f} s {m['peak_rss_mib']:8.0f} MiB rc={m['rc']}", flush=True)
    return result


def train_teacher(root: Path, data: Path, timeout_s: float) -> Path:
    run = root / "teacher"
    if (run / "fold0" / "done.json").is_file():
        return run
    shutil.rmtree(run, ignore_errors=True)
    m = measure([*BIRDCLEF, "train", "--data", str(data), "--out", str(run), "--device", "cpu", "--no-progress",
                 "--set", *TINY, "data.max_files=600", "data.n_folds=2"], root / "teacher.log", timeout_s)
    if m["rc"] != 0:
        raise SystemExit(f"training the teacher failed: see {root / 'teacher.log'}")
    return run


def table(results: list[dict]) -> str:
    verbs = list(dict.fromkeys(v for r in results for v in r["verbs"]))
    head = "| verb | " + " | ".join(f"{r['size']}: s | {r['size']}: MiB" for r in results) + " |"
    rule = "|---|" + "---:|---:|" * len(results)
    lines = [head, rule]
    for verb in verbs:
        cells = " | ".join("- | -" if verb not in r["verbs"] else
                           f"{r['verbs'][verb]['wall_s']:.1f} | {r['verbs'][verb]['peak_rss_mib']:.0f}"
                           + ("" if r["verbs"][verb]["rc"] == 0 else f" (rc {r['verbs'][verb]['rc']})")
                           for r in results)
        lines.append(f"| {verb} | {cells} |")
    files = " | ".join(f"{r['data']['train_recordings']:,} + {r['data']['train_soundscapes']:,} + "
                       f"{r['data']['test_soundscapes']:,} files | " for r in results)
    return "\n".join(lines + [f"| (clips + train soundscapes + test soundscapes) | {files}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/birdclef-scale"), help="datasets and outputs")
    parser.add_argument("--sizes", nargs="+", default=["1/16", "1/4", "1"], help="fractions of the real counts")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per verb")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    parser.add_argument("--verbs", nargs="+", default=None, help="measure only these (default: all)")
    parser.add_argument("--analyze-shard", type=int, default=1,
                        help="analyze only shard 0/N of the lot (discovery, manifest and journals still cover all)")
    args = parser.parse_args()
    smallest = min(args.sizes, key=Fraction)
    make_dataset(args.root / smallest.replace("/", "_") / "data", Fraction(smallest))
    teacher = train_teacher(args.root, args.root / smallest.replace("/", "_") / "data", args.timeout_s)
    done = json.loads(args.out.read_text()) if args.out.is_file() else []
    for label in sorted(args.sizes, key=Fraction):
        result = run_size(label, args.root / label.replace("/", "_"), teacher, args.timeout_s, args.verbs,
                          args.analyze_shard)
        old = next((r for r in done if r["size"] == label), None)
        if old is not None:  # a partial re-run keeps the verbs it did not measure
            result["verbs"] = {**old["verbs"], **result["verbs"]}
        done = [r for r in done if r["size"] != label] + [result]
        done.sort(key=lambda r: Fraction(r["size"]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(done, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table(done) + "\n")
    print(table(done))


if __name__ == "__main__":
    main()
