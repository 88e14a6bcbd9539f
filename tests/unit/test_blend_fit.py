"""`blend --fit`: the weight grid, files kept whole in the cross-validation, the picks against a brute force with
scikit-learn, complementary members beat each alone out of fold, a useless member gets no weight, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from birdclef.cli import main
from birdclef.errors import BirdclefError
from birdclef.infer.blend_fit import deal_files, fit_blend, weight_grid
from birdclef.infer.rank import rank_columns

CLASSES = ["frog", "robin", "cicada"]
FILES, WINDOWS = 12, 12


def _labelled(seed: int = 0):
    """(target, row_ids): 12 files of 12 windows, each class calling in about a fifth of the windows."""
    rng = np.random.default_rng(seed)
    row_ids = [f"S{f:02d}_{5 * (w + 1)}" for f in range(FILES) for w in range(WINDOWS)]
    target = (rng.random((len(row_ids), len(CLASSES))) < 0.2).astype(np.int8)
    target[0], target[1] = 1, 0  # every class has a positive and a negative in the first file
    return target, row_ids


def _sk_macro(target: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> float:
    t, s = target[rows], scores[rows]
    return float(np.mean([roc_auc_score(t[:, k], s[:, k]) for k in range(t.shape[1]) if 0 < t[:, k].sum() < len(t)]))


def test_weight_grid_covers_the_simplex_first_member_first():
    grid = weight_grid(2, 0.25)
    assert grid.tolist() == [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]]
    three = weight_grid(3, 0.05)
    assert len(three) == 231 and np.allclose(three.sum(axis=1), 1.0) and (three >= 0).all()
    assert len({tuple(row) for row in three.round(6)}) == 231
    with pytest.raises(BirdclefError, match="divide 1"):
        weight_grid(2, 0.3)
    with pytest.raises(BirdclefError, match="2 to 4"):
        weight_grid(5, 0.25)
    with pytest.raises(BirdclefError, match="coarser step"):
        weight_grid(4, 0.01)


def test_files_are_dealt_evenly_and_reproducibly():
    fold = deal_files(12, 5, seed=3)
    assert sorted(np.bincount(fold).tolist()) == [2, 2, 2, 3, 3]
    assert (deal_files(12, 5, seed=3) == fold).all() and not (deal_files(12, 5, seed=4) == fold).all()


def test_each_fold_uses_the_weights_best_on_the_other_files():
    target, row_ids = _labelled()
    rng = np.random.default_rng(1)
    a = target + rng.normal(0, 0.8, target.shape)
    b = target + rng.normal(0, 0.8, target.shape)
    fit = fit_blend([a, b], target, row_ids, CLASSES, how="rank", step=0.25, folds=3, n_resamples=50)
    grid = weight_grid(2, 0.25)
    ranked = [rank_columns(a), rank_columns(b)]
    files = np.array([int(r[1:3]) for r in row_ids])
    row_fold = deal_files(FILES, 3, 0)[files]
    out_of_fold = np.empty(a.shape)
    for f in range(3):
        sk = [_sk_macro(target, w[0] * ranked[0] + w[1] * ranked[1], row_fold != f) for w in grid]
        best = int(np.flatnonzero(np.isclose(sk, max(sk)))[0])
        assert fit.fold_weights[f].tolist() == grid[best].tolist()
        rows = row_fold == f
        out_of_fold[rows] = grid[best][0] * ranked[0][rows] + grid[best][1] * ranked[1][rows]
    everything = np.ones(len(row_ids), dtype=bool)
    assert fit.cv_score == pytest.approx(_sk_macro(target, out_of_fold, everything), abs=1e-9)
    sk_all = [_sk_macro(target, w[0] * ranked[0] + w[1] * ranked[1], everything) for w in grid]
    assert fit.fit_score == pytest.approx(max(sk_all), abs=1e-9)
    assert fit.member_scores == pytest.approx([_sk_macro(target, m, everything) for m in (a, b)], abs=1e-9)


def test_complementary_members_beat_each_alone_out_of_fold():
    target, row_ids = _labelled(2)
    rng = np.random.default_rng(5)
    a = target + rng.normal(0, 1.0, target.shape)  # two independent noisy views of the same calls
    b = target + rng.normal(0, 1.0, target.shape)
    fit = fit_blend([a, b], target, row_ids, CLASSES, step=0.1, folds=4, n_resamples=200)
    assert 0.2 <= fit.weights[0] <= 0.8
    assert fit.cv_score > max(fit.member_scores) + 0.02
    assert fit.comparison.comparison.difference.estimate == pytest.approx(fit.cv_score - max(fit.member_scores))


def test_a_member_of_pure_noise_gets_no_weight():
    target, row_ids = _labelled(3)
    rng = np.random.default_rng(7)
    good = target + rng.normal(0, 0.3, target.shape)
    fit = fit_blend([rng.random(target.shape), good], target, row_ids, CLASSES, step=0.1, folds=3, n_resamples=50)
    assert fit.weights.tolist() == [0.0, 1.0]
    assert fit.comparison.comparison.difference.estimate <= 1e-9  # picked per fold, it cannot beat `good` itself


def test_refusals_name_the_problem():
    target, row_ids = _labelled()
    with pytest.raises(BirdclefError, match="--fit-folds must be 2 to 12"):
        fit_blend([target, target], target, row_ids, CLASSES, folds=13)
    one_file = [f"S00_{5 * (w + 1)}" for w in range(len(row_ids))]
    with pytest.raises(BirdclefError, match="at least 2 soundscape files"):
        fit_blend([target, target], target, one_file, CLASSES)
    silent = np.zeros_like(target)
    silent[:WINDOWS] = 1  # every call in the first file: the files outside its fold hold no positive
    with pytest.raises(BirdclefError, match="no class has both a positive and a negative window in the files outside"):
        fit_blend([target, target], silent, row_ids, CLASSES, folds=3)


def _csv(path, row_ids, values):
    pd.DataFrame(values, columns=CLASSES).assign(row_id=row_ids)[["row_id", *CLASSES]].to_csv(path, index=False)
    return str(path)


def test_cli_fits_writes_the_blend_and_the_fit(tmp_path, capsys):
    target, row_ids = _labelled(4)
    rng = np.random.default_rng(9)
    a = _csv(tmp_path / "a.csv", row_ids, target + rng.normal(0, 1.0, target.shape))
    b = _csv(tmp_path / "b.csv", row_ids, target + rng.normal(0, 1.0, target.shape))
    solution = _csv(tmp_path / "solution.csv", row_ids, target)
    taxonomy = tmp_path / "taxonomy.csv"
    pd.DataFrame({"primary_label": CLASSES, "class_name": ["Amphibia", "Aves", "Insecta"]}).to_csv(taxonomy,
                                                                                                  index=False)
    out = tmp_path / "blend.csv"
    assert main(["blend", a, b, "--blend", "rank", "--fit", solution, "--fit-step", "0.1", "--taxonomy",
                 str(taxonomy), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "out-of-fold blend" in printed and "Insecta" in printed and "minus" in printed
    fit = json.loads((tmp_path / "blend.fit.json").read_text())
    assert fit["how"] == "rank" and sum(fit["weights"]) == pytest.approx(1.0) and len(fit["fold_weights"]) == 5
    w = fit["weights"]
    expected = w[0] * rank_columns(pd.read_csv(a)[CLASSES].to_numpy()) + w[1] * rank_columns(
        pd.read_csv(b)[CLASSES].to_numpy())
    assert np.allclose(pd.read_csv(out)[CLASSES].to_numpy(), expected)

    assert main(["blend", a, b, "--fit", solution, "--weights", "1", "1", "--out", str(out)]) == 2
    assert "drop --weights" in capsys.readouterr().err
    assert main(["blend", a, b, "--fit-folds", "3", "--out", str(out)]) == 2
    assert "--fit-folds only apply with --fit" in capsys.readouterr().err
    short = _csv(tmp_path / "short.csv", row_ids[:-1], target[:-1])
    assert main(["blend", a, short, "--fit", solution, "--out", str(tmp_path / "x.csv")]) == 2
    assert "short.csv" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
