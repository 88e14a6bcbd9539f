"""Smoothing, power adjustment and per-file post-processing against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from birdclef.config import InferConfig
from birdclef.errors import SubmissionError
from birdclef.infer.postprocess import (POSTPROCESSORS, class_ranks, enabled_steps, parse_row_id, postprocess,
                                        power_adjust, smooth)

SMOOTH_ONLY = InferConfig(smoothing=True, power_adjust=False)


def column(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]  # (W, 1)


def test_smooth_spreads_a_single_spike_with_middle_and_edge_weights():
    # Spike of 1.0 in window 1 of 4. Window 0 (edge): 0.9*0 + 0.1*1; window 1: 0.6*1;
    # window 2: 0.2*1 (previous); window 3 (edge): 0.9*0 + 0.1*0.
    out = smooth(column(0.0, 1.0, 0.0, 0.0))
    np.testing.assert_allclose(out[:, 0], [0.1, 0.6, 0.2, 0.0], rtol=0, atol=1e-12)


def test_smooth_mixes_neighbours_with_their_own_weights():
    # prev / own / next = 0.2 / 0.6 / 0.2 on [1, 2, 4]: middle 0.2*1 + 0.6*2 + 0.2*4 = 2.2;
    # edges 0.9*1 + 0.1*2 = 1.1 and 0.9*4 + 0.1*2 = 3.8.
    out = smooth(column(1.0, 2.0, 4.0))
    np.testing.assert_allclose(out[:, 0], [1.1, 2.2, 3.8], rtol=0, atol=1e-12)


def test_smooth_is_per_class_and_takes_custom_weights():
    probs = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    out = smooth(probs, middle=(0.1, 0.5, 0.4), edge=(0.8, 0.2))
    expected = np.array([[0.8, 0.0], [0.1, 0.4], [0.0, 0.8]])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_smooth_one_window_is_unchanged_and_two_windows_are_both_edges():
    np.testing.assert_array_equal(smooth(column(0.7)), column(0.7))
    out = smooth(column(1.0, 0.0))
    np.testing.assert_allclose(out[:, 0], [0.9, 0.1], rtol=0, atol=1e-12)


def test_smooth_does_not_modify_its_input_and_rejects_bad_shapes():
    probs = column(0.0, 1.0, 0.0)
    smooth(probs)
    np.testing.assert_array_equal(probs, column(0.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="windows, classes"):
        smooth(np.zeros(4))
    with pytest.raises(ValueError, match="3 middle and 2 edge"):
        smooth(probs, middle=(0.5, 0.5))


def test_class_ranks_break_ties_by_class_order():
    probs = np.array([[0.2, 0.9, 0.2, 0.1], [0.5, 0.0, 0.5, 0.0]])  # peaks 0.5, 0.9, 0.5, 0.1
    np.testing.assert_array_equal(class_ranks(probs), [2, 1, 3, 4])


def test_power_adjust_small_tiers_by_hand():
    # Peaks: class 0 -> 0.2, class 1 -> 0.9, class 2 -> 0.5, class 3 -> 0.4.
    # Ranks: 1 -> class 1 (kept), 2 -> class 2 (**2), 3 and 4 -> classes 3, 0 (rest, **3).
    probs = np.array([[0.2, 0.9, 0.5, 0.1], [0.1, 0.3, 0.2, 0.4]])
    out = power_adjust(probs, keep_top=1, tiers=((2, 2.0),), rest=3.0)
    expected = np.array([[0.2 ** 3, 0.9, 0.5 ** 2, 0.1 ** 3],
                         [0.1 ** 3, 0.3, 0.2 ** 2, 0.4 ** 3]])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=0)


def test_power_adjust_default_tiers_cover_rank_boundaries():
    # 160 classes with distinct peaks, descending: class i has rank i + 1.
    peaks = np.linspace(0.99, 0.5, 160)
    out = power_adjust(peaks[None, :])[0]
    exponents = np.log(out) / np.log(peaks)
    np.testing.assert_allclose(exponents[[0, 29]], 1.0)  # ranks 1 and 30 kept
    np.testing.assert_allclose(exponents[[30, 99]], 2.0)  # ranks 31 and 100
    np.testing.assert_allclose(exponents[[100, 149]], 3.0)  # ranks 101 and 150
    np.testing.assert_allclose(exponents[[150, 159]], 4.0)  # ranks 151 and 160


def test_power_adjust_with_ties_uses_class_order():
    probs = np.array([[0.5, 0.5, 0.5]])
    out = power_adjust(probs, keep_top=1, tiers=((2, 2.0),), rest=3.0)
    np.testing.assert_allclose(out, [[0.5, 0.25, 0.125]], rtol=1e-12)


@pytest.mark.parametrize("keep_top, tiers, message", [
    (2, ((2, 2.0),), "above keep_top=2"),
    (1, ((5, 2.0), (3, 3.0)), "strictly ascending"),
    (1, ((3, 2.0), (3, 3.0)), "strictly ascending"),
    (-1, ((3, 2.0),), "keep_top must be >= 0"),
])
def test_power_adjust_rejects_bad_tiers(keep_top, tiers, message):
    with pytest.raises(ValueError, match=message):
        power_adjust(np.ones((2, 4)), keep_top=keep_top, tiers=tiers)


@pytest.mark.parametrize("row_id, expected", [
    ("XCB_DEV_000_5", ("XCB_DEV_000", 5)),
    ("XCB_DEV_000_60", ("XCB_DEV_000", 60)),
    ("soundscape_12345_120", ("soundscape_12345", 120)),
    ("a_0", ("a", 0)),
])
def test_parse_row_id_splits_at_the_last_underscore(row_id, expected):
    assert parse_row_id(row_id) == expected


@pytest.mark.parametrize("row_id", ["XCB000", "XCB_", "_5", "XCB_5s", "XCB_-5", "", 5, None])
def test_parse_row_id_rejects_malformed_ids(row_id):
    with pytest.raises(ValueError, match="malformed row_id.*<soundscape_stem>_<end_second>"):
        parse_row_id(row_id)


def table(row_ids: list[str], values: list[list[float]]) -> pd.DataFrame:
    return pd.DataFrame({"row_id": row_ids, **{c: [v[i] for v in values] for i, c in enumerate(("sp_a", "sp_b"))}})


def test_postprocess_keeps_row_order_and_sorts_windows_numerically():
    # File A_X (underscored stem) windows 5, 10, 15 with a spike at 10 in sp_a, given shuffled.
    # Lexical order would put _10 before _5; numeric order must be used.
    df = table(["A_X_15", "A_X_5", "A_X_10"], [[0.0, 0.3], [0.0, 0.3], [1.0, 0.3]])
    df.index = [7, 3, 9]
    out = postprocess(df, SMOOTH_ONLY)
    assert list(out.columns) == ["row_id", "sp_a", "sp_b"]
    assert list(out["row_id"]) == ["A_X_15", "A_X_5", "A_X_10"] and list(out.index) == [7, 3, 9]
    # Time order 5, 10, 15 = [0, 1, 0] -> [0.1, 0.6, 0.1]; a constant column stays constant.
    np.testing.assert_allclose(out["sp_a"], [0.1, 0.1, 0.6], atol=1e-12)
    np.testing.assert_allclose(out["sp_b"], [0.3, 0.3, 0.3], atol=1e-12)
    assert df["sp_a"].tolist() == [0.0, 0.0, 1.0]  # input untouched


def test_postprocess_treats_files_separately():
    # A spike in the last window of file A must not leak into file B's first window, which
    # would happen if rows were smoothed as one sequence (A_5, A_10, B_5, B_10).
    df = table(["B_10", "A_5", "B_5", "A_10"], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    out = postprocess(df, SMOOTH_ONLY)
    np.testing.assert_allclose(out["sp_a"], [0.0, 0.1, 0.0, 0.9], atol=1e-12)


def test_postprocess_power_adjust_ranks_per_file():
    # keep_top=1: in file A sp_a is top (kept) and sp_b is squared; in file B the reverse.
    cfg = InferConfig(smoothing=False, power_adjust=True, power_keep_top=1, power_tiers=((2, 2.0),))
    df = table(["A_5", "B_5"], [[0.9, 0.5], [0.4, 0.8]])
    out = postprocess(df, cfg)
    np.testing.assert_allclose(out[["sp_a", "sp_b"]].to_numpy(), [[0.9, 0.25], [0.16, 0.8]], rtol=1e-12)


def test_postprocess_runs_smoothing_before_power_adjust():
    cfg = InferConfig(power_keep_top=1, power_tiers=((2, 2.0),))
    df = table(["A_5", "A_10"], [[1.0, 0.5], [0.0, 0.5]])
    out = postprocess(df, cfg)
    # Smoothed: sp_a [0.9, 0.1] (peak 0.9, kept), sp_b [0.5, 0.5] (rank 2, squared).
    np.testing.assert_allclose(out[["sp_a", "sp_b"]].to_numpy(), [[0.9, 0.25], [0.1, 0.25]], rtol=1e-12)
    assert enabled_steps(cfg) == ["smoothing", "power_adjust"]


def test_postprocess_with_all_steps_disabled_is_identity():
    cfg = InferConfig(smoothing=False, power_adjust=False)
    df = table(["A_10", "A_5", "A_15"], [[0.1, 0.2], [0.9, 0.4], [0.3, 0.7]])
    out = postprocess(df, cfg)
    pd.testing.assert_frame_equal(out, df)
    assert out is not df and enabled_steps(cfg) == []


def test_postprocess_errors_name_the_problem():
    with pytest.raises(SubmissionError, match="no 'row_id' column"):
        postprocess(pd.DataFrame({"sp_a": [0.1]}), SMOOTH_ONLY)
    with pytest.raises(SubmissionError, match="1 duplicated row_id.*'A_5'"):
        postprocess(table(["A_5", "A_5"], [[0.1, 0.2], [0.3, 0.4]]), SMOOTH_ONLY)
    with pytest.raises(ValueError, match="malformed row_id 'A5'"):
        postprocess(table(["A5"], [[0.1, 0.2]]), SMOOTH_ONLY)


def test_registered_steps_use_config_parameters():
    assert POSTPROCESSORS.names() == ["power_adjust", "smoothing"]
    probs = column(1.0, 0.0)
    cfg = InferConfig(smoothing_edge=(0.7, 0.3))
    np.testing.assert_allclose(POSTPROCESSORS.get("smoothing")(probs, cfg)[:, 0], [0.7, 0.3], atol=1e-12)
