"""Dataset checks (birdclef.data.check): a clean tiny dataset, then one injected fault per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import SHARED_DATA, SR, chirp, noise, write_ogg

from birdclef.data.check import CheckReport, Problem, check_dataset

CLASSES = ["amerob", "bkcchi", "norcar"]


def _train_rows() -> list[dict]:
    return [
        {"primary_label": "amerob", "secondary_labels": "['bkcchi']", "filename": "amerob/XC1.ogg", "rating": 4.0},
        {"primary_label": "amerob", "secondary_labels": "[]", "filename": "amerob/XC2.ogg", "rating": 5.0},
        {"primary_label": "bkcchi", "secondary_labels": "['']", "filename": "bkcchi/XC3.ogg", "rating": 3.5},
        {"primary_label": "norcar", "secondary_labels": "", "filename": "norcar/XC4.ogg", "rating": 0.0},
    ]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A clean BirdCLEF-layout folder: 4 one-second clips, 1 train and 1 test soundscape of 10 s."""
    root = tmp_path / "data"
    rows = _train_rows()
    for i, row in enumerate(rows):
        write_ogg(root / "train_audio" / row["filename"], chirp(1.0, 1_000 + 500 * i, 4_000, seed=i))
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"primary_label": CLASSES, "class_name": "Aves"}).to_csv(root / "taxonomy.csv", index=False)
    write_ogg(root / "train_soundscapes" / "SC_a.ogg", noise(10.0, seed=7))
    write_ogg(root / "test_soundscapes" / "SC_b.ogg", noise(10.0, seed=8))
    submission = pd.DataFrame({"row_id": ["SC_b_5", "SC_b_10"], **{c: 0.0 for c in CLASSES}})
    submission.to_csv(root / "sample_submission.csv", index=False)
    return root


def _check(path: Path, **kwargs: object) -> CheckReport:
    return check_dataset(path, progress=False, **kwargs)


def _problem(report: CheckReport, kind: str) -> Problem:
    problem = report.problem(kind)
    assert problem is not None, f"no {kind} problem in:\n" + "\n".join(report.lines())
    return problem


def _edit_train(root: Path, **changes: object) -> None:
    """Apply {column_row: value} edits such as secondary_labels_0="['a', " to train.csv."""
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    for key, value in changes.items():
        column, row = key.rsplit("_", 1)
        train.loc[int(row), column] = value
    train.to_csv(root / "train.csv", index=False)


def test_clean_dataset_is_ok(dataset: Path) -> None:
    report = _check(dataset)
    assert report.ok and report.problems == [], report.lines()
    assert (report.n_rows, report.n_classes) == (4, 3)
    assert len(report.lines()) == 1 and report.lines()[0].startswith("OK")


def test_missing_audio(dataset: Path) -> None:
    (dataset / "train_audio" / "bkcchi" / "XC3.ogg").unlink()
    report = _check(dataset)
    problem = _problem(report, "missing_audio")
    assert not report.ok and problem.severity == "error" and problem.count == 1
    assert "bkcchi/XC3.ogg" in problem.examples[0]


def test_unknown_primary_and_secondary_labels(dataset: Path) -> None:
    _edit_train(dataset, primary_label_3="zzz", secondary_labels_1="['amerob', 'yyy']")
    report = _check(dataset, check_audio=False)
    primary = _problem(report, "unknown_primary_label")
    assert (primary.severity, primary.count) == ("error", 1)
    assert "'zzz'" in primary.examples[0] and "norcar/XC4.ogg" in primary.examples[0]
    secondary = _problem(report, "unknown_secondary_label")
    assert (secondary.severity, secondary.count) == ("warning", 1)
    assert "yyy" in secondary.examples[0] and "amerob/XC2.ogg" in secondary.examples[0]


def test_labels_checked_against_submission_without_taxonomy(dataset: Path) -> None:
    (dataset / "taxonomy.csv").unlink()
    _edit_train(dataset, primary_label_0="zzz")
    report = _check(dataset, check_audio=False)
    assert _problem(report, "missing_file").examples == [f"taxonomy.csv not in {dataset}"]
    assert "amerob/XC1.ogg" in _problem(report, "unknown_primary_label").examples[0]


def test_duplicate_rows_and_empty_primary(dataset: Path) -> None:
    rows = _train_rows()
    rows += [rows[0], rows[0], {**rows[1], "primary_label": ""}]
    pd.DataFrame(rows).to_csv(dataset / "train.csv", index=False)
    report = _check(dataset, check_audio=False)
    duplicates = _problem(report, "duplicate_filename")
    assert duplicates.count == 3 and "amerob/XC1.ogg on rows 2, 6, 7" in duplicates.examples
    assert "amerob/XC2.ogg on rows 3, 8" in duplicates.examples
    blank = _problem(report, "empty_primary_label")
    assert blank.examples == ["row 8 (amerob/XC2.ogg): column 'primary_label' is blank"]


def test_malformed_secondary_labels(dataset: Path) -> None:
    _edit_train(dataset, secondary_labels_2="['a', ")
    problem = _problem(_check(dataset, check_audio=False), "malformed_secondary_labels")
    assert (problem.severity, problem.count) == ("error", 1)
    assert problem.examples[0] == "row 4 (bkcchi/XC3.ogg), column 'secondary_labels': \"['a', \""


