"""birdclef thresholds: per-class thresholds reach the precision they were fitted for, bad inputs are one line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef import cli
from birdclef.errors import BirdclefError
from birdclef.eval.thresholds import fit_thresholds, read_thresholds, thresholds_from_csv


def _precision_recall(target: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    hit = scores >= threshold
    tp = int((hit & (target == 1)).sum())
    return tp / max(int(hit.sum()), 1), tp / int(target.sum())


def _synthetic(seed: int = 0, rows: int = 400, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = (rng.random((rows, classes)) < 0.15).astype(np.int8)
    probs = np.clip(0.35 * target + rng.normal(0.3, 0.15, size=target.shape), 0, 1)
    return target, probs


@pytest.mark.parametrize("precision", [0.5, 0.8, 0.95])
def test_thresholds_reach_the_precision_on_the_fitting_rows(precision: float):
    target, probs = _synthetic()
    fit = fit_thresholds(target, probs, [f"c{j}" for j in range(target.shape[1])], precision)
    fitted = fit.table.dropna(subset=["threshold"])
    assert len(fitted) >= 3
    for row in fitted.itertuples():
        j = int(row[1][1:])
        got_p, got_r = _precision_recall(target[:, j], probs[:, j], row.threshold)
        assert got_p >= precision and got_p == pytest.approx(row.precision) and got_r == pytest.approx(row.recall)
        # the lowest such threshold: any lower score that is a candidate falls below the precision or adds nothing
        lower = np.unique(probs[:, j][probs[:, j] < row.threshold])
        assert all(_precision_recall(target[:, j], probs[:, j], t)[0] < precision for t in lower)
    assert sorted(fit.never_reached) == sorted(fit.table.loc[fit.table["threshold"].isna(), "class"])


def test_hand_computed_case_and_class_without_positives():
    # scores descending: 0.9 (+), 0.8 (-), 0.7 (+), 0.6 (+), 0.5 (-), 0.4 (+)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    a = np.array([1, 0, 1, 1, 0, 1])
    target = np.stack([a, np.zeros(6, int), a], axis=1)
    probs = np.stack([scores, scores, scores], axis=1)
    fit = fit_thresholds(target, probs, ["a", "none", "b"], precision=0.75)
    row = fit.table.set_index("class").loc["a"]
    # >= 0.6: 3 of 4 positive (0.75, recall 3/4); >= 0.4: 4 of 6 (0.667): 0.6 is the lowest reaching 0.75
    assert row.threshold == pytest.approx(0.6) and row.precision == 0.75 and row.recall == 0.75
    assert row.n_positive == 4 and row.note == ""
    none = fit.table.set_index("class").loc["none"]
    assert math.isnan(none.threshold) and none.n_positive == 0 and "no positive" in none.note
    assert fit.no_positives == ["none"] and fit.never_reached == []
    f1 = fit_thresholds(target, probs, ["a", "none", "b"]).table.set_index("class").loc["a"]
    # >= 0.4: p 4/6, r 1 -> f1 0.8; >= 0.6: p 3/4 r 3/4 -> 0.75; >= 0.9: 1, 1/4 -> 0.4
    assert f1.threshold == pytest.approx(0.4) and f1.f1 == pytest.approx(0.8)
    assert fit_thresholds(target, probs, ["a", "none", "b"], 1.0).table.set_index("class").loc["a"].threshold == 0.9


def _write_pair(tmp_path: Path) -> tuple[Path, Path]:
    target, probs = _synthetic(classes=3, rows=60)
    ids = [f"sc{i // 12}_{5 * (i % 12 + 1)}" for i in range(60)]
    sol = pd.DataFrame(target, columns=["x", "y", "z"]).assign(z=0)
    sol.insert(0, "row_id", ids)
    sub = pd.DataFrame(probs, columns=["x", "y", "z"])
    sub.loc[int(np.flatnonzero(target[:, 1] == 0)[0]), "y"] = 1.0  # y's top score is a negative: never precision 1
    sub.loc[np.flatnonzero(target[:, 0] == 1), "x"] = 0.99  # x's positives outscore every negative
    sub.insert(0, "row_id", ids)
    sol.to_csv(tmp_path / "sol.csv", index=False)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    return tmp_path / "sub.csv", tmp_path / "sol.csv"


def test_cli_writes_thresholds_and_names_unreached_classes(tmp_path: Path, capsys):
    sub, sol = _write_pair(tmp_path)
    out = tmp_path / "th.csv"
    assert cli.main(["thresholds", "--submission", str(sub), "--solution", str(sol), "--precision", "1.0",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table.columns) == ["class", "threshold", "precision", "recall", "f1", "n_positive", "note"]
    assert "1 classes have no positive rows: z" in printed
    assert "1 classes never reach precision 1: y" in printed and "2 of 3 classes" not in printed
    assert table.set_index("class")["threshold"].isna().to_dict() == {"x": False, "y": True, "z": True}
    assert "never reaches precision 1" in table.set_index("class").loc["y", "note"]
    assert read_thresholds(out) == dict(zip(table.dropna(subset=["threshold"])["class"],
                                            table.dropna(subset=["threshold"])["threshold"]))
    assert thresholds_from_csv(sub, sol, 1.0).table["class"].tolist() == ["x", "y", "z"]


def test_mismatched_inputs_are_one_line_errors_naming_the_file(tmp_path: Path, capsys):
    sub, sol = _write_pair(tmp_path)
    frame = pd.read_csv(sub)
    frame.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    frame.drop(columns="y").to_csv(tmp_path / "noy.csv", index=False)
    for bad, words in [("short.csv", "row_id"), ("noy.csv", "'y'"), ("absent.csv", "not found")]:
        argv = ["thresholds", "--submission", str(tmp_path / bad), "--solution", str(sol), "--f1",
                "--out", str(tmp_path / "th.csv")]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"birdclef thresholds: error: {tmp_path / bad}") and words in err and "\n" not in err
    assert not (tmp_path / "th.csv").exists()
    with pytest.raises(BirdclefError, match="must be in"):
        fit_thresholds(np.ones((2, 1)), np.ones((2, 1)), ["a"], 1.5)
    (tmp_path / "t.csv").write_text("class,threshold\na,0.5\nb,high\n")
    with pytest.raises(BirdclefError, match=r"t.csv: threshold of class 'b'"):
        read_thresholds(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("species,value\na,0.5\n")
    with pytest.raises(BirdclefError, match=r"t.csv: no 'class', 'threshold' column"):
        read_thresholds(tmp_path / "t.csv")


def test_per_class_thresholds_place_a_known_event_in_its_rows(tmp_path: Path):
    from birdclef.archive.raven import merge_events, write_detections

    windows = pd.DataFrame({"path": "site/r.wav", "start_s": [0.0, 5.0, 10.0, 15.0], "end_s": [5.0, 10.0, 15.0, 20.0],
                            "aaa": [0.3, 0.35, 0.1, 0.32], "bbb": [0.6, 0.9, 0.95, 0.2], "ccc": [0.99] * 4})
    events = merge_events(windows, {"aaa": 0.3, "bbb": 0.92})  # ccc: no threshold, never detected
    assert events.to_dict("list") == {"path": ["site/r.wav"] * 3, "species": ["aaa", "bbb", "aaa"],
                                      "start_s": [0.0, 10.0, 15.0], "end_s": [10.0, 15.0, 20.0],
                                      "score": [0.35, 0.95, 0.32]}
    part = tmp_path / "r.parquet"
    windows.to_parquet(part)
    csv = write_detections(tmp_path / "out", [("site/r.wav", part, 18.0)], {"aaa": 0.3, "bbb": 0.92}, 16_000)
    detections = pd.read_csv(csv)
    assert detections[["species", "start_s", "end_s"]].values.tolist() == [["aaa", 0.0, 10.0], ["bbb", 10.0, 15.0],
                                                                           ["aaa", 15.0, 18.0]]
    raven = pd.read_csv(tmp_path / "out" / "raven" / "site" / "r.wav.selections.txt", sep="\t")
    assert raven["Species Code"].tolist() == ["aaa", "bbb", "aaa"] and raven["End Time (s)"].tolist()[-1] == 18.0


def test_analyze_refuses_raven_with_thresholds(tmp_path: Path, capsys):
    (tmp_path / "th.csv").write_text("class,threshold\na,0.5\n")
    assert cli.main(["analyze", str(tmp_path), "--merge", "--raven", "0.5", "--thresholds", str(tmp_path / "th.csv"),
                     "--out", str(tmp_path / "res")]) == 2
    assert "--raven THRESHOLD or --thresholds CSV, not both" in capsys.readouterr().err
