"""Bootstrap intervals of the macro ROC-AUC over soundscape files, and the paired difference, by hand on a tiny case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from birdclef.cli import main
from birdclef.eval.intervals import (bootstrap_class_auc, bootstrap_report, draw_counts, file_codes,
                                     percentile_interval, resample_files, weighted_class_auc)
from birdclef.eval.metrics import macro_roc_auc

# Three files of two rows. Class "a": positives A1 (0.9) and B2 (0.4). Class "c": positive only in file C.
ROW_IDS = ["A_5", "A_10", "B_5", "B_10", "C_5", "C_10"]
TARGET = np.array([[1, 0], [0, 0], [0, 0], [1, 0], [0, 1], [0, 0]])
PROBS = np.array([[0.9, 0.1], [0.3, 0.2], [0.8, 0.3], [0.4, 0.4], [0.5, 0.7], [0.1, 0.6]])
OTHER = np.array([[0.3, 0.1], [0.9, 0.2], [0.4, 0.3], [0.8, 0.4], [0.5, 0.5], [0.1, 0.6]])
DRAWS = np.array([[0, 0, 1],   # A twice, B once: class a AUC 8/9 (below), class c has no positive: skipped
                  [0, 1, 2],   # the data as given
                  [2, 2, 2]])  # C only: class a has no positive, class c: 0.7 > 0.6 -> 1


def test_file_codes_follow_the_row_id_stems() -> None:
    codes, stems = file_codes(["X_1_5", "X_1_10", "Y_5", "X_1_15"])
    assert codes.tolist() == [0, 0, 1, 0] and stems == ["X_1", "Y"]
    with pytest.raises(ValueError, match="malformed row_id"):
        file_codes(["no-end-second"])


def test_resampled_auc_by_hand() -> None:
    """Draw (A, A, B): positives A1 0.9 (weight 2), B2 0.4 (1); negatives A2 0.3 (2), B1 0.8 (1).
    Pairs won: A1>A2 2*2 + A1>B1 2*1 + B2>A2 1*2 = 8 of 3*3 = 9."""
    codes, _ = file_codes(ROW_IDS)
    per_class = bootstrap_class_auc(TARGET, PROBS, codes, DRAWS)
    np.testing.assert_allclose(per_class[0], [8 / 9, np.nan])
    np.testing.assert_allclose(per_class[1], [6 / 8, roc_auc_score(TARGET[:, 1], PROBS[:, 1])])
    np.testing.assert_allclose(per_class[2], [np.nan, 1.0])
    assert draw_counts(DRAWS, 3).tolist() == [[2, 1, 0], [1, 1, 1], [0, 0, 3]]


def test_interval_and_paired_difference_by_hand() -> None:
    """Macro per draw (NaN classes skipped): 8/9, (0.75 + 1) / 2, 1. Percentiles by linear interpolation."""
    report = bootstrap_report(TARGET, PROBS, ROW_IDS, ["a", "c"], other=OTHER, draws=DRAWS)
    macros = np.array([8 / 9, (0.75 + 1.0) / 2, 1.0])  # sorted: 0.875, 0.8889, 1.0
    low = 0.875 + 0.05 * (8 / 9 - 0.875)  # 2.5th percentile: rank 0.05 of 2 gaps
    high = 8 / 9 + 0.95 * (1.0 - 8 / 9)  # 97.5th: rank 1.95
    assert report.macro.estimate == pytest.approx(macros[1])
    assert (report.macro.low, report.macro.high) == pytest.approx((low, high))
    assert report.macro.n_valid == 3 and report.n_files == 3
    # OTHER, draw (A, A, B), class a: positives A1 0.3 (2), B2 0.8 (1); negatives A2 0.9 (2), B1 0.4 (1):
    # only B2 > B1 wins, 1 of 9. Draw (A, B, C): A1 0.3 beats C2 0.1 (1), B2 0.8 beats B1, C1, C2 (3): 4/8.
    # Class c, OTHER: positive C1 0.5 against negatives 0.1 0.2 0.3 0.4 0.6: 4/5; draw (C, C, C): 0.5 < 0.6 -> 0.
    other_macros = np.array([1 / 9, (0.5 + 0.8) / 2, 0.0])
    diffs = macros - other_macros  # 7/9, 0.225, 1.0
    comparison = report.comparison
    assert comparison.other_macro.estimate == pytest.approx(0.65)
    assert comparison.difference.estimate == pytest.approx(macros[1] - 0.65)
    ranked = np.sort(diffs)
    assert (comparison.difference.low, comparison.difference.high) == pytest.approx(
        (ranked[0] + 0.05 * (ranked[1] - ranked[0]), ranked[1] + 0.95 * (ranked[2] - ranked[1])))
    assert comparison.share_not_better == 0.0


def test_weighted_auc_equals_the_metric_on_duplicated_rows() -> None:
    rng = np.random.default_rng(3)
    target = (rng.random((40, 5)) < 0.3).astype(int)
    probs = np.round(rng.random((40, 5)), 1)  # rounded: many ties
    row_ids = [f"F{i // 4}_{5 * (i % 4 + 1)}" for i in range(40)]
    codes, stems = file_codes(row_ids)
    draws = resample_files(len(stems), 20, seed=1)
    per_class = bootstrap_class_auc(target, probs, codes, draws)
    for b, draw in enumerate(draws):
        rows = np.concatenate([np.flatnonzero(codes == f) for f in draw])
        t, p = target[rows], probs[rows]
        scored = (t.sum(0) > 0) & (t.sum(0) < len(t))
        expected = [roc_auc_score(t[:, k], p[:, k]) for k in np.flatnonzero(scored)]
        np.testing.assert_allclose(per_class[b, scored], expected)
        assert np.isnan(per_class[b, ~scored]).all()
        assert np.nanmean(per_class[b]) == pytest.approx(macro_roc_auc(t, p))


def test_same_seed_same_interval_other_seed_other_draws() -> None:
    first = bootstrap_report(TARGET, PROBS, ROW_IDS, ["a", "c"], n_resamples=50, seed=7)
    again = bootstrap_report(TARGET, PROBS, ROW_IDS, ["a", "c"], n_resamples=50, seed=7)
    assert first == again
    assert not np.array_equal(resample_files(3, 50, seed=7), resample_files(3, 50, seed=8))


def test_weights_of_zero_leave_a_class_unscored() -> None:
    assert np.isnan(weighted_class_auc(np.array([1, 0]), np.array([0.2, 0.1]), np.array([[0.0, 1.0]])))[0]
    assert np.isnan(percentile_interval(np.array([np.nan]), 0.5).low)


def _write(path: Path, probs: np.ndarray, columns: list[str]) -> Path:
    frame = pd.DataFrame(probs, columns=columns)
    frame.insert(0, "row_id", ROW_IDS)
    frame.to_csv(path, index=False)
    return path


def test_cli_prints_intervals_per_group_and_the_comparison(tmp_path: Path, capsys) -> None:
    solution = _write(tmp_path / "solution.csv", TARGET, ["a", "c"])
    sub = _write(tmp_path / "sub.csv", PROBS, ["a", "c"])
    other = _write(tmp_path / "other.csv", OTHER, ["a", "c"])
    taxonomy = tmp_path / "taxonomy.csv"
    taxonomy.write_text("primary_label,class_name\na,Aves\nc,Insecta\n")
    out = tmp_path / "report.json"
    assert main(["evaluate", "--submission", str(sub), "--solution", str(solution), "--taxonomy", str(taxonomy),
                 "--bootstrap", "200", "--seed", "3", "--compare", str(other), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "95% bootstrap interval over 3 soundscape files, 200 resamples, seed 3" in text
    assert f"difference (submission - {other})" in text and "Insecta" in text
    record = json.loads(out.read_text())["bootstrap"]
    assert record["macro"]["n_resamples"] == 200 and set(record["groups"]) == {"Aves", "Insecta"}
    assert record["comparison"]["difference"]["estimate"] == pytest.approx(record["macro"]["estimate"] - 0.65)
    assert main(["evaluate", "--submission", str(sub), "--solution", str(solution), "--bootstrap", "0"]) == 0
    assert "bootstrap" not in capsys.readouterr().out
    assert main(["evaluate", "--submission", str(sub), "--solution", str(solution), "--bootstrap", "0",
                 "--compare", str(other)]) == 2
    assert "--bootstrap must be a positive number of resamples with --compare" in capsys.readouterr().err


def test_row_ids_without_an_end_second_score_without_interval(tmp_path: Path, capsys) -> None:
    solution = pd.DataFrame({"row_id": ["a", "b", "c"], "x": [1, 0, 0]})
    solution.to_csv(tmp_path / "solution.csv", index=False)
    solution.assign(x=[0.9, 0.1, 0.2]).to_csv(tmp_path / "sub.csv", index=False)
    args = ["evaluate", "--submission", str(tmp_path / "sub.csv"), "--solution", str(tmp_path / "solution.csv")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "macro ROC-AUC 1.0000" in captured.out and "no bootstrap interval" in captured.err
    assert main([*args, "--compare", str(tmp_path / "sub.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "malformed row_id 'a'" in err[0] and "--compare" in err[0]
