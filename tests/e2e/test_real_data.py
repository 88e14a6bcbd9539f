"""End to end on the real xcbirds-dev-v1 recordings through the CLI (skipped when ../shared is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef import cli

pytestmark = pytest.mark.e2e

TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=64",
        "model.frontend.image_size=null", "train.epochs=1", "train.folds=[0]", "data.max_files=40", "data.n_folds=2",
        "train.batch_size=8", "train.num_workers=0"]


def test_check_prepare_train_predict_evaluate_resume(tmp_path: Path, shared_data: Path, capsys):
    assert cli.main(["check", str(shared_data)]) == 0
    assert "OK" in capsys.readouterr().out

    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(shared_data), "--out", str(run), "--device", "cpu", "--no-progress",
                     "--set", *TINY]) == 0
    assert {"config.yaml", "env.json", "folds.csv", "metrics.csv", "oof.parquet", "summary.json"} <= {
        p.name for p in run.iterdir()}
    assert (run / "fold0" / "best.pt").is_file() and len(pd.read_csv(run / "folds.csv")) == 40

    sub = tmp_path / "submission.csv"
    assert cli.main(["predict", "--run", str(run), "--soundscapes", str(shared_data / "test_soundscapes"),
                     "--sample-submission", str(shared_data / "sample_submission.csv"), "--out", str(sub),
                     "--device", "cpu", "--num-workers", "1", "--no-progress"]) == 0
    sample = pd.read_csv(shared_data / "sample_submission.csv")
    got = pd.read_csv(sub)
    assert list(got.columns) == list(sample.columns) and got["row_id"].tolist() == sample["row_id"].tolist()
    assert got.drop(columns="row_id").stack().between(0.0, 1.0).all()

    assert cli.main(["evaluate", "--submission", str(sub), "--solution", str(shared_data / "solution.csv"),
                     "--out", str(tmp_path / "eval.json")]) == 0
    score = json.loads((tmp_path / "eval.json").read_text())["score"]
    assert np.isfinite(score) and 0.0 <= score <= 1.0

    # Resuming a finished run with one more fold trains only that fold.
    assert cli.main(["train", "--data", str(shared_data), "--out", str(run), "--resume", "--device", "cpu",
                     "--no-progress", "--set", "train.folds=[0, 1]"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(summary["fold_scores"]) == ["0", "1"]
    folds = pd.read_csv(run / "folds.csv")
    assert len(pd.read_parquet(run / "oof.parquet")) == folds["fold"].isin([0, 1]).sum()

    report = tmp_path / "report"
    assert cli.main(["report", "--submission", str(sub), "--solution", str(shared_data / "solution.csv"), "--run",
                     str(run), "--soundscapes", str(shared_data / "test_soundscapes"), "--out", str(report)]) == 0
    assert (report / "index.html").is_file()
