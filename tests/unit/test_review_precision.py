"""Stratified precision, its interval and thresholds against hand computations; the `precision` verb."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef.eval.thresholds import read_thresholds
from birdclef.review.precision import (bin_counts, precision_curve, stratified_precision, threshold_for,
                                       thresholds_table, wilson)
from birdclef.review.queue import Bins

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review_data import make_results  # noqa: E402


def test_wilson_matches_the_textbook_interval():
    low, high = wilson(0.8, 10)  # 8 of 10: Wilson 95 % is 0.490-0.943 (Newcombe 1998, table I style)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_stratified_precision_of_one_bin_by_hand():
    # 50 windows in the bin, 10 reviewed, 9 confirmed.
    est = stratified_precision([50], [10], [9])
    p, var = 0.9, (1 - 10 / 50) * 0.9 * 0.1 / 10  # = 0.0072
    n_eff = p * (1 - p) / var  # = 12.5
    z2 = 1.959963984540054 ** 2
    centre = (p + z2 / (2 * n_eff)) / (1 + z2 / n_eff)
    half = math.sqrt(z2) / (1 + z2 / n_eff) * math.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff**2))
    assert est.precision == pytest.approx(0.9)
    assert (est.low, est.high) == pytest.approx((centre - half, centre + half))
    assert (est.low, est.high) == pytest.approx((0.6328, 0.9792), abs=1e-4)
    assert est.expected_true == pytest.approx(45.0)


def test_stratified_precision_weights_bins_by_population_not_by_answers():
    # bins of 100 and 50 windows, 10 answers each: 5 and 9 yes. The naive rate 14/20 = 0.70 is biased;
    # the population-weighted one is 2/3 * 0.5 + 1/3 * 0.9 = 19/30.
    est = stratified_precision([100, 50], [10, 10], [5, 9])
    assert est.precision == pytest.approx(19 / 30)
    var = (2 / 3) ** 2 * 0.9 * 0.25 / 10 + (1 / 3) ** 2 * 0.8 * 0.09 / 10  # = 0.0108
    assert var == pytest.approx(0.0108)
    low, high = wilson(19 / 30, (19 / 30) * (11 / 30) / var)
    assert (est.low, est.high) == pytest.approx((low, high))
    assert est.expected_true == pytest.approx(95.0)


def test_a_populated_bin_without_answers_leaves_the_estimate_open_and_a_census_is_exact():
    assert math.isnan(stratified_precision([10, 5], [0, 5], [0, 5]).precision)
    est = stratified_precision([4], [4], [3])  # every window reviewed: no sampling error
    assert est.precision == pytest.approx(0.75) and est.low == pytest.approx(0.75) and est.high == pytest.approx(0.75)


def test_precision_curve_and_threshold_for_a_target():
    bins = Bins(2, 0.2)  # [0.2, 0.6), [0.6, 1]
    scores = np.r_[np.full(100, 0.3), np.full(50, 0.8), np.full(30, 0.1)]  # 30 below the floor: never counted
    reviewed_scores = np.r_[np.full(10, 0.3), np.full(11, 0.8)]
    answers = np.r_[["yes"] * 5 + ["no"] * 5, ["yes"] * 9 + ["no"] + ["unsure"]]  # unsure is left out
    population, reviewed, confirmed = bin_counts(scores, bins, reviewed_scores, answers)
    assert population.tolist() == [100, 50] and reviewed.tolist() == [10, 10] and confirmed.tolist() == [5, 9]
    curve = precision_curve("a", scores, bins, reviewed_scores, answers)
    assert curve["threshold"].tolist() == [0.2, 0.6]
    assert curve["precision"].tolist() == pytest.approx([19 / 30, 0.9])
    assert threshold_for(curve, 0.9)[0] == pytest.approx(0.6)
    assert threshold_for(curve, 0.6)[0] == pytest.approx(0.2)
    threshold, note = threshold_for(curve, 0.9, conservative=True)  # interval low end 0.63 < 0.9
    assert math.isnan(threshold) and "never reaches" in note
    table = thresholds_table({"a": curve}, 0.85, confirmed={"a": 14})
    assert table.loc[0, "threshold"] == pytest.approx(0.6) and table.loc[0, "n_positive"] == 14


def test_precision_verb_writes_thresholds_that_analyze_reads(tmp_path, capsys):
    from birdclef.cli import main
    from birdclef.review.session import Session

    results, _ = make_results(tmp_path)
    session = Session(results, reviewer="t")
    queue = session.queue("amerob", "stratified")
    for item in queue["items"]:  # the truth: amerob is there when its score is at least 0.5
        answer = "yes" if item["score"] >= 0.5 else "no"
        session.answer("amerob", item["file"], item["start_s"], item["end_s"], answer, queue="stratified",
                       score=item["score"])
    out = tmp_path / "prec"
    assert main(["precision", str(results), "--target", "0.95", "--out", str(out)]) == 0
    thresholds = read_thresholds(out / "thresholds.csv")
    assert 0.45 <= thresholds["amerob"] <= 0.55
    assert list(pd.read_csv(out / "thresholds.csv").columns) == ["class", "threshold", "precision", "recall", "f1",
                                                                "n_positive", "note"]
    raven = sorted((out / "raven").rglob("*.selections.txt"))
    assert raven and "Species Code" in raven[0].read_text().splitlines()[0]
    assert "thresholds.csv" in capsys.readouterr().out
