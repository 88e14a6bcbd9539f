"""The CLI verbs of the foundation on synthetic data: synth, check, prepare, evaluate, blend; user errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef import cli


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "data"
    assert cli.main(["synth", "--out", str(out), "--species", "3", "--clips-per-species", "2",
                     "--train-soundscapes", "1", "--test-soundscapes", "1", "--soundscape-s", "15"]) == 0
    return out


def test_synth_then_check_is_clean(synth_data: Path, capsys):
    assert cli.main(["check", str(synth_data)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("OK")


def test_check_fails_on_a_missing_audio_file(synth_data: Path, tmp_path: Path, capsys):
    train = pd.read_csv(synth_data / "train.csv")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("taxonomy.csv", "sample_submission.csv"):
        (broken / name).write_bytes((synth_data / name).read_bytes())
    (broken / "train_audio").mkdir()
    train.to_csv(broken / "train.csv", index=False)
    assert cli.main(["check", str(broken)]) == 1
    assert "missing_audio" in capsys.readouterr().out


def test_prepare_writes_a_cache_and_resumes(synth_data: Path, tmp_path: Path, capsys):
    assert cli.main(["prepare", str(synth_data), "--out", str(tmp_path / "cache"), "--num-workers", "1"]) == 0
    assert "6 clips" in capsys.readouterr().out
    assert cli.main(["prepare", str(synth_data), "--out", str(tmp_path / "cache"), "--num-workers", "1"]) == 0
    assert cli.main(["prepare", str(synth_data), "--out", str(tmp_path / "cache"), "--strategy", "first"]) == 2
    assert "error" in capsys.readouterr().err


def test_evaluate_prints_score_and_writes_json(synth_data: Path, tmp_path: Path, capsys):
    solution = pd.read_csv(synth_data / "solution.csv")
    sub = solution.copy()
    classes = sub.columns[1:]
    sub[classes] = solution[classes] * 0.8 + 0.1
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert cli.main(["evaluate", "--submission", str(tmp_path / "sub.csv"), "--solution",
                     str(synth_data / "solution.csv"), "--out", str(tmp_path / "eval.json")]) == 0
    assert "macro ROC-AUC 1.0000" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["score"] == 1.0


def test_evaluate_writes_nothing_without_out(synth_data: Path, tmp_path: Path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "sub.csv").write_bytes((synth_data / "solution.csv").read_bytes())
    assert cli.main(["evaluate", "--submission", str(data / "sub.csv"), "--solution", str(synth_data / "solution.csv")]) == 0
    assert "macro ROC-AUC" in capsys.readouterr().out
    assert [p.name for p in data.iterdir()] == ["sub.csv"]


# verb -> argv before --out, and what its --out must be; the inputs need not exist: --out is checked first
OUT_VERBS = {
    "prepare": (["prepare", "nodata"], "folder"),
    "evaluate": (["evaluate", "--submission", "a.csv", "--solution", "b.csv"], "file"),
    "synth": (["synth"], "folder"),
    "train": (["train", "--data", "nodata"], "folder"),
    "predict": (["predict", "--run", "norun", "--soundscapes", "nosc"], "file"),
    "report": (["report", "--submission", "a.csv"], "folder"),
    "demo": (["demo"], "folder"),
    "export": (["export", "--run", "norun"], "folder"),
    "package": (["package", "--model", "nomodel"], "folder"),
    "blend": (["blend", "a.csv", "b.csv"], "file"),
    "embed": (["embed", "--audio", "noaudio"], "file"),
    "thresholds": (["thresholds", "--submission", "a.csv", "--solution", "b.csv", "--f1"], "file"),
    "summarize": (["summarize", "noresults"], "folder"),
    "pseudo": (["pseudo", "--birdnet", "--soundscapes", "nosc"], "file"),
    "selftrain": (["selftrain", "--data", "nodata"], "folder"),
    "distill": (["distill", "--data", "nodata", "--birdnet"], "folder"),
}


@pytest.mark.parametrize("verb", sorted(OUT_VERBS))
def test_unusable_out_is_a_one_line_error_for_every_verb(verb: str, tmp_path: Path, capsys):
    argv, kind = OUT_VERBS[verb]
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    wrong = tmp_path / ("a_folder" if kind == "file" else "a_file")
    cases = {wrong: "is a folder, not a file" if kind == "file" else "is an existing file",
             tmp_path / "a_file" / "under": "is a file, so nothing can be created under it",
             Path("/proc/birdclef-test/out"): "cannot write in /proc"}
    for out, message in cases.items():
        assert cli.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"birdclef {verb}: error: --out {out}: ") and message in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"] and (tmp_path / "a_file").read_text() == "x"


def test_evaluate_mismatched_submission_is_a_one_line_error(synth_data: Path, tmp_path: Path, capsys):
    solution = pd.read_csv(synth_data / "solution.csv")
    solution.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    assert cli.main(["evaluate", "--submission", str(tmp_path / "short.csv"), "--solution",
                     str(synth_data / "solution.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("birdclef evaluate: error:") and "row_id" in err and "\n" not in err


def test_blend_csvs(synth_data: Path, tmp_path: Path):
    solution = pd.read_csv(synth_data / "solution.csv")
    a, b = solution.copy(), solution.copy()
    classes = list(solution.columns[1:])
    a[classes], b[classes] = 1.0, 0.0
    a.to_csv(tmp_path / "a.csv", index=False)
    b.sample(frac=1.0, random_state=0).to_csv(tmp_path / "b.csv", index=False)
    assert cli.main(["blend", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--weights", "0.75", "0.25",
                     "--out", str(tmp_path / "c.csv")]) == 0
    c = pd.read_csv(tmp_path / "c.csv")
    assert c["row_id"].tolist() == solution["row_id"].tolist() and np.allclose(c[classes], 0.75)
    # a specialist's CSV (half the classes) blends back with --partial; without it, a one-line error naming it
    special = b[["row_id"] + classes[: len(classes) // 2]]
    special.to_csv(tmp_path / "s.csv", index=False)
    assert cli.main(["blend", str(tmp_path / "a.csv"), str(tmp_path / "s.csv"), "--out", str(tmp_path / "d.csv")]) == 2
    assert cli.main(["blend", str(tmp_path / "a.csv"), str(tmp_path / "s.csv"), "--partial",
                     "--out", str(tmp_path / "d.csv")]) == 0
    d = pd.read_csv(tmp_path / "d.csv")
    half = len(classes) // 2
    assert list(d.columns) == ["row_id"] + classes
    assert np.allclose(d[classes[:half]], 0.5) and np.allclose(d[classes[half:]], 1.0)


def test_unknown_config_key_is_a_one_line_error(synth_data: Path, tmp_path: Path, capsys):
    assert cli.main(["prepare", str(synth_data), "--out", str(tmp_path / "c"), "--set", "data.windw_s=3"]) == 2
    assert "unknown config key 'data.windw_s'" in capsys.readouterr().err


def test_a_reader_that_leaves_early_ends_quietly(tmp_path, monkeypatch):
    """`birdclef blend ... | head`: the closed pipe ends the command with 141 (as a shell's SIGPIPE), no traceback."""
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    frame = pd.DataFrame({"row_id": ["S_5", "S_10"], "a": [0.1, 0.9]})
    frame.to_csv(tmp_path / "a.csv", index=False)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["blend", str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--out", str(tmp_path / "b.csv")]) == 141
