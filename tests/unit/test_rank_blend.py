"""Rank and quantile blends: the transforms by hand, `birdclef blend`, `birdclef predict` over all files, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SR, chirp, noise, write_ogg

from birdclef.cli import main
from birdclef.config import InferConfig, load_config
from birdclef.errors import BirdclefError
from birdclef.infer import job
from birdclef.infer.base import SinglePart, span
from birdclef.infer.blend import BlendPredictor, FilledPredictor
from birdclef.infer.ensemble import blend, blend_csvs, blend_runs
from birdclef.infer.rank import quantile_columns, rank_columns
from birdclef.models import create_model, save_checkpoint
from birdclef.zoo.build import PredictorSpec, check_spec

CLASSES = ["blabir", "eurrob", "frog"]
NAMES = {"blabir": "Turdus merula", "eurrob": "Erithacus rubecula", "frog": "Rana temporaria"}
RAW = InferConfig(smoothing=False, power_adjust=False)
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null"]
NO_POSTPROCESS = ["--set", "infer.smoothing=false", "infer.power_adjust=false"]

# ------------------------------------------------------------------ the transforms by hand


def test_rank_columns_average_ties_and_leave_nan_out():
    values = np.array([[0.1, 0.7, np.nan],
                       [0.1, np.nan, np.nan],
                       [0.9, 0.2, np.nan],
                       [0.4, 0.2, np.nan]])
    expected = np.array([[1.5, 3.0, np.nan],   # ranks: ties share their mean rank
                         [1.5, np.nan, np.nan],
                         [4.0, 1.5, np.nan],
                         [3.0, 1.5, np.nan]])
    expected = (expected - 0.5) / np.array([4, 3, 1])  # (rank - 0.5) / n, n: the column's scored rows
    np.testing.assert_allclose(rank_columns(values), expected, equal_nan=True)
    np.testing.assert_allclose(rank_columns(np.full((5, 1), 0.5)), 0.5)  # a constant column (a fill) is 0.5


def test_quantile_columns_map_onto_the_pooled_scores():
    a = np.array([[0.1], [0.2], [0.3]])
    b = np.array([[10.0], [30.0], [20.0]])
    # pooled 0.1 0.2 0.3 10 20 30; ranks 1, 2, 3 of 3 -> Hazen positions 0.5, 2.5, 4.5 of the 6 sorted values
    qa, qb = quantile_columns([a, b])
    np.testing.assert_allclose(qa[:, 0], [0.15, 5.15, 25.0])
    np.testing.assert_allclose(qb[:, 0], [0.15, 25.0, 5.15])
    same = np.array([[0.3, 0.2], [0.1, 0.2], [0.7, 0.9]])
    for out in quantile_columns([same, same, same]):  # members that agree keep their scores
        np.testing.assert_allclose(out, same)
    unscored = np.full((3, 1), np.nan)
    qa, qn = quantile_columns([a, unscored])  # a NaN member adds nothing to the pool
    np.testing.assert_allclose(qa, a)
    assert np.isnan(qn).all()


def test_a_member_that_leaves_a_class_nan_takes_no_part_in_it():
    own = np.array([[0.9, 0.1], [0.5, 0.2], [0.1, 0.3]])
    zero_shot = np.array([[0.2, np.nan], [0.6, np.nan], [0.4, np.nan]])
    blended = blend_runs([own, zero_shot], [0.8, 0.2], "rank")
    rank_own = (np.array([[3, 1], [2, 2], [1, 3]]) - 0.5) / 3
    rank_zero = (np.array([1, 3, 2]) - 0.5) / 3
    np.testing.assert_allclose(blended[:, 0], 0.8 * rank_own[:, 0] + 0.2 * rank_zero)
    np.testing.assert_allclose(blended[:, 1], rank_own[:, 1])  # weights renormalised over the member scoring it
    np.testing.assert_array_equal(blend_runs([own, zero_shot], [0.8, 0.2]), blend_runs([own, zero_shot], [0.8, 0.2],
                                                                                         "mean"))


# ------------------------------------------------------------------ birdclef blend (CSVs)


def _table(row_ids: list[str], values: np.ndarray, columns=("a", "b")) -> pd.DataFrame:
    frame = pd.DataFrame(values, columns=list(columns))
    frame.insert(0, "row_id", row_ids)
    return frame


def test_blend_csvs_rank_by_hand_on_shuffled_rows(tmp_path: Path):
    ids = ["S_5", "S_10", "S_15", "T_5"]
    first = _table(ids, np.array([[0.9, 0.3], [0.2, 0.3], [0.4, 0.1], [0.1, 0.8]]))
    second = _table(ids, np.array([[0.05, 0.5], [0.01, 0.6], [0.02, 0.7], [0.03, 0.4]])).iloc[[2, 0, 3, 1]]
    first.to_csv(tmp_path / "a.csv", index=False)
    second[["row_id", "b", "a"]].to_csv(tmp_path / "b.csv", index=False)  # other row and column order
    out = blend_csvs([tmp_path / "a.csv", tmp_path / "b.csv"], [3, 1], tmp_path / "rank.csv", how="rank")
    rank_a = np.array([[4, 2.5], [2, 2.5], [3, 1], [1, 4]])  # first's ranks, in first's row order
    rank_b = np.array([[4, 2], [1, 3], [2, 4], [3, 1]])  # second's ranks of the same rows
    expected = 0.75 * (rank_a - 0.5) / 4 + 0.25 * (rank_b - 0.5) / 4
    assert out["row_id"].tolist() == ids
    np.testing.assert_allclose(out[["a", "b"]].to_numpy(), expected)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "rank.csv")[["a", "b"]].to_numpy(), expected)
    quantile = blend([first, second], [3, 1], how="quantile")  # of the pooled scores: a probability scale
    assert quantile["a"].idxmax() == 0 and quantile["b"].idxmax() == 3


def test_mean_blend_of_csvs_stays_byte_identical(tmp_path: Path, capsys: pytest.CaptureFixture):
    ids = ["S_5", "S_10", "S_15"]
    _table(ids, np.array([[0.9, 0.3], [0.2, 0.3], [0.4, 0.1]])).to_csv(tmp_path / "a.csv", index=False)
    _table(ids, np.array([[0.1, 0.5], [0.7, 0.6], [0.3, 0.7]])).to_csv(tmp_path / "b.csv", index=False)
    csvs = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert main(["blend", *csvs, "--weights", "3", "1", "--out", str(tmp_path / "default.csv")]) == 0
    assert main(["blend", *csvs, "--weights", "3", "1", "--blend", "mean", "--out", str(tmp_path / "mean.csv")]) == 0
    assert (tmp_path / "default.csv").read_bytes() == (tmp_path / "mean.csv").read_bytes()
    expected = 0.75 * np.array([[0.9, 0.3], [0.2, 0.3], [0.4, 0.1]]) + 0.25 * np.array([[0.1, 0.5], [0.7, 0.6],
                                                                                         [0.3, 0.7]])
    np.testing.assert_allclose(pd.read_csv(tmp_path / "mean.csv")[["a", "b"]].to_numpy(), expected)
    assert main(["blend", *csvs, "--blend", "rank", "--out", str(tmp_path / "rank.csv")]) == 0
    assert "rank blend" in capsys.readouterr().out


def test_blend_refuses_nan_and_unknown_blends_in_every_mode(tmp_path: Path):
    ids = ["S_5", "S_10"]
    good, holed = _table(ids, np.array([[0.1, 0.2], [0.3, 0.4]])), _table(ids, np.array([[0.1, np.nan], [0.3, 0.4]]))
    with pytest.raises(BirdclefError, match="NaN or infinite"):
        blend([good, holed], how="rank")
    with pytest.raises(BirdclefError, match="unknown blend 'median'"):
        blend([good, good], how="median")


# ------------------------------------------------------------------ birdclef predict over all files


def _torch_run(root: Path, seed: int) -> Path:
    """An untrained tiny torch run (one fold) scoring CLASSES."""
    config = load_config(None, TINY)
    torch.manual_seed(seed)
    save_checkpoint(root / "fold0" / "best.pt", create_model(config.model, len(CLASSES)), config, CLASSES, epoch=0,
                    score=0.5)
    (root / "fold0" / "done.json").write_text(json.dumps({"fold": 0}))
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny torch runs, a dataset folder for the placeholder foundation model, three soundscapes."""
    root = tmp_path_factory.mktemp("rank")
    data = root / "data"
    data.mkdir()
    pd.DataFrame({"primary_label": CLASSES, "scientific_name": [NAMES[c] for c in CLASSES]}).to_csv(
        data / "taxonomy.csv", index=False)
    soundscapes = root / "ss"
    write_ogg(soundscapes / "S1.ogg", chirp(15.0, 1_000, 8_000))
    write_ogg(soundscapes / "S2.ogg", noise(10.0, seed=2) + 0.3 * chirp(10.0, 3_000, 3_000, noise=0.0))
    write_ogg(soundscapes / "S3.ogg", noise(12.0, seed=3, level=0.05))
    return {"a": _torch_run(root / "run_a", 1), "b": _torch_run(root / "run_b", 2), "data": data,
            "soundscapes": soundscapes}


