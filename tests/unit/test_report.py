"""The HTML report and its figures on a tiny synthetic case: 2 soundscapes of 20 s, 3 classes, 2 folds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from birdclef.errors import DatasetError, SubmissionError
from birdclef.eval.metrics import macro_roc_auc
from birdclef.eval.plots import plot_class_auc, plot_detections, plot_training_curves, split_row_ids
from birdclef.eval.report import write_report
from conftest import SR, chirp, write_ogg

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["aaa", "bbb", "c<c&"]  # the third name checks HTML escaping
STEMS = ["XC_A_1", "XC_B_2"]  # underscores inside stems: row_id is split on the last one
# 4 windows per file; file B holds more labels than file A, so it is chosen first with a solution.
LABELS = np.array([
    [1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0],  # XC_A_1: 3 labelled cells
    [0, 1, 0], [1, 1, 0], [0, 1, 1], [1, 0, 1],  # XC_B_2: 7 labelled cells
])


def _probs() -> np.ndarray:
    """Informative but imperfect scores: labels * 0.3 + uniform noise * 0.7, seeded."""
    return LABELS * 0.3 + np.random.default_rng(0).uniform(size=LABELS.shape) * 0.7


def _table(values: np.ndarray) -> pd.DataFrame:
    row_ids = [f"{stem}_{end}" for stem in STEMS for end in (5, 10, 15, 20)]
    return pd.DataFrame(values, columns=CLASSES).assign(row_id=row_ids)[["row_id", *CLASSES]]


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """submission.csv, solution.csv, run/{metrics.csv, summary.json} and sounds/<stem>.ogg under tmp_path."""
    _table(_probs()).to_csv(tmp_path / "submission.csv", index=False)
    _table(LABELS).to_csv(tmp_path / "solution.csv", index=False)
    for i, stem in enumerate(STEMS):
        write_ogg(tmp_path / "sounds" / f"{stem}.ogg", chirp(20.0, 1_000 * (i + 1), 4_000 * (i + 1), seed=i))
    run = tmp_path / "run"
    run.mkdir()
    epochs = [{"fold": f, "epoch": e, "lr": 1e-3, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.6 - 0.05 * e,
               "val_auc": 0.6 + 0.1 * e + 0.01 * f} for f in (0, 1) for e in range(3)]
    pd.DataFrame(epochs).to_csv(run / "metrics.csv", index=False)
    (run / "summary.json").write_text(json.dumps({"fold_scores": {"0": 0.8120, "1": 0.8240}, "oof_auc": 0.8011}))
    return {"submission": tmp_path / "submission.csv", "solution": tmp_path / "solution.csv",
            "run": run, "soundscapes": tmp_path / "sounds", "out": tmp_path / "report"}


def _images(index: Path) -> list[Path]:
    """The PNGs index.html shows, after checking that each exists and is a decodable PNG."""
    sources = re.findall(r'<img src="([^"]+)"', index.read_text())
    paths = [index.parent / src for src in sources]
    for path in paths:
        assert path.is_file(), path
        assert path.stat().st_size > len(PNG_SIGNATURE) and path.read_bytes()[:8] == PNG_SIGNATURE, path
        assert mpimg.imread(path).ndim == 3
    return paths


def test_full_report_shows_score_table_curves_and_detections(inputs: dict[str, Path]) -> None:
    index = write_report(inputs["out"], inputs["submission"], inputs["solution"], inputs["run"], inputs["soundscapes"])
    assert index == inputs["out"] / "index.html"
    text = index.read_text()
    names = [p.name for p in _images(index)]
    assert "class_auc.png" in names and "training_curves.png" in names
    assert [n for n in names if n.startswith("detections_")] == ["detections_00_XC_B_2.png", "detections_01_XC_A_1.png"]
    assert f'<span class="score">{macro_roc_auc(LABELS, _probs()):.4f}</span>' in text  # 0.7431
    for k, name in enumerate(("aaa", "bbb", "c&lt;c&amp;")):
        auc = macro_roc_auc(LABELS[:, [k]], _probs()[:, [k]])
        assert f'<tr><td>{name}</td><td class="num">{auc:.4f}</td>' in text
    assert "c<c&" not in text
    assert "0.8120" in text and "0.8240" in text and "0.8011" in text and "0.8180" in text  # folds, OOF, mean


def test_missing_and_broken_soundscapes_are_noted_not_raised(inputs: dict[str, Path]) -> None:
    (inputs["soundscapes"] / "XC_A_1.ogg").unlink()
    (inputs["soundscapes"] / "XC_B_2.ogg").write_bytes(b"not an ogg file")
    index = write_report(inputs["out"], inputs["submission"], inputs["solution"], soundscapes=inputs["soundscapes"])
    text = index.read_text()
    assert "XC_A_1.ogg: file not found" in text
    assert "XC_B_2.ogg: cannot decode" in text
    assert not [p for p in _images(index) if p.name.startswith("detections_")]


def test_page_renders_without_solution_run_or_audio(inputs: dict[str, Path]) -> None:
    index = write_report(inputs["out"], inputs["submission"])
    text = index.read_text()
    assert _images(index) == []
    assert "Macro ROC-AUC" not in text and "Training" not in text
    assert "<td>rows (5 s windows)</td><td>8</td>" in text and "<td>classes</td><td>3</td>" in text
    assert "no soundscape folder given" in text


def test_default_files_follow_submission_order_without_solution(inputs: dict[str, Path]) -> None:
    index = write_report(inputs["out"], inputs["submission"], soundscapes=inputs["soundscapes"], max_files=1)
    assert [p.name for p in _images(index)] == ["detections_00_XC_A_1.png"]


def test_explicit_files_and_top_k(inputs: dict[str, Path]) -> None:
    index = write_report(inputs["out"], inputs["submission"], soundscapes=inputs["soundscapes"],
                         files=["XC_B_2"], top_k=1)
    assert [p.name for p in _images(index)] == ["detections_00_XC_B_2.png"]
    assert "Top 1 classes" in index.read_text()


def test_training_section_notes_a_missing_summary(inputs: dict[str, Path]) -> None:
    (inputs["run"] / "summary.json").unlink()
    index = write_report(inputs["out"], inputs["submission"], run=inputs["run"])
    assert "summary.json: not found" in index.read_text()
    assert [p.name for p in _images(index)] == ["training_curves.png"]


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"submission": "missing.csv"}, SubmissionError, "submission file not found"),
    ({"solution": "missing.csv"}, SubmissionError, "solution file not found"),
    ({"run": "no_run"}, DatasetError, "training run folder not found"),
    ({"soundscapes": "no_sounds"}, DatasetError, "soundscape folder not found"),
    ({"files": ["XC_C_3"]}, SubmissionError, "no rows for soundscape"),
])
def test_bad_inputs_raise_clear_errors(inputs: dict[str, Path], change: dict, error: type, message: str) -> None:
    kwargs = {key: inputs[key] for key in ("submission", "solution", "run", "soundscapes")}
    kwargs.update({k: inputs["out"].parent / v if isinstance(v, str) else v for k, v in change.items()})
    with pytest.raises(error, match=message):
        write_report(inputs["out"], **kwargs)
    assert not (inputs["out"] / "index.html").exists()


def test_malformed_row_id_and_empty_run_folder_raise(inputs: dict[str, Path]) -> None:
    frame = pd.read_csv(inputs["submission"])
    frame.loc[0, "row_id"] = "XC_A_1_end"
    frame.to_csv(inputs["submission"], index=False)
    with pytest.raises(SubmissionError, match="XC_A_1_end"):
        write_report(inputs["out"], inputs["submission"])
    empty = inputs["run"].parent / "empty_run"
    empty.mkdir()
    with pytest.raises(DatasetError, match="not a training run folder"):
        write_report(inputs["out"], inputs["solution"], run=empty)


def test_split_row_ids_splits_on_the_last_underscore() -> None:
    stems, ends = split_row_ids(["XCB_DEV_000_5", "a_60", "s_2.5"])
    assert stems == ["XCB_DEV_000", "a", "s"]
    assert ends.tolist() == [5.0, 60.0, 2.5]
    for bad in ("nounderscore", "_5", "stem_x"):
        with pytest.raises(ValueError, match="soundscape_stem"):
            split_row_ids([bad])


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_detections_accepts_unordered_rows_and_gaps_and_rejects_off_grid_ends(tmp_path: Path) -> None:
    wave = chirp(20.0, 1_000, 4_000)
    probs = _table(_probs()).iloc[[2, 0, 3]]  # XC_A_1 windows 15, 5, 20: out of order, 10 missing
    truth = _table(LABELS).iloc[:4].assign(Usage="Public")  # a Kaggle split column is not a class
    assert _is_png(plot_detections(wave, SR, probs, tmp_path / "d.png", top_k=2, truth=truth, title="XC_A_1"))
    off_grid = probs.assign(row_id=["XC_A_1_7", "XC_A_1_5", "XC_A_1_20"])
    with pytest.raises(ValueError, match="multiples of 5"):
        plot_detections(wave, SR, off_grid, tmp_path / "e.png")
    with pytest.raises(ValueError, match="duplicated windows"):
        plot_detections(wave, SR, probs.assign(row_id="XC_A_1_5"), tmp_path / "f.png")
    assert not (tmp_path / "e.png").exists() and not (tmp_path / "f.png").exists()


def test_plot_training_curves_and_class_auc_handle_gaps_and_skips(tmp_path: Path) -> None:
    metrics = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [0.9, 0.5, 0.4], "val_auc": [np.nan] * 3})
    assert _is_png(plot_training_curves(metrics, tmp_path / "curves.png"))  # no fold column, AUC never recorded
    with pytest.raises(ValueError, match="train_loss"):
        plot_training_curves(metrics[["epoch"]], tmp_path / "none.png")
    per_class = pd.DataFrame({"class": ["a", "b", "c"], "auc": [0.9, np.nan, 0.4], "scored": [True, False, True],
                              "reason": ["", "no positives", ""]})
    assert _is_png(plot_class_auc(per_class, tmp_path / "auc.png"))
    with pytest.raises(ValueError, match="reason"):
        plot_class_auc(per_class.drop(columns="reason"), tmp_path / "bad.png")