def test_corrupt_and_empty_audio(dataset: Path) -> None:
    (dataset / "train_audio" / "amerob" / "XC2.ogg").write_bytes(b"OggS" + b"\x00garbage" * 50)
    (dataset / "train_audio" / "norcar" / "XC4.ogg").write_bytes(b"")
    (dataset / "test_soundscapes" / "SC_b.ogg").write_bytes(b"not audio at all")
    report = _check(dataset)
    clips = _problem(report, "unreadable_audio")
    assert clips.count == 2
    assert clips.examples[0].startswith("train_audio/amerob/XC2.ogg: cannot decode")
    assert clips.examples[1].startswith("train_audio/norcar/XC4.ogg: empty file")
    assert _problem(report, "unreadable_soundscape").examples[0].startswith("test_soundscapes/SC_b.ogg")
    assert report.problem("missing_audio") is None


def test_zero_frame_wav_is_unreadable(dataset: Path) -> None:
    sf.write(dataset / "train_audio" / "amerob" / "XC1.ogg", np.zeros(0, dtype=np.float32), SR, format="WAV")
    problem = _problem(_check(dataset), "unreadable_audio")
    assert problem.examples == ["train_audio/amerob/XC1.ogg: holds no audio samples (zero length)"]


def test_unexpected_sample_rate_is_a_warning(dataset: Path) -> None:
    write_ogg(dataset / "train_audio" / "amerob" / "XC1.ogg", chirp(1.0, 1_000, 4_000, sr=44_100), sr=44_100)
    report = _check(dataset, num_workers=3)
    problem = _problem(report, "unexpected_sample_rate")
    assert report.ok and (problem.severity, problem.count) == ("warning", 1)
    assert problem.examples == ["44100 Hz: 1 file(s), e.g. train_audio/amerob/XC1.ogg"]


def test_bad_and_duplicate_row_ids(dataset: Path) -> None:
    submission = pd.DataFrame({"row_id": ["SC_b_5", "SC_b_5", "SC_b", "SC_b_7.5"], **{c: 0.0 for c in CLASSES}})
    submission.to_csv(dataset / "sample_submission.csv", index=False)
    report = _check(dataset, check_audio=False)
    bad = _problem(report, "bad_row_id")
    assert bad.count == 2 and bad.examples == ["sample_submission.csv: 'SC_b'", "sample_submission.csv: 'SC_b_7.5'"]
    assert _problem(report, "duplicate_row_id").count == 1


def test_taxonomy_and_submission_disagree(dataset: Path) -> None:
    pd.DataFrame({"primary_label": CLASSES + ["extra"]}).to_csv(dataset / "taxonomy.csv", index=False)
    submission = pd.DataFrame({"row_id": ["SC_b_5"], "amerob": 0.0, "bkcchi": 0.0, "other": 0.0})
    submission.to_csv(dataset / "sample_submission.csv", index=False)
    report = _check(dataset, check_audio=False)
    assert _problem(report, "taxonomy_not_in_submission").examples == ["extra", "norcar"]
    assert _problem(report, "submission_not_in_taxonomy").examples == ["other"]


def test_missing_files_columns_and_soundscapes(dataset: Path) -> None:
    for name in ["train_soundscapes/SC_a.ogg", "test_soundscapes/SC_b.ogg", "sample_submission.csv"]:
        (dataset / name).unlink()
    pd.DataFrame({"primary_label": ["amerob"], "path": ["amerob/XC1.ogg"]}).to_csv(dataset / "train.csv", index=False)
    report = _check(dataset)
    assert _problem(report, "missing_file").examples == [f"sample_submission.csv not in {dataset}"]
    missing = _problem(report, "missing_columns")
    assert missing.examples == ["train.csv lacks 'filename' (its columns: ['primary_label', 'path'])"]
    assert _problem(report, "no_train_soundscapes").severity == "warning"
    assert _problem(report, "no_test_soundscapes").severity == "info"


def test_lines_are_one_per_kind_with_at_most_three_examples(dataset: Path) -> None:
    rows = [{**_train_rows()[0], "filename": f"amerob/missing{i}.ogg"} for i in range(5)]
    pd.DataFrame(_train_rows() + rows).to_csv(dataset / "train.csv", index=False)
    report = _check(dataset)
    lines = report.lines()
    assert len(lines) == len(report.problems) + 1 and len(report.problems) == 1
    assert lines[0].startswith("ERROR   missing_audio: 5 (e.g. ") and lines[0].count("missing") == 4
    assert lines[-1].startswith("FAILED") and "1 error(s)" in lines[-1]


def test_lone_csv_is_a_metadata_only_check(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    pd.DataFrame(_train_rows()).to_csv(path, index=False)
    report = _check(path)
    assert report.ok and report.n_rows == 4 and report.n_classes == 3
    assert {p.kind for p in report.problems} == {"audio_not_checked", "labels_not_checked"}


def test_missing_path_raises(tmp_path: Path) -> None:
    from birdclef.errors import DatasetError

    with pytest.raises(DatasetError, match="not found"):
        check_dataset(tmp_path / "nowhere")


def test_real_xcbirds_dataset_is_ok(shared_data: Path) -> None:
    report = _check(shared_data, num_workers=4)
    assert report.ok, report.lines()
    assert report.n_rows == 200 and report.n_classes == 26
    assert not [p for p in report.problems if p.severity == "error"]


def test_real_birdclef2025_labels_csv() -> None:
    path = SHARED_DATA / "birdclef2025-metadata" / "train_labels_partial.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    report = _check(path)
    assert report.n_rows == 28_542 and report.ok, report.lines()
    assert _problem(report, "audio_not_checked").severity == "info"
