"""Soundscape prediction: row ids, fold soft-voting, blends, sample alignment, resume, broken files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SR, chirp, noise, write_ogg

from birdclef.config import InferConfig, load_config
from birdclef.infer import job
from birdclef.infer.job import predict_to_csv
from birdclef.infer.base import context_windows
from birdclef.infer.predict import TorchPredictor, predict_soundscapes
from birdclef.models import create_model, save_checkpoint

CLASSES = ["aaa", "bbb", "ccc"]
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null"]
RAW = InferConfig(smoothing=False, power_adjust=False)


def make_run(root: Path, folds: int, seed: int, classes=CLASSES, extra=()) -> Path:
    config = load_config(None, TINY + list(extra))
    for fold in range(folds):
        torch.manual_seed(seed * 100 + fold)
        model = create_model(config.model, len(classes))
        save_checkpoint(root / f"fold{fold}" / "best.pt", model, config, list(classes), epoch=0, score=0.5)
        (root / f"fold{fold}" / "done.json").write_text(json.dumps({"fold": fold}))
    return root


@pytest.fixture
def soundscapes(tmp_path: Path) -> Path:
    folder = tmp_path / "test_soundscapes"
    write_ogg(folder / "S_A_1.ogg", noise(15.0, seed=1) + 0.5 * chirp(15.0, 2_000, 4_000, noise=0.0))
    write_ogg(folder / "S_B.ogg", noise(12.3, seed=2))
    return folder


def run_job(run: Path, soundscapes: Path, out: Path, **kwargs):
    """The batch job with a torch predictor, post-processing off, quietly."""
    return predict_to_csv(soundscapes, TorchPredictor([run], config=RAW, device="cpu"), out, progress=False, **kwargs)


def direct_probs(run: Path, wave: np.ndarray) -> np.ndarray:
    """Each fold's sigmoid on the 5 s windows, averaged: the soft vote computed by hand."""
    from birdclef.models import load_checkpoint

    n = -(-len(wave) // (5 * SR))
    batch = torch.from_numpy(np.pad(wave, (0, n * 5 * SR - len(wave))).reshape(n, 5 * SR))
    probs = [load_checkpoint(p).model.predict_proba(batch).numpy() for p in sorted(run.glob("fold*/best.pt"))]
    return np.mean(probs, axis=0)


def test_row_ids_for_whole_and_odd_length_files(tmp_path: Path, soundscapes: Path):
    run = make_run(tmp_path / "run", 1, seed=0)
    out = predict_soundscapes(sorted(soundscapes.glob("*.ogg")), [run], config=RAW, device="cpu")
    assert out.index.tolist() == ["S_A_1_5", "S_A_1_10", "S_A_1_15", "S_B_5", "S_B_10", "S_B_15"]
    assert list(out.columns) == CLASSES and out.to_numpy().min() >= 0 and out.to_numpy().max() <= 1


def test_folds_are_soft_voted(tmp_path: Path, soundscapes: Path):
    from birdclef.audio.io import load_audio

    run = make_run(tmp_path / "run", 3, seed=1)
    out = predict_soundscapes([soundscapes / "S_B.ogg"], [run], config=RAW, device="cpu")
    expected = direct_probs(run, load_audio(soundscapes / "S_B.ogg"))
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_weighted_blend_of_runs(tmp_path: Path, soundscapes: Path):
    a, b = make_run(tmp_path / "a", 1, seed=2), make_run(tmp_path / "b", 2, seed=3, classes=CLASSES[::-1])
    files = [soundscapes / "S_A_1.ogg"]
    pa = predict_soundscapes(files, [a], config=RAW, device="cpu")
    pb = predict_soundscapes(files, [b], config=RAW, device="cpu")[CLASSES]  # b lists classes reversed
    blended = predict_soundscapes(files, [a, b], weights=[3, 1], config=RAW, device="cpu")
    np.testing.assert_allclose(blended.to_numpy(), 0.75 * pa.to_numpy() + 0.25 * pb.to_numpy(), rtol=1e-5, atol=1e-6)


def test_postprocessing_is_applied_per_file(tmp_path: Path, soundscapes: Path):
    from birdclef.infer.postprocess import smooth

    run = make_run(tmp_path / "run", 1, seed=4)
    files = sorted(soundscapes.glob("*.ogg"))
    raw = predict_soundscapes(files, [run], config=RAW, device="cpu")
    smoothed = predict_soundscapes(files, [run], config=InferConfig(power_adjust=False), device="cpu")
    for stem in ("S_A_1", "S_B"):
        rows = [r for r in raw.index if r.rsplit("_", 1)[0] == stem]
        np.testing.assert_allclose(smoothed.loc[rows].to_numpy(), smooth(raw.loc[rows].to_numpy()), rtol=1e-5)


def test_context_windows_are_centred():
    wave = np.arange(3 * 5 * 10, dtype=np.float32) + 1  # 3 rows of 5 s at 10 Hz
    ctx = context_windows(wave, 10, 3, window_s=10.0)  # (3, 100): 2.5 s of context either side
    assert ctx.shape == (3, 100)
    assert (ctx[0, :25] == 0).all() and ctx[0, 25] == 1.0  # first row starts 2.5 s into its input
    assert ctx[1, 0] == wave[25] and ctx[1, 25] == wave[50]
    assert (ctx[2, 75:] == 0).all()
    same = context_windows(wave[:140], 10, 3, window_s=5.0)  # 5 s models see exactly their row
    assert same[2, -10:].tolist() == [0.0] * 10 and same[0].tolist() == wave[:50].tolist()


def test_output_follows_a_shuffled_sample_submission(tmp_path: Path, soundscapes: Path):
    run = make_run(tmp_path / "run", 1, seed=5)
    rows = ["S_B_10", "S_A_1_15", "S_A_1_5", "S_B_5", "S_A_1_10", "S_B_15"]
    sample = pd.DataFrame({"row_id": rows, "ccc": 0.0, "aaa": 0.0, "bbb": 0.0})
    sample.to_csv(tmp_path / "sample.csv", index=False)
    summary = run_job(run, soundscapes, tmp_path / "sub.csv", sample_submission=tmp_path / "sample.csv")
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert sub["row_id"].tolist() == rows and list(sub.columns) == ["row_id", "ccc", "aaa", "bbb"]
    direct = predict_soundscapes(sorted(soundscapes.glob("*.ogg")), [run], config=RAW, device="cpu")
    np.testing.assert_allclose(sub.set_index("row_id").to_numpy(), direct.loc[rows, ["ccc", "aaa", "bbb"]].to_numpy(),
                               rtol=1e-5)
    assert summary.n_fallback_rows == 0 and not summary.skipped


def test_missing_class_in_sample_is_an_error(tmp_path: Path, soundscapes: Path):
    run = make_run(tmp_path / "run", 1, seed=6)
    pd.DataFrame({"row_id": ["S_B_5"], "aaa": [0], "zzz": [0]}).to_csv(tmp_path / "sample.csv", index=False)
    with pytest.raises(Exception, match="zzz"):
        run_job(run, soundscapes, tmp_path / "sub.csv", sample_submission=tmp_path / "sample.csv")
    assert not (tmp_path / "sub.csv").exists()


def test_corrupt_soundscape_is_skipped_with_fallback_rows(tmp_path: Path, soundscapes: Path):
    run = make_run(tmp_path / "run", 1, seed=7)
    (soundscapes / "S_C.ogg").write_bytes(b"OggS" + bytes(200))
    sample = pd.DataFrame({"row_id": ["S_C_5", "S_B_5", "S_B_10", "S_B_15"], **{c: 0.0 for c in CLASSES}})
    sample.to_csv(tmp_path / "sample.csv", index=False)
    summary = run_job(run, soundscapes, tmp_path / "sub.csv", sample_submission=tmp_path / "sample.csv")
    sub = pd.read_csv(tmp_path / "sub.csv").set_index("row_id")
    skipped = pd.read_csv(summary.skipped_path)
    assert skipped["file"].str.endswith("S_C.ogg").tolist() == [True] and "decode" in skipped["reason"][0]
    assert summary.n_fallback_rows == 1 and summary.n_files == 2
    direct = predict_soundscapes(sorted(soundscapes.glob("S_[AB]*.ogg")), [run], config=RAW, device="cpu")
    np.testing.assert_allclose(sub.loc["S_C_5"].to_numpy(), direct.mean().to_numpy(), rtol=1e-5)
    assert sub.index.tolist() == sample["row_id"].tolist()  # exactly the sample's rows: S_A_1 is left out
    extra = pd.read_csv(summary.extra_path)
    assert summary.n_extra_rows == 3 and extra["row_id"].tolist() == ["S_A_1_5", "S_A_1_10", "S_A_1_15"]
    fallback = pd.read_csv(summary.fallback_path)
    assert fallback[["soundscape", "sample_rows", "predicted_rows", "fallback_rows"]].values.tolist() == [["S_C", 1, 0, 1]]
    assert "could not be decoded" in fallback["reason"][0]


def test_interrupted_job_resumes_from_partial_results(tmp_path: Path, soundscapes: Path, monkeypatch):
    run = make_run(tmp_path / "run", 1, seed=8)
    out = tmp_path / "sub.csv"
    real = job.iter_predictions

    def dies_after_first_file(*args, **kwargs):
        for k, item in enumerate(real(*args, **kwargs)):
            if k == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(job, "iter_predictions", dies_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        run_job(run, soundscapes, out)
    assert not out.exists() and len(list(out.with_name(".sub.csv.parts").glob("part-*.parquet"))) == 1
    assert not out.with_name(".sub.csv.lock").exists()  # the lock goes with the job
    monkeypatch.setattr(job, "iter_predictions", real)
    summary = run_job(run, soundscapes, out)
    assert summary.resumed_files == 1 and summary.n_files == 2 and summary.n_rows == 6
    fresh = run_job(run, soundscapes, tmp_path / "fresh.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(tmp_path / "fresh.csv"))
    assert fresh.resumed_files == 0 and not out.with_name(".sub.csv.parts").exists()


def test_resume_with_other_settings_is_refused(tmp_path: Path, soundscapes: Path, monkeypatch):
    run = make_run(tmp_path / "run", 1, seed=9)
    parts = tmp_path / ".sub.csv.parts"
    parts.mkdir()
    (parts / "meta.json").write_text(json.dumps({"runs": ["elsewhere"], "weights": None, "infer": {}}))
    with pytest.raises(Exception, match="other runs or settings"):
        run_job(run, soundscapes, tmp_path / "sub.csv")


def test_run_without_finished_fold_is_a_clear_error(tmp_path: Path, soundscapes: Path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(Exception, match="no finished fold"):
        predict_soundscapes([soundscapes / "S_B.ogg"], [tmp_path / "empty_run"], device="cpu")
