"""Fold soft voting and weighted blends of prediction tables, with the errors they raise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef.errors import SubmissionError
from birdclef.infer.ensemble import align_frames, average_folds, blend, blend_csvs, normalise_weights


def frame_a() -> pd.DataFrame:
    return pd.DataFrame({"row_id": ["S_1_5", "S_1_10"], "sp_a": [0.8, 0.4], "sp_b": [0.0, 1.0]})


def frame_b() -> pd.DataFrame:
    return pd.DataFrame({"row_id": ["S_1_5", "S_1_10"], "sp_a": [0.4, 0.0], "sp_b": [1.0, 0.2]})


# 0.75 * A + 0.25 * B, by hand.
EXPECTED = pd.DataFrame({"row_id": ["S_1_5", "S_1_10"], "sp_a": [0.7, 0.3], "sp_b": [0.25, 0.8]})


def test_blend_weighted_mean_by_hand():
    out = blend([frame_a(), frame_b()], weights=[0.75, 0.25])
    pd.testing.assert_frame_equal(out, EXPECTED, check_exact=False, rtol=1e-12, atol=1e-12)


def test_blend_weights_are_normalised():
    out = blend([frame_a(), frame_b()], weights=[3, 1])
    pd.testing.assert_frame_equal(out, EXPECTED, check_exact=False, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(normalise_weights([0.75, 0.25], 2), [0.75, 0.25])
    np.testing.assert_allclose(normalise_weights([3, 1], 2), [0.75, 0.25])
    np.testing.assert_allclose(normalise_weights([2, 0], 2), [1.0, 0.0])


def test_blend_defaults_to_equal_weights():
    out = blend([frame_a(), frame_b()])
    np.testing.assert_allclose(out[["sp_a", "sp_b"]].to_numpy(), [[0.6, 0.5], [0.2, 0.6]], atol=1e-12)


def test_blend_aligns_a_shuffled_second_frame_on_row_id_and_columns():
    shuffled = frame_b().iloc[::-1][["sp_b", "row_id", "sp_a"]]
    shuffled.index = [10, 20]
    out = blend([frame_a(), shuffled], weights=[0.75, 0.25])
    pd.testing.assert_frame_equal(out, EXPECTED, check_exact=False, rtol=1e-12, atol=1e-12)


def test_blend_keeps_the_first_frames_row_order():
    first = frame_a().iloc[::-1]
    out = blend([first, frame_b()], weights=[0.75, 0.25])
    assert out["row_id"].tolist() == ["S_1_10", "S_1_5"]
    np.testing.assert_allclose(out["sp_a"], [0.3, 0.7], atol=1e-12)


def test_align_frames_reorders_columns_and_rows_to_the_first():
    second = frame_b().iloc[::-1][["sp_b", "sp_a", "row_id"]]
    first, aligned = align_frames([frame_a(), second])
    assert list(aligned.columns) == ["row_id", "sp_a", "sp_b"]
    assert aligned["row_id"].tolist() == first["row_id"].tolist() == ["S_1_5", "S_1_10"]
    assert aligned["sp_a"].tolist() == [0.4, 0.0]


def test_mismatched_rows_are_counted_and_shown():
    other = pd.DataFrame({"row_id": ["S_1_5", "S_2_5", "S_2_10"], "sp_a": [0.1] * 3, "sp_b": [0.2] * 3})
    with pytest.raises(SubmissionError) as info:
        blend([frame_a(), other], names=["effnet", "nfnet"])
    message = str(info.value)
    assert message.startswith("nfnet: row_ids differ from effnet")
    assert "missing 1 (e.g. ['S_1_10'])" in message
    assert "extra 2 (e.g. ['S_2_10', 'S_2_5'])" in message


def test_mismatched_columns_are_named():
    other = frame_b().rename(columns={"sp_b": "sp_c"})
    with pytest.raises(SubmissionError, match=r"model_2: class columns differ from model_1: "
                                              r"missing 1 \(e\.g\. \['sp_b'\]\), extra 1 \(e\.g\. \['sp_c'\]\)"):
        blend([frame_a(), other], names=["model_1", "model_2"])


def test_duplicate_row_ids_are_rejected():
    dup = pd.concat([frame_b(), frame_b().iloc[:1]], ignore_index=True)
    with pytest.raises(SubmissionError, match=r"prediction table 1: duplicated row_ids 1 \(e\.g\. \['S_1_5'\]\)"):
        blend([frame_a(), dup])


def test_missing_row_id_column_is_rejected():
    with pytest.raises(SubmissionError, match="second: no 'row_id' column"):
        align_frames([frame_a(), frame_b().drop(columns="row_id")], names=["first", "second"])


def test_non_numeric_class_column_is_rejected():
    text = frame_b().assign(sp_b=["x", "y"])
    with pytest.raises(SubmissionError, match=r"prediction table 1: non-numeric class columns 1 \(e\.g\. \['sp_b'\]\)"):
        blend([frame_a(), text])


@pytest.mark.parametrize("weights, message", [
    ([0.5, -0.5], r"finite and non-negative, got \[0\.5, -0\.5\]"),
    ([0.5, float("nan")], "finite and non-negative"),
    ([0.0, 0.0], "positive sum"),
    ([1.0], "got 1 blend weights for 2 prediction tables"),
    ([1.0, 1.0, 1.0], "got 3 blend weights for 2 prediction tables"),
])
def test_bad_weights_are_rejected(weights, message):
    with pytest.raises(SubmissionError, match=message):
        blend([frame_a(), frame_b()], weights=weights)


def test_empty_inputs_and_wrong_name_count_are_rejected():
    with pytest.raises(SubmissionError, match="no prediction tables"):
        blend([])
    with pytest.raises(SubmissionError, match="got 1 names for 2 prediction tables"):
        align_frames([frame_a(), frame_b()], names=["only_one"])


def test_average_folds_is_the_elementwise_mean():
    folds = [np.array([[0.2, 0.4]]), np.array([[0.6, 0.0]]), np.array([[0.1, 0.5]])]
    np.testing.assert_allclose(average_folds(folds), [[0.3, 0.3]], atol=1e-12)
    np.testing.assert_array_equal(average_folds([np.array([[0.25, 0.5]])]), [[0.25, 0.5]])


def test_average_folds_rejects_mismatched_shapes_and_no_folds():
    with pytest.raises(ValueError, match=r"fold 1 probabilities have shape \(2, 3\), but fold 0 has \(2, 2\)"):
        average_folds([np.zeros((2, 2)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match="at least one fold"):
        average_folds([])


def test_blend_csvs_writes_the_blend_and_round_trips(tmp_path: Path):
    path_a, path_b = tmp_path / "a.csv", tmp_path / "b.csv"
    frame_a().to_csv(path_a, index=False)
    frame_b().iloc[::-1].to_csv(path_b, index=False)
    out = tmp_path / "sub" / "submission.csv"
    returned = blend_csvs([path_a, path_b], [3, 1], out)
    pd.testing.assert_frame_equal(returned, EXPECTED, check_exact=False, rtol=1e-12, atol=1e-12)
    pd.testing.assert_frame_equal(pd.read_csv(out), EXPECTED, check_exact=False, rtol=1e-9, atol=1e-12)
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temporary file left


def test_blend_csvs_names_a_missing_or_unreadable_file(tmp_path: Path):
    path_a = tmp_path / "a.csv"
    frame_a().to_csv(path_a, index=False)
    out = tmp_path / "submission.csv"
    with pytest.raises(SubmissionError, match=r"missing\.csv: prediction file not found"):
        blend_csvs([path_a, tmp_path / "missing.csv"], None, out)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SubmissionError, match=r"empty\.csv: cannot be read as a CSV"):
        blend_csvs([path_a, empty], None, out)
    with pytest.raises(SubmissionError, match=r"b\.csv: row_ids differ from .*a\.csv"):
        frame_a().assign(row_id=["T_5", "T_10"]).to_csv(tmp_path / "b.csv", index=False)
        blend_csvs([path_a, tmp_path / "b.csv"], None, out)
    assert not out.exists()


def test_blend_refuses_nan_or_infinite_probabilities_naming_the_cell():
    bad = frame_b()
    bad.loc[1, "sp_b"] = np.nan
    with pytest.raises(SubmissionError, match=r"b\.csv: 1 NaN or infinite probabilities, e.g. column 'sp_b' at row_id 'S_1_10'"):
        blend([frame_a(), bad], names=["a.csv", "b.csv"])
    bad.loc[1, "sp_b"] = -np.inf
    with pytest.raises(SubmissionError, match="NaN or infinite"):
        blend([frame_a(), bad])


# ---------------------------------------------------------------- partial: a taxon specialist's CSV


def specialist() -> pd.DataFrame:
    """Scores only sp_b, its rows shuffled, and one class (sp_c) the full table lacks."""
    return pd.DataFrame({"sp_c": [0.5, 0.1], "row_id": ["S_1_10", "S_1_5"], "sp_b": [0.6, 0.4]})


def test_partial_blend_scores_each_class_over_the_tables_that_have_it_by_hand():
    out = blend([frame_a(), specialist()], weights=[0.75, 0.25], partial=True)
    # sp_a: A alone; sp_b: 0.75 A + 0.25 specialist; sp_c: the specialist alone (weights renormalised over who scores)
    expected = pd.DataFrame({"row_id": ["S_1_5", "S_1_10"], "sp_a": [0.8, 0.4],
                             "sp_b": [0.75 * 0.0 + 0.25 * 0.4, 0.75 * 1.0 + 0.25 * 0.6], "sp_c": [0.1, 0.5]})
    pd.testing.assert_frame_equal(out, expected, check_exact=False, rtol=1e-12, atol=1e-12)
    assert np.isfinite(out[["sp_a", "sp_b", "sp_c"]].to_numpy()).all()


def test_partial_blend_of_equal_columns_is_the_plain_blend():
    pd.testing.assert_frame_equal(blend([frame_a(), frame_b()], weights=[0.75, 0.25], partial=True), EXPECTED,
                                  check_exact=False, rtol=1e-12, atol=1e-12)


def test_partial_rank_blend_ranks_only_the_cells_a_table_scores():
    out = blend([frame_a(), specialist()], weights=[1, 1], how="rank", partial=True)
    # ranks over the 2 rows: (rank - 0.5) / 2 -> 0.25 / 0.75
    np.testing.assert_allclose(out["sp_a"], [0.75, 0.25])           # A alone
    np.testing.assert_allclose(out["sp_b"], [(0.25 + 0.25) / 2, (0.75 + 0.75) / 2])
    np.testing.assert_allclose(out["sp_c"], [0.25, 0.75])           # the specialist alone


def test_unequal_columns_without_partial_name_the_flag():
    with pytest.raises(SubmissionError, match=r"class columns differ .*--partial"):
        blend([frame_a(), specialist()])


def test_partial_still_needs_the_same_rows_and_finite_scores():
    with pytest.raises(SubmissionError, match="row_ids differ"):
        blend([frame_a(), specialist().iloc[:1]], partial=True)
    broken = specialist().assign(sp_b=[np.nan, 0.2])
    with pytest.raises(SubmissionError, match=r"prediction table 1: 1 NaN .*'sp_b'"):
        blend([frame_a(), broken], partial=True)
