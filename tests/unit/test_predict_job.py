"""The predict batch job with a numpy stand-in predictor: bad inputs, sample alignment, lock, durable parts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import SR, noise, write_ogg

from birdclef.errors import BirdclefError, SubmissionError
from birdclef.infer import job
from birdclef.infer.base import row_count
from birdclef.infer.job import list_soundscapes, predict_to_csv
from birdclef.utils.io import exclusive_lock

CLASSES = ["aaa", "bbb", "ccc"]


class FakePredictor:
    """Row k of a file scores (k + 1) / (W + 1), (mean |x| of the file), 0.5: deterministic, model-free."""

    classes, sample_rate, blend = CLASSES, SR, "mean"

    def __init__(self):
        self.calls = 0

    def predict_file(self, wave: np.ndarray) -> np.ndarray:
        self.calls += 1
        rows = row_count(len(wave), SR)
        out = np.full((rows, 3), 0.5)
        out[:, 0] = (np.arange(rows) + 1) / (rows + 1)
        out[:, 1] = float(np.abs(wave).mean())
        return out

    def settings(self) -> dict:
        return {"backend": "fake"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for k, seconds in enumerate((15.0, 10.0, 20.0)):
        write_ogg(tmp_path / "sc" / f"F{k}.ogg", noise(seconds, seed=k))
    return tmp_path / "sc"


def sample_csv(path: Path, row_ids: list[str]) -> Path:
    pd.DataFrame({"row_id": row_ids, "ccc": 0.0, "aaa": 0.0, "bbb": 0.0}).to_csv(path, index=False)
    return path


def run(folder, out, predictor=None, **kwargs):
    return predict_to_csv(folder, predictor or FakePredictor(), out, progress=False, num_workers=0, **kwargs)


# ------------------------------------------------------------------ soundscape folders


def test_same_stem_in_one_folder_is_refused_naming_both(tmp_path: Path, folder: Path):
    sf.write(folder / "F1.wav", noise(5.0), SR)
    predictor = FakePredictor()
    with pytest.raises(BirdclefError, match=r"F1\.ogg and .*F1\.wav share the name 'F1'"):
        run(folder, tmp_path / "sub.csv", predictor)
    assert predictor.calls == 0 and not (tmp_path / "sub.csv").exists()


def test_same_stem_in_two_folders_is_refused(tmp_path: Path, folder: Path):
    other = write_ogg(tmp_path / "b" / "F0.ogg", noise(5.0))
    with pytest.raises(BirdclefError, match="share the name 'F0'"):
        list_soundscapes([folder / "F0.ogg", other])


def test_empty_folder_is_a_one_line_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BirdclefError, match="no soundscapes"):
        run(tmp_path / "empty", tmp_path / "sub.csv")


def test_folder_of_non_audio_files(tmp_path: Path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "notes.txt").write_text("hello")
    with pytest.raises(BirdclefError, match="no soundscapes"):
        run(tmp_path / "txt", tmp_path / "sub.csv")
    (tmp_path / "txt" / "fake.ogg").write_text("not audio")
    (tmp_path / "txt" / "fake2.wav").write_bytes(b"RIFF")
    with pytest.raises(BirdclefError, match="no soundscape could be decoded"):
        run(tmp_path / "txt", tmp_path / "sub.csv")
    skipped = pd.read_csv(tmp_path / "sub.skipped.csv")
    assert sorted(Path(f).name for f in skipped["file"]) == ["fake.ogg", "fake2.wav"]


def test_broken_file_without_sample_is_skipped_and_reported(tmp_path: Path, folder: Path):
    (folder / "F9.ogg").write_bytes(b"OggS" + bytes(100))
    summary = run(folder, tmp_path / "sub.csv")
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert summary.n_files == 3 and len(sub) == 3 + 2 + 4 and not sub["row_id"].str.startswith("F9").any()
    assert [Path(f).name for f, _ in summary.skipped] == ["F9.ogg"] and summary.skipped_path.is_file()


def test_out_that_is_a_folder_fails_before_any_prediction(tmp_path: Path, folder: Path):
    predictor = FakePredictor()
    with pytest.raises(BirdclefError, match="is a folder"):
        run(folder, tmp_path, predictor)
    assert predictor.calls == 0


# ------------------------------------------------------------------ sample_submission


def test_output_rows_are_exactly_the_samples_and_extra_windows_are_listed(tmp_path: Path, folder: Path):
    rows = ["F1_10", "F0_5", "F1_5"]
    summary = run(folder, tmp_path / "sub.csv", sample_submission=sample_csv(tmp_path / "s.csv", rows))
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert sub["row_id"].tolist() == rows and list(sub.columns) == ["row_id", "ccc", "aaa", "bbb"]
    assert sub["aaa"].tolist() == pytest.approx([2 / 3, 1 / 4, 1 / 3])  # no fallback: every row predicted
    extra = pd.read_csv(summary.extra_path)
    assert summary.n_extra_rows == 9 - 3 == len(extra)
    assert set(extra["soundscape"]) == {"F0", "F2"} and "F0_5" not in set(extra["row_id"])
    assert summary.n_fallback_rows == 0 and not summary.fallback_path.exists()


def test_sample_matching_no_file_is_an_error_before_predicting(tmp_path: Path, folder: Path):
    predictor = FakePredictor()
    with pytest.raises(SubmissionError, match="none of its 1 soundscape.*wrong soundscape folder or wrong sample"):
        run(folder, tmp_path / "sub.csv", predictor, sample_submission=sample_csv(tmp_path / "s.csv", ["ZZ_5", "ZZ_10"]))
    assert predictor.calls == 0 and not (tmp_path / "sub.csv").exists()


def test_short_file_and_absent_file_are_reported_per_soundscape(tmp_path: Path, folder: Path):
    rows = ["F1_5", "F1_10", "F1_15", "F1_20", "GONE_5", "F0_5"]  # F1 is 10 s: two rows too many
    summary = run(folder, tmp_path / "sub.csv", sample_submission=sample_csv(tmp_path / "s.csv", rows))
    sub = pd.read_csv(tmp_path / "sub.csv").set_index("row_id")
    assert sub.index.tolist() == rows and summary.n_fallback_rows == 3 and summary.n_fallback_files == 2
    report = pd.read_csv(summary.fallback_path).set_index("soundscape")
    assert report.loc["F1", ["sample_rows", "predicted_rows", "fallback_rows"]].tolist() == [4, 2, 2]
    assert "short or truncated" in report.loc["F1", "reason"]
    assert report.loc["GONE", "reason"] == "no such soundscape in the folder"
    assert sub.loc["F1_15", "aaa"] == sub.loc["GONE_5", "aaa"]  # both the fallback


def test_sample_whose_files_are_all_broken_is_an_error(tmp_path: Path, folder: Path):
    (folder / "BAD.ogg").write_bytes(b"OggS" + bytes(100))
    with pytest.raises(SubmissionError, match="not one of its 2 rows got a prediction"):
        run(folder, tmp_path / "sub.csv", sample_submission=sample_csv(tmp_path / "s.csv", ["BAD_5", "BAD_10"]))


@pytest.mark.parametrize(("content", "message"), [
    ("row_id,aaa\nF0_5,0\nF0_5,0\n", "1 duplicated row_id"),
    ("row_id,aaa\nF0_5,0\n,0\n", "empty row_id"),
    ("row_id,aaa\nF0_5,0\nnonsense,0\n", "malformed row_id 'nonsense'"),
    ("id,aaa\nF0_5,0\n", "no row_id column"),
    ("row_id,aaa\n", "needs rows and class columns"),
    ("row_id\nF0_5\n", "needs rows and class columns"),
    ("", "cannot read sample submission"),
    ("row_id,zzz\nF0_5,0\n", "do not score 1 class.*'zzz'"),
])
def test_malformed_sample_is_a_one_line_error(tmp_path: Path, folder: Path, content: str, message: str):
    (tmp_path / "s.csv").write_text(content)
    with pytest.raises(SubmissionError, match=message) as info:
        run(folder, tmp_path / "sub.csv", sample_submission=tmp_path / "s.csv")
    assert "\n" not in str(info.value) and not (tmp_path / "sub.csv").exists()


def test_missing_sample_file_is_named(tmp_path: Path, folder: Path):
    with pytest.raises(SubmissionError, match="nope.csv: sample submission not found"):
        run(folder, tmp_path / "sub.csv", sample_submission=tmp_path / "nope.csv")


# ------------------------------------------------------------------ lock and parts


def test_second_writer_of_one_output_fails_at_once(tmp_path: Path, folder: Path):
    out = tmp_path / "sub.csv"
    predictor = FakePredictor()
    with exclusive_lock(out, "birdclef predict"):  # what a running job holds
        with pytest.raises(BirdclefError, match="another birdclef predict is writing it"):
            run(folder, out, predictor)
    assert predictor.calls == 0 and not out.exists()
    run(folder, out, predictor)  # free again once the holder is done
    assert predictor.calls == 3 and out.is_file() and not (tmp_path / ".sub.csv.lock").exists()


def test_each_finished_file_is_its_own_part_named_by_content(tmp_path: Path, folder: Path, monkeypatch):
    out, real = tmp_path / "sub.csv", job.iter_predictions

    def dies_after(n):
        def fake(*args, **kwargs):
            for k, item in enumerate(real(*args, **kwargs)):
                if k == n:
                    raise KeyboardInterrupt
                yield item
        return fake

    parts = out.with_name(".sub.csv.parts")
    monkeypatch.setattr(job, "iter_predictions", dies_after(2))
    with pytest.raises(KeyboardInterrupt):
        run(folder, out)
    first = sorted(p.name for p in parts.glob("part-*.parquet"))
    assert len(first) == 2
    write_ogg(folder / "E.ogg", noise(5.0, seed=9))  # a file sorting first: a count-named part would collide
    os.utime(folder / "F0.ogg", ns=(1, 1))  # a changed file: its old part no longer counts
    monkeypatch.setattr(job, "iter_predictions", dies_after(2))
    with pytest.raises(KeyboardInterrupt):
        run(folder, out)
    second = sorted(p.name for p in parts.glob("part-*.parquet"))
    assert set(first) <= set(second) and len(second) == 4  # E and the changed F0 added, nothing replaced
    monkeypatch.setattr(job, "iter_predictions", real)
    predictor = FakePredictor()
    summary = run(folder, out, predictor)
    assert predictor.calls == 1 and summary.resumed_files == 3 and summary.n_files == 4  # only F2 is new
    assert pd.read_csv(out)["row_id"].str.rsplit("_", n=1).str[0].unique().tolist() == ["E", "F0", "F1", "F2"]
