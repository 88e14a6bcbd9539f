"""A corpus of bad tables for evaluate / report / blend through the CLI: each is a one-line error (exit 2)
naming the file, never a traceback or a silently written output."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef import cli

IDS = [f"S{f}_{end}" for f in range(2) for end in (5, 10, 15)]
SOLUTION = pd.DataFrame({"row_id": IDS, "a": [1, 0, 0, 1, 0, 0], "b": [0, 1, 0, 0, 0, 1], "c": [0, 0, 1, 0, 1, 0]})
GOOD = SOLUTION.assign(a=[0.9, 0.1, 0.2, 0.8, 0.3, 0.1], b=[0.2, 0.7, 0.1, 0.3, 0.2, 0.9], c=0.5)


def _cell(value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({"a": object})
        frame.loc[2, "a"] = value
        return frame
    return change


def _dup(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[1, "row_id"] = frame.loc[0, "row_id"]
    return frame


def _other_row(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[5, "row_id"] = "S9_5"
    return frame


# kind -> (how the submission is spoiled, what evaluate / blend / report must say)
CORPUS = {
    "missing column": (lambda f: f.drop(columns="c"), r"'c'", r"missing 1 \(e.g. \['c'\]\)", None),
    "extra column": (lambda f: f.assign(d=0.1), r"not in .*'d'", r"extra 1 \(e.g. \['d'\]\)", None),
    "NaN probability": (_cell(np.nan), "NaN", "NaN or infinite", "NaN"),
    "infinite probability": (_cell(np.inf), "infinite", "NaN or infinite", "infinite"),
    "non-numeric cell": (_cell("abc"), "non-numeric", "non-numeric", "non-numeric"),
    "duplicated row_id": (_dup, "duplicated row_id", "duplicated row_id", "duplicated row_id"),
    "row missing": (lambda f: f.iloc[:-1], "missing", "missing 1", None),
    "other row set": (_other_row, "S1_15", "extra 1", None),
    "no row_id column": (lambda f: f.drop(columns="row_id"), "no 'row_id' column", "no 'row_id' column",
                         "'row_id' column"),
    "header only": (lambda f: f.iloc[:0], "missing", "missing 6", "needs rows"),
    "malformed row_id": (lambda f: f.replace({"row_id": {"S0_5": "garbage"}}), "garbage", "garbage", "garbage"),
}


def _write(tmp_path: Path, kind: str) -> tuple[Path, Path, Path]:
    sol, good, bad = tmp_path / "solution.csv", tmp_path / "good.csv", tmp_path / "bad.csv"
    SOLUTION.to_csv(sol, index=False)
    GOOD.to_csv(good, index=False)
    CORPUS[kind][0](GOOD.copy()).to_csv(bad, index=False)
    return sol, good, bad


def _one_line_error(capsys, verb: str, message: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"birdclef {verb}: error: ") and "\n" not in err and "Traceback" not in err, err
    assert "bad.csv" in err
    assert re.search(message, err), err


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_evaluate_corpus(tmp_path: Path, kind: str, capsys):
    sol, _, bad = _write(tmp_path, kind)
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--submission", str(bad), "--solution", str(sol), "--out", str(out)]) == 2
    _one_line_error(capsys, "evaluate", CORPUS[kind][1])
    assert not out.exists()


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_blend_corpus(tmp_path: Path, kind: str, capsys):
    _, good, bad = _write(tmp_path, kind)
    out = tmp_path / "blend.csv"
    assert cli.main(["blend", str(good), str(bad), "--out", str(out)]) == 2
    _one_line_error(capsys, "blend", CORPUS[kind][2])
    assert not out.exists()


@pytest.mark.parametrize("kind", sorted(k for k, v in CORPUS.items() if v[3] is not None))
def test_report_without_solution_corpus(tmp_path: Path, kind: str, capsys):
    _, _, bad = _write(tmp_path, kind)
    assert cli.main(["report", "--submission", str(bad), "--out", str(tmp_path / "rep")]) == 2
    _one_line_error(capsys, "report", CORPUS[kind][3])
    assert not (tmp_path / "rep" / "index.html").exists()


@pytest.mark.parametrize("kind", ["missing column", "row missing", "other row set", "extra column"])
def test_report_with_solution_rejects_mismatched_tables(tmp_path: Path, kind: str, capsys):
    sol, _, bad = _write(tmp_path, kind)
    assert cli.main(["report", "--submission", str(bad), "--solution", str(sol), "--out", str(tmp_path / "rep")]) == 2
    _one_line_error(capsys, "report", CORPUS[kind][1])


@pytest.mark.parametrize(("weights", "message"), [
    (["1"], "got 1 blend weights for 2"),
    (["1", "2", "3"], "got 3 blend weights for 2"),
    (["1", "-1"], "non-negative"),
    (["0", "0"], "positive sum"),
    (["nan", "1"], "finite"),
])
def test_blend_weight_errors(tmp_path: Path, weights: list[str], message: str, capsys):
    _, good, _ = _write(tmp_path, "missing column")
    out = tmp_path / "blend.csv"
    assert cli.main(["blend", str(good), str(good), "--weights", *weights, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("birdclef blend: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_solution_with_non_binary_labels(tmp_path: Path, capsys):
    sol, good, _ = _write(tmp_path, "missing column")
    SOLUTION.assign(a=[2, 0, 0, 1, 0, 0]).to_csv(sol, index=False)
    assert cli.main(["evaluate", "--submission", str(good), "--solution", str(sol)]) == 2
    assert "labels must be 0 or 1" in capsys.readouterr().err


def test_empty_and_missing_files(tmp_path: Path, capsys):
    sol, good, _ = _write(tmp_path, "missing column")
    (tmp_path / "empty.csv").write_text("")
    for argv in (["evaluate", "--submission", str(tmp_path / "empty.csv"), "--solution", str(sol)],
                 ["blend", str(good), str(tmp_path / "empty.csv"), "--out", str(tmp_path / "b.csv")],
                 ["report", "--submission", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "r")],
                 ["evaluate", "--submission", str(tmp_path / "nope.csv"), "--solution", str(sol)],
                 ["blend", str(good), str(tmp_path / "nope.csv"), "--out", str(tmp_path / "b.csv")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert ("empty.csv" in err or "nope.csv" in err) and "\n" not in err