def _predict(bench: dict[str, Path], out: Path, *flags: str) -> pd.DataFrame:
    argv = ["predict", "--soundscapes", str(bench["soundscapes"]), "--out", str(out), "--device", "cpu",
            "--no-progress", *flags]
    assert main(argv) == 0
    return pd.read_csv(out)


def _members(bench: dict[str, Path], runs_flag: str = "--run") -> list[str]:
    return [runs_flag, str(bench["a"]), runs_flag, str(bench["b"]), "--birdnet", "--birdnet-model", "placeholder",
            "--data", str(bench["data"])]


def test_predict_rank_blend_ranks_each_member_over_all_files(bench: dict[str, Path], tmp_path: Path):
    alone = [_predict(bench, tmp_path / "a.csv", "--run", str(bench["a"]), *NO_POSTPROCESS),
             _predict(bench, tmp_path / "b.csv", "--run", str(bench["b"]), *NO_POSTPROCESS),
             _predict(bench, tmp_path / "p.csv", "--birdnet", "--birdnet-model", "placeholder", "--data",
                      str(bench["data"]))]
    ranked = _predict(bench, tmp_path / "rank.csv", *_members(bench), "--weights", "2", "1", "1", "--blend", "rank",
                      *NO_POSTPROCESS)
    assert ranked["row_id"].tolist() == alone[0]["row_id"].tolist() and len(ranked) == 3 + 2 + 3
    by_hand = sum(w * (pd.DataFrame(m[CLASSES]).rank().to_numpy() - 0.5) / len(m)  # ranks over all 8 rows
                  for w, m in zip([0.5, 0.25, 0.25], alone))
    np.testing.assert_allclose(ranked[CLASSES].to_numpy(), by_hand, atol=1e-6)
    per_file = np.concatenate([sum(w * (pd.DataFrame(m.loc[rows, CLASSES]).rank().to_numpy() - 0.5) / rows.sum()
                                   for w, m in zip([0.5, 0.25, 0.25], alone))
                               for rows in (alone[0]["row_id"].str[:2] == s for s in ("S1", "S2", "S3"))])
    assert not np.allclose(ranked[CLASSES].to_numpy(), per_file, atol=1e-3)  # not ranked file by file
    quantile = _predict(bench, tmp_path / "quantile.csv", *_members(bench), "--blend", "quantile", *NO_POSTPROCESS)
    by_hand = sum(m / 3 for m in quantile_columns([m[CLASSES].to_numpy() for m in alone]))
    np.testing.assert_allclose(quantile[CLASSES].to_numpy(), by_hand, atol=1e-6)


