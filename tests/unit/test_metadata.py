"""train.csv parsing, class lists and multi-hot targets (birdclef.data.metadata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from birdclef.data.metadata import (
    DatasetLayout,
    label_matrix,
    load_classes,
    load_train_table,
    parse_secondary_labels,
)
from birdclef.errors import DatasetError


def test_layout_uses_competition_names(tmp_path: Path) -> None:
    layout = DatasetLayout.from_root(tmp_path)
    assert layout.train_csv == tmp_path / "train.csv"
    assert layout.sample_submission_csv == tmp_path / "sample_submission.csv"
    assert layout.train_audio == tmp_path / "train_audio"
    assert layout.test_soundscapes == tmp_path / "test_soundscapes"


def test_layout_rejects_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        DatasetLayout.from_root(tmp_path / "nope")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("['a', 'b']", ["a", "b"]),
        ('["a","b"]', ["a", "b"]),
        ("[]", []),
        ("['']", []),
        ("", []),
        ("   ", []),
        (float("nan"), []),
        (None, []),
        (["a", " b ", ""], ["a", "b"]),
        ("a b", ["a", "b"]),
        ("  a   b ", ["a", "b"]),
        ("[' a ', '', 'b']", ["a", "b"]),
        ("['o\\'brien', 'c']", ["o'brien", "c"]),
        ("['1139490', 'grekis']", ["1139490", "grekis"]),
    ],
)
def test_parse_secondary_labels_accepts_every_known_form(value: object, expected: list[str]) -> None:
    assert parse_secondary_labels(value) == expected
    assert parse_secondary_labels(value, strict=True) == expected


@pytest.mark.parametrize(
    ("value", "best_effort"),
    [("['a', 'b'", ["a", "b"]), ("['a', ", ["a"]), ({"a": 1}, ["a"]), ("[a, b]", ["a", "b"]), ("{'x': 1}", ["x"])],
)
def test_parse_secondary_labels_malformed(value: object, best_effort: list[str]) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_secondary_labels(value, strict=True)
    assert parse_secondary_labels(value) == best_effort


def test_parse_secondary_labels_returns_a_fresh_list_each_call() -> None:
    first = parse_secondary_labels("['a']")
    first.append("mutated")
    assert parse_secondary_labels("['a']") == ["a"]


def _write_train(tmp_path: Path, rows: list[dict], name: str = "train.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_load_train_table_normalises_columns(tmp_path: Path) -> None:
    path = _write_train(tmp_path, [
        {"primary_label": "007", "secondary_labels": "['b']", "filename": "007/x.ogg", "rating": 4.5},
        {"primary_label": "1139490", "secondary_labels": "['']", "filename": "1139490/y.ogg", "rating": None},
    ])
    df = load_train_table(path)
    assert df["primary_label"].tolist() == ["007", "1139490"]  # strings: leading zero kept
    assert df["secondary_labels"].tolist() == [["b"], []]
    assert df["rating"].tolist() == [4.5, 0.0]


def test_load_train_table_fills_missing_optional_columns(tmp_path: Path) -> None:
    path = _write_train(tmp_path, [{"primary_label": "a", "filename": "a/1.ogg"}])
    df = load_train_table(path)
    assert df["secondary_labels"].tolist() == [[]]
    assert df["rating"].tolist() == [0.0]


def test_load_train_table_names_file_and_missing_columns(tmp_path: Path) -> None:
    path = _write_train(tmp_path, [{"primary_label": "a", "path": "a/1.ogg"}])
    with pytest.raises(DatasetError, match=r"train\.csv.*'filename'"):
        load_train_table(path)
    with pytest.raises(DatasetError, match="not found"):
        load_train_table(tmp_path / "absent.csv")


def test_load_train_table_max_files_covers_classes_first(tmp_path: Path) -> None:
    rows = [{"primary_label": label, "filename": f"{label}/{i}.ogg"} for label in "abc" for i in range(4)]
    df = load_train_table(_write_train(tmp_path, rows), max_files=5)
    assert df["filename"].tolist() == ["a/0.ogg", "a/1.ogg", "b/0.ogg", "b/1.ogg", "c/0.ogg"]
    with pytest.raises(ValueError, match="max_files"):
        load_train_table(_write_train(tmp_path, rows), max_files=0)


def _layout(tmp_path: Path, submission: str | None = None, taxonomy: str | None = None) -> DatasetLayout:
    if submission is not None:
        (tmp_path / "sample_submission.csv").write_text(submission)
    if taxonomy is not None:
        (tmp_path / "taxonomy.csv").write_text(taxonomy)
    return DatasetLayout.from_root(tmp_path)


def test_load_classes_follows_sample_submission_order(tmp_path: Path) -> None:
    layout = _layout(tmp_path, "row_id,zeta,alpha,mid\ns_5,0,0,0\n", "primary_label\nalpha\nmid\nzeta\n")
    assert load_classes(layout) == ["zeta", "alpha", "mid"]


def test_load_classes_falls_back_to_taxonomy_then_train(tmp_path: Path) -> None:
    assert load_classes(_layout(tmp_path, taxonomy="primary_label,class_name\nb,Aves\n10,Aves\n")) == ["b", "10"]
    (tmp_path / "taxonomy.csv").unlink()
    _write_train(tmp_path, [{"primary_label": p, "filename": f"{p}/x.ogg"} for p in ["c", "a", "c", "b"]])
    assert load_classes(DatasetLayout.from_root(tmp_path)) == ["a", "b", "c"]
    (tmp_path / "train.csv").unlink()
    with pytest.raises(DatasetError, match="sample_submission.csv, taxonomy.csv or train.csv"):
        load_classes(DatasetLayout.from_root(tmp_path))


@pytest.mark.parametrize(
    ("header", "message"),
    [("id,a,b", "no 'row_id'"), ("row_id,a,b,a", r"duplicate.*\['a'\]"), ("row_id", "no classes"), ("row_id,a,,b", "blank")],
)
def test_load_classes_rejects_bad_sample_submission(tmp_path: Path, header: str, message: str) -> None:
    layout = _layout(tmp_path, header + "\n")
    with pytest.raises(DatasetError, match=message) as info:
        load_classes(layout)
    assert "sample_submission.csv" in str(info.value)


def test_load_classes_rejects_duplicate_taxonomy_labels(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"taxonomy\.csv: duplicate"):
        load_classes(_layout(tmp_path, taxonomy="primary_label\na\nb\na\n"))


def test_label_matrix_primary_and_weighted_secondary() -> None:
    target = label_matrix(["a", "b", "c"], [["b"], ["a", "b"], []], ["a", "b", "c"], secondary_weight=0.5)
    expected = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    assert target.dtype == np.float32
    np.testing.assert_array_equal(target, expected)


def test_label_matrix_unknown_labels() -> None:
    with pytest.raises(DatasetError, match=r"secondary.*'zzz' \(row 1\)"):
        label_matrix(["a", "b"], [[], ["zzz"]], ["a", "b"])
    target = label_matrix(["a", "b"], [[], ["zzz", "a"]], ["a", "b"], ignore_unknown=True)
    np.testing.assert_array_equal(target, [[1.0, 0.0], [1.0, 1.0]])
    with pytest.raises(DatasetError, match=r"primary.*'q' \(row 0\)"):
        label_matrix(["q"], [[]], ["a", "b"], ignore_unknown=True)


def test_label_matrix_validates_arguments() -> None:
    with pytest.raises(ValueError, match="rows"):
        label_matrix(["a"], [[], []], ["a"])
    with pytest.raises(ValueError, match="secondary_weight"):
        label_matrix(["a"], [[]], ["a"], secondary_weight=1.5)
    assert label_matrix([], [], ["a", "b"]).shape == (0, 2)


def test_real_birdclef2025_labels_parse() -> None:
    path = SHARED_DATA / "birdclef2025-metadata" / "train_labels_partial.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    df = load_train_table(path)
    assert len(df) == 28_542
    parsed_by_author = df["parsed_secondary_labels"].map(parse_secondary_labels)
    assert df["secondary_labels"].tolist() == parsed_by_author.tolist()
    assert (df["secondary_labels"].map(len) > 0).sum() == 28_542 - 25_888
