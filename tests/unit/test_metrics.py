"""The competition metric against hand counts and scikit-learn, and submission/solution alignment."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import birdclef.metrics
from birdclef.errors import SubmissionError
from birdclef.eval.metrics import (
    EvalReport,
    align_submission,
    evaluate_submission,
    macro_roc_auc,
    per_class_roc_auc,
)

CLASSES = ["aaa", "bbb", "ccc", "ddd"]
# 6 rows x 4 classes: aaa and ddd are scored, bbb has no positive, ccc is positive everywhere.
TARGET = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0]])
PROBS = np.array([
    [0.9, 0.1, 0.5, 0.2],
    [0.3, 0.2, 0.5, 0.6],
    [0.4, 0.3, 0.5, 0.5],
    [0.4, 0.4, 0.5, 0.1],
    [0.1, 0.5, 0.5, 0.7],
    [0.8, 0.6, 0.5, 0.3],
])
# aaa: positives 0.9, 0.4 vs negatives 0.3, 0.4, 0.1, 0.8 -> 4 + (2 + 0.5 tie) = 6.5 of 8 pairs.
# ddd: positives 0.6, 0.1, 0.7 vs negatives 0.2, 0.5, 0.3 -> 3 + 0 + 3 = 6 of 9 pairs.
AUC_AAA, AUC_DDD = 6.5 / 8, 6 / 9


def _frames(target: np.ndarray = TARGET, probs: np.ndarray = PROBS) -> tuple[pd.DataFrame, pd.DataFrame]:
    row_ids = [f"SC_{5 * (i + 1)}" for i in range(len(target))]
    solution = pd.DataFrame(target, columns=CLASSES).assign(row_id=row_ids)[["row_id", *CLASSES]]
    submission = pd.DataFrame(probs, columns=CLASSES).assign(row_id=row_ids)[["row_id", *CLASSES]]
    return submission, solution


def test_macro_roc_auc_equals_the_hand_counted_pair_fraction() -> None:
    assert macro_roc_auc(TARGET, PROBS) == pytest.approx((AUC_AAA + AUC_DDD) / 2, abs=1e-12)


def test_per_class_report_scores_two_classes_and_names_why_the_others_are_skipped() -> None:
    table = per_class_roc_auc(TARGET, PROBS, CLASSES).set_index("class")
    assert table.loc["aaa", "auc"] == pytest.approx(AUC_AAA)
    assert table.loc["ddd", "auc"] == pytest.approx(AUC_DDD)
    assert table["scored"].tolist() == [True, False, False, True]
    assert table["reason"].tolist() == ["", "no positives", "no negatives", ""]
    assert math.isnan(table.loc["bbb", "auc"]) and math.isnan(table.loc["ccc", "auc"])
    assert table["positives"].tolist() == [2, 0, 6, 3] and table["negatives"].tolist() == [4, 6, 0, 3]


def test_macro_roc_auc_agrees_with_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(7)
    target = (rng.random((300, 12)) < 0.1).astype(int)
    target[:, 3] = 0  # one class without positives, skipped as in Kaggle's scorer
    probs = np.clip(0.3 * target + rng.random((300, 12)), 0, 1).round(2)  # rounding creates ties
    scored = target.sum(axis=0) > 0
    expected = roc_auc_score(target[:, scored], probs[:, scored], average="macro")
    assert macro_roc_auc(target, probs) == pytest.approx(expected, abs=1e-12)
    table = per_class_roc_auc(target, probs, [f"c{k}" for k in range(12)])
    assert table["auc"].mean() == pytest.approx(expected, abs=1e-12)  # pandas mean skips the NaN


def test_macro_roc_auc_accepts_bool_targets_and_scores_outside_unit_interval() -> None:
    assert macro_roc_auc(TARGET.astype(bool), PROBS * 10 - 3) == pytest.approx((AUC_AAA + AUC_DDD) / 2)


@pytest.mark.parametrize(
    ("target", "probs", "message"),
    [
        (TARGET, PROBS[:5], "shape mismatch"),
        (TARGET, np.where(PROBS == 0.9, np.nan, PROBS), "NaN or infinite"),
        (TARGET * 2, PROBS, "only 0 and 1"),
        (np.zeros_like(TARGET), PROBS, "no class has both"),
        (TARGET[:, 0], PROBS[:, 0], "2-D"),
    ],
)
def test_macro_roc_auc_rejects_bad_input(target: np.ndarray, probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        macro_roc_auc(target, probs)


def test_top_level_metrics_module_reexports_the_metric() -> None:
    assert birdclef.metrics.macro_roc_auc is macro_roc_auc


def test_align_submission_matches_rows_by_row_id_whatever_their_order() -> None:
    submission, solution = _frames()
    shuffled = submission.sample(frac=1.0, random_state=3)[["row_id", *CLASSES[::-1]]]
    target, probs, classes = align_submission(shuffled, solution.assign(Usage="Public"))
    assert classes == CLASSES
    np.testing.assert_array_equal(target, TARGET)
    np.testing.assert_allclose(probs, PROBS)
    assert macro_roc_auc(target, probs) == pytest.approx((AUC_AAA + AUC_DDD) / 2)


def test_align_submission_reports_missing_and_extra_row_ids_with_examples() -> None:
    submission, solution = _frames()
    renamed = submission.assign(row_id=submission["row_id"].replace({"SC_5": "OTHER_5"}))
    with pytest.raises(SubmissionError, match=r"sub\.csv: 1 row_id\(s\) of sol\.csv missing, e\.g\. 'SC_5'"):
        align_submission(renamed, solution, "sub.csv", "sol.csv")
    extra = pd.concat([submission, submission.iloc[[0]].assign(row_id="NEW_60")])
    with pytest.raises(SubmissionError, match=r"1 row_id\(s\) not in solution, e\.g\. 'NEW_60'"):
        align_submission(extra, solution)


def test_align_submission_reports_duplicate_row_ids() -> None:
    submission, solution = _frames()
    with pytest.raises(SubmissionError, match=r"submission: 1 duplicated row_id\(s\), e\.g\. 'SC_5'"):
        align_submission(pd.concat([submission, submission.iloc[[0]]]), solution)


def test_align_submission_reports_missing_and_extra_columns_by_name() -> None:
    submission, solution = _frames()
    with pytest.raises(SubmissionError, match=r"1 class column\(s\) of solution missing: 'ccc'"):
        align_submission(submission.drop(columns="ccc"), solution)
    with pytest.raises(SubmissionError, match=r"1 column\(s\) not in solution: 'zzz'"):
        align_submission(submission.assign(zzz=0.5), solution)
    with pytest.raises(SubmissionError, match="no 'row_id' column"):
        align_submission(submission.drop(columns="row_id"), solution)


def test_align_submission_rejects_nan_and_text_probabilities_naming_the_cell() -> None:
    submission, solution = _frames()
    with_nan = submission.copy()
    with_nan.loc[2, "ddd"] = np.nan
    with pytest.raises(SubmissionError, match=r"column\(s\) 'ddd' hold NaN.*'SC_15'"):
        align_submission(with_nan, solution)
    with_text = submission.astype({"aaa": object})
    with_text.loc[0, "aaa"] = "high"
    with pytest.raises(SubmissionError, match=r"finite numbers; column\(s\) 'aaa'"):
        align_submission(with_text, solution)


def test_align_submission_rejects_a_non_binary_solution() -> None:
    submission, solution = _frames(target=TARGET * 3)
    with pytest.raises(SubmissionError, match="solution: labels must be 0 or 1"):
        align_submission(submission, solution)


def _write_pair(tmp_path: Path) -> tuple[Path, Path]:
    submission, solution = _frames()
    sub_path, sol_path = tmp_path / "submission.csv", tmp_path / "solution.csv"
    submission.to_csv(sub_path, index=False)
    solution.to_csv(sol_path, index=False)
    return sub_path, sol_path


def test_evaluate_submission_scores_csv_files(tmp_path: Path) -> None:
    report = evaluate_submission(*_write_pair(tmp_path))
    assert report.score == pytest.approx((AUC_AAA + AUC_DDD) / 2)
    assert (report.n_rows, report.n_scored, report.n_skipped) == (6, 2, 2)


def test_evaluate_submission_names_a_missing_or_broken_file(tmp_path: Path) -> None:
    sub_path, sol_path = _write_pair(tmp_path)
    with pytest.raises(SubmissionError, match=r"nope\.csv: submission file not found"):
        evaluate_submission(tmp_path / "nope.csv", sol_path)
    sub_path.write_text("")
    with pytest.raises(SubmissionError, match=r"submission\.csv: cannot read submission CSV"):
        evaluate_submission(sub_path, sol_path)


def test_eval_report_survives_a_json_round_trip(tmp_path: Path) -> None:
    report = evaluate_submission(*_write_pair(tmp_path))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # NaN must already be None
    assert data["per_class"][1]["auc"] is None and data["per_class"][1]["reason"] == "no positives"
    back = EvalReport.from_dict(data)
    assert back.score == report.score and back.n_skipped == report.n_skipped
    pd.testing.assert_frame_equal(back.per_class, report.per_class, check_dtype=False)


def test_format_table_lists_worst_first_skipped_last_then_the_score(tmp_path: Path) -> None:
    lines = evaluate_submission(*_write_pair(tmp_path)).format_table().splitlines()
    body = [line.split()[0] for line in lines[2:-2]]
    assert body == ["ddd", "aaa", "bbb", "ccc"]
    assert lines[4].endswith("skipped: no positives") and lines[5].endswith("skipped: no negatives")
    assert lines[-1].startswith(f"macro ROC-AUC {(AUC_AAA + AUC_DDD) / 2:.4f} over 2 class(es), 2 skipped")
    assert [line[7:13] for line in lines[2:-2]] == ["0.6667", "0.8125", "     -", "     -"]  # aligned column


def test_shared_solution_scored_against_itself_is_perfect(shared_data: Path) -> None:
    report = evaluate_submission(shared_data / "solution.csv", shared_data / "solution.csv")
    assert report.score == pytest.approx(1.0)
    assert report.n_rows == len(pd.read_csv(shared_data / "solution.csv"))


def test_evaluate_scores_each_taxon_group(tmp_path: Path, capsys) -> None:
    """Per group = the mean AUC of its scored classes; unlisted classes are 'unknown'; bad taxonomy is one line."""
    from birdclef.cli import main
    from birdclef.eval.metrics import evaluate_submission, group_scores

    rows = [f"s_{5 * (i + 1)}" for i in range(6)]
    solution = pd.DataFrame({"row_id": rows, "frog": [1, 0, 1, 0, 0, 0], "bird": [0, 1, 0, 1, 0, 0],
                             "owl": [0, 0, 0, 0, 1, 1], "bug": [1, 1, 0, 0, 1, 0]})
    sub = pd.DataFrame({"row_id": rows, "frog": [0.9, 0.1, 0.8, 0.2, 0.3, 0.1],   # AUC 1.0
                        "bird": [0.2, 0.1, 0.3, 0.4, 0.5, 0.6],                    # AUC 2/8 = 0.25
                        "owl": [0.1, 0.2, 0.3, 0.4, 0.9, 0.8], "bug": [0.5] * 6})   # 1.0, 0.5
    taxonomy = pd.DataFrame({"primary_label": ["frog", "bird", "owl"], "class_name": ["Amphibia", "Aves", "Aves"]})
    for name, frame in (("sol", solution), ("sub", sub), ("tax", taxonomy)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    report = evaluate_submission(tmp_path / "sub.csv", tmp_path / "sol.csv")
    groups = group_scores(report, tmp_path / "tax.csv").set_index("group")
    expected = {"Amphibia": 1.0, "Aves": (0.25 + 1.0) / 2, "unknown": 0.5}
    assert groups["auc"].to_dict() == pytest.approx(expected)
    assert groups["n_classes"].to_dict() == {"Amphibia": 1, "Aves": 2, "unknown": 1}
    assert main(["evaluate", "--submission", str(tmp_path / "sub.csv"), "--solution", str(tmp_path / "sol.csv"),
                 "--taxonomy", str(tmp_path / "tax.csv"), "--out", str(tmp_path / "eval.json")]) == 0
    assert "Aves         0.6250  (2 of 2 classes scored)" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["groups"][1] == {"group": "Aves", "auc": 0.625,
                                                                            "n_scored": 2, "n_classes": 2}
    taxonomy.drop(columns="class_name").to_csv(tmp_path / "tax.csv", index=False)
    assert main(["evaluate", "--submission", str(tmp_path / "sub.csv"), "--solution", str(tmp_path / "sol.csv"),
                 "--taxonomy", str(tmp_path / "tax.csv")]) == 2
    assert "tax.csv: no column 'class_name'" in capsys.readouterr().err