def test_predict_mean_blend_stays_byte_identical(bench: dict[str, Path], tmp_path: Path):
    _predict(bench, tmp_path / "default.csv", *_members(bench), "--weights", "2", "1", "1")
    _predict(bench, tmp_path / "mean.csv", *_members(bench), "--weights", "2", "1", "1", "--blend", "mean")
    assert (tmp_path / "default.csv").read_bytes() == (tmp_path / "mean.csv").read_bytes()


def test_rank_blend_resumes_from_the_runs_parts(bench: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "sub.csv"
    real = job.iter_run_outputs

    def dies_after_first_file(*args, **kwargs):
        for k, item in enumerate(real(*args, **kwargs)):
            if k == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(job, "iter_run_outputs", dies_after_first_file)
    flags = ["--run", str(bench["a"]), "--run", str(bench["b"]), "--blend", "rank", *NO_POSTPROCESS]
    assert main(["predict", "--soundscapes", str(bench["soundscapes"]), "--out", str(out), "--no-progress",
                 *flags]) == 130  # interrupted after the first file
    (part,) = out.with_name(".sub.csv.parts").glob("part-*.parquet")
    stacked = pd.read_parquet(part)
    assert stacked["run"].tolist() == [0, 0, 0, 1, 1, 1] and list(stacked.columns) == ["run", "row_id", *CLASSES]
    monkeypatch.setattr(job, "iter_run_outputs", real)
    resumed = _predict(bench, out, *flags)
    pd.testing.assert_frame_equal(resumed, _predict(bench, tmp_path / "fresh.csv", *flags))


class Ramp(SinglePart):
    """Row k of a file scores `scale` * (k + 1) for class a and a constant for class b (NaN with `unscored`)."""

    classes, sample_rate = ["a", "b"], SR

    def __init__(self, scale: float, config: InferConfig, unscored: bool = False):
        self.scale, self.config, self.weights = scale, config, np.ones(1)
        self.lead, self.length = span(SR, 5.0)
        self.unscored = ["b"] if unscored else []

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        out = np.stack([self.scale * np.arange(1, len(spans) + 1), np.full(len(spans), 0.3)], axis=1)
        return [np.where([False, bool(self.unscored)], np.nan, out)]

    def settings(self) -> dict:
        return {"ramp": self.scale}


@pytest.mark.parametrize("stage", ["per_model", "blend"])
def test_blend_rows_of_a_mean_blend_are_its_file_predictions(stage: str):
    config = InferConfig(smoothing=True, power_adjust=False, postprocess_stage=stage)
    members = [Ramp(0.1, config), Ramp(0.05, config, unscored=True)]
    predictor = FilledPredictor(BlendPredictor(members, [3, 1], config), 0.5)
    waves = [np.zeros(15 * SR, np.float32), np.zeros(20 * SR, np.float32)]
    runs = [predictor.run_outputs(w) for w in waves]
    stacked = predictor.blend_rows([np.concatenate(r) for r in zip(*runs)], [len(r[0]) for r in runs])
    np.testing.assert_allclose(stacked, np.concatenate([predictor.predict_file(w) for w in waves]))


# ------------------------------------------------------------------ what cannot rank over all rows


def test_blends_over_all_rows_are_refused_where_they_cannot_be(bench: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture):
    ranked = BlendPredictor([Ramp(0.1, RAW), Ramp(0.2, RAW)], None, RAW, blend="rank")
    assert ranked.settings()["blend"] == "rank" and "blend" not in BlendPredictor([Ramp(0.1, RAW)], None,
                                                                                   RAW).settings()
    with pytest.raises(BirdclefError, match="over all files"):
        ranked.predict_file(np.zeros(10 * SR, np.float32))
    from birdclef.archive.scorers import window_scorer

    with pytest.raises(BirdclefError, match="only take a mean blend"):
        window_scorer(ranked)
    with pytest.raises(BirdclefError, match="two or more runs"):
        BlendPredictor([Ramp(0.1, RAW)], None, RAW, blend="rank")
    with pytest.raises(BirdclefError, match="nothing to blend"):
        check_spec(PredictorSpec(runs=(bench["a"],), blend="rank"))
    for argv in (["analyze", str(bench["soundscapes"]), "--out", str(tmp_path / "results"), *_members(bench)],
                 ["pseudo", "--soundscapes", str(bench["soundscapes"]), "--out", str(tmp_path / "pseudo.parquet"),
                  *_members(bench, "--teacher")]):
        assert main([*argv, "--blend", "rank"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "scores each recording on its own" in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "pseudo.parquet").exists()
