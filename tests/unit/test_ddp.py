"""``birdclef train --devices 2`` on CPU: Lightning's ddp strategy (gloo) with two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from test_resume import HOLD, TINY, _gone

SETTINGS = ["--set", *TINY, "train.epochs=1"]


def _command(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--no-progress", "--device", "cpu", "--devices", "2",
            "--num-workers", "0", *SETTINGS]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def test_two_cpu_processes_train_into_one_run_folder(tiny_dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "birdclef", *_command(tiny_dataset, run)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stdout + done.stderr  # a second process really joined
    assert done.stdout.count("fold 0: best validation macro ROC-AUC") == 1  # rank 0 reports, once
    assert "optimistic" in done.stdout

    folds = pd.read_csv(run / "folds.csv")
    oof = pd.read_parquet(run / "oof.parquet")
    assert sorted(oof["filename"]) == sorted(folds.loc[folds["fold"] == 0, "filename"])  # the whole held-out fold
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [0] and metrics[["train_loss", "val_loss"]].notna().all().all()
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["fold_scores"]) == ["0"] and summary["n_clips"] == len(folds)
    assert {"best.pt", "last.ckpt", "done.json", "oof.parquet"} <= {p.name for p in (run / "fold0").iterdir()}


def test_kill_9_of_the_main_process_takes_the_other_rank_down(tiny_dataset: Path, tmp_path: Path):
    marker, script = tmp_path / "held", tmp_path / "hold.py"
    script.write_text(HOLD)
    proc = subprocess.Popen([sys.executable, str(script), *_command(tiny_dataset, tmp_path / "run")],
                            env=_env(HOLD_EPOCH="0", HOLD_BATCH="0", HOLD_MARKER=str(marker)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "training never started"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("LOCAL_RANK" in c.environ() and c.environ()["LOCAL_RANK"] == "1" for c in children)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not _gone(children, timeout=30.0), "the rank-1 process outlived kill -9 of rank 0"
