"""birdclef summarize: detections per class per hour/day from AudioMoth names, the unknown bucket, the PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from birdclef import cli
from birdclef.archive.summary import count_events, recording_start, summarize
from birdclef.errors import BirdclefError

EVENTS = [  # path, species, start_s, end_s, score
    ("siteA/20240501_055500.WAV", "robin", 0.0, 5.0, 0.9),        # 05:55
    ("siteA/20240501_055500.WAV", "robin", 600.0, 610.0, 0.8),    # 06:05
    ("siteA/20240501_055500.WAV", "wren", 630.0, 635.0, 0.7),     # 06:05
    ("siteB/20240501_063000/rec.wav", "robin", 30.0, 35.0, 0.9),  # folder stamp: 06:30
    ("siteB/20240502_231500.flac", "robin", 3600.0, 3605.0, 0.6),  # 2024-05-03 00:15
    ("siteC/old_tape.wav", "wren", 1.0, 6.0, 0.5),
    ("siteC/old_tape.wav", "robin", 9.0, 14.0, 0.5),
]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    pd.DataFrame(EVENTS, columns=["path", "species", "start_s", "end_s", "score"]).to_csv(
        folder / "detections.csv", index=False)
    return folder


def test_recording_start_from_name_or_folder():
    assert recording_start("a/20240501_055500.WAV") == pd.Timestamp("2024-05-01 05:55:00")
    assert recording_start("b/20240501_063000/rec.wav") == pd.Timestamp("2024-05-01 06:30:00")
    assert recording_start("c/old_tape.wav") is None and recording_start("20241399_250000.wav") is None


def test_counts_per_class_per_hour_and_day_with_unknown_bucket(results: Path):
    events = pd.read_csv(results / "detections.csv")
    hourly, unknown = count_events(events, "hour")
    assert hourly.values.tolist() == [["robin", "2024-05-01 05:00", 1], ["robin", "2024-05-01 06:00", 2],
                                      ["robin", "2024-05-03 00:00", 1], ["robin", "unknown", 1],
                                      ["wren", "2024-05-01 06:00", 1], ["wren", "unknown", 1]]
    assert unknown == ["siteC/old_tape.wav"]
    daily, _ = count_events(events, "day")
    assert daily.values.tolist() == [["robin", "2024-05-01", 3], ["robin", "2024-05-03", 1], ["robin", "unknown", 1],
                                     ["wren", "2024-05-01", 1], ["wren", "unknown", 1]]
    assert daily["detections"].sum() == len(EVENTS)


def test_cli_writes_csv_and_png(results: Path, tmp_path: Path, capsys):
    out = tmp_path / "summary"
    assert cli.main(["summarize", str(results), "--by", "day", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 detections per class per day" in printed
    assert "1 recordings (2 detections) have no YYYYMMDD_HHMMSS time" in printed
    assert pd.read_csv(out / "counts_by_day.csv").shape == (5, 3)
    png = (out / "counts_by_day.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert cli.main(["summarize", str(results)]) == 0 and (results / "summary" / "counts_by_hour.png").is_file()


def test_summary_from_the_parquet_table_with_a_threshold(tmp_path: Path):
    windows = pd.DataFrame({"path": "20240601_120000.wav", "start_s": [0.0, 5.0, 3600.0], "end_s": [5.0, 10.0, 3605.0],
                            "robin": [0.9, 0.8, 0.95], "wren": [0.1, 0.2, 0.7]}).astype({"robin": "float32"})
    windows.to_parquet(tmp_path / "detections.parquet")
    s = summarize(tmp_path, tmp_path / "s", "hour", threshold={"robin": 0.5})
    assert pd.read_csv(s.table).values.tolist() == [["robin", "2024-06-01 12:00", 1], ["robin", "2024-06-01 13:00", 1]]
    assert summarize(tmp_path, tmp_path / "s", "hour", threshold=0.6).n_events == 3
    with pytest.raises(BirdclefError, match=r"threshold \(--raven, --threshold\) must be in \(0, 1\], got 1.5"):
        summarize(tmp_path, tmp_path / "s", "hour", threshold=1.5)


def test_missing_inputs_are_one_line_errors(tmp_path: Path, capsys):
    assert cli.main(["summarize", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'detections.csv'}: not found" in err and "\n" not in err
    (tmp_path / "detections.csv").write_text("file,label\nx,y\n")
    with pytest.raises(BirdclefError, match=r"detections.csv: no 'path', 'species', 'start_s' column"):
        summarize(tmp_path)
    assert cli.main(["summarize", str(tmp_path), "--threshold", "0.5"]) == 2
    assert "detections.parquet: not found" in capsys.readouterr().err
