"""Multiple-instance learning (data.strategy=mil): bags, pooling by hand, a bag of one is the plain model, the
learned attention finds the call, training with every head and mixup, exact resume, the chosen-window table."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SR, chirp, noise, write_ogg

from birdclef import cli
from birdclef.audio.io import load_audio
from birdclef.config import InferConfig, load_config
from birdclef.data.bags import BagDataset, clip_windows, pick_windows, window_starts
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.examples import build_examples
from birdclef.data.validate import DataWarning
from birdclef.data.window_table import read_window_table
from birdclef.errors import BirdclefError, ConfigError, DatasetError
from birdclef.models import create_model, load_checkpoint
from birdclef.train.fold_data import FoldData
from birdclef.train.kfold import train_kfold
from birdclef.train.mil import MilPooling, bag_forward, mix_bags
from birdclef.train.mil_windows import fold_windows
from birdclef.train.module import BirdModule
from test_train import TINY, EpochLog, StopAfterEpochs
from test_train_pseudo import _examples as pseudo_examples
from test_train_pseudo import pseudo_data  # noqa: F401  (a fixture: 3 soundscapes and a pseudo table)

SWEEPS = {"aaa": (1_000, 1_500), "bbb": (3_000, 4_500), "ccc": (6_000, 9_000)}
CLIPS_PER_CLASS = 6
MIL = [*TINY, "data.strategy=mil", "train.mil_windows=4", "train.mil_hop_s=1.0"]
"""1 s windows every 1 s: a 4 s clip is a bag of 4 windows."""


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """(dataset, call window per 4 s clip): each 4 s clip is noise with its class's sweep in one of its four 1 s
    windows (drawn per clip); then a 0.5 s clip (shorter than a window) and a 9.5 s one, class aaa."""
    root = tmp_path_factory.mktemp("mil")
    rng, rows, where = np.random.default_rng(0), [], []
    for label, (f0, f1) in SWEEPS.items():
        for _ in range(CLIPS_PER_CLASS):
            k, window = len(rows), int(rng.integers(4))
            wave = noise(4.0, seed=k, level=0.05)
            tone = chirp(0.8, f0, f1, seed=k, noise=0.0)
            begin = int((window + 0.1) * SR)
            wave[begin : begin + len(tone)] += tone
            rows.append(_row(root, f"{label}/XC{k:04d}.ogg", wave))
            where.append(window)
    rows.append(_row(root, "aaa/XC0100.ogg", chirp(0.5, 1_000, 1_500, seed=100)))
    rows.append(_row(root, "aaa/XC0101.ogg", noise(9.5, seed=101, level=0.05)))
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root, where


def _row(root: Path, filename: str, wave: np.ndarray) -> dict:
    write_ogg(root / "train_audio" / filename, wave)
    return {"primary_label": filename.split("/")[0], "secondary_labels": "[]", "filename": filename, "rating": 4.0}


def _examples(root: Path, tmp_path: Path, *overrides: str):
    config = load_config(None, [*MIL, *overrides])
    prepare_cache(root, tmp_path / "cache", strategy="mil", window_s=1.0, num_workers=0, progress=False)
    cache = WaveCache(tmp_path / "cache")
    return config, cache, build_examples(cache, list(SWEEPS), config)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("override, match", [
    ("train.mil_pooling=softmax", r"train.mil_pooling must be one of \('attention', 'max', 'topk', 'mean'\)"),
    ("train.mil_windows=0", "train.mil_windows must be positive"),
    ("train.mil_topk=0", "train.mil_topk must be positive"),
    ("train.mil_hop_s=-1", "train.mil_hop_s must be positive"),
])
def test_bad_mil_settings_are_config_errors(override: str, match: str):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["data.strategy=mil", override])


def test_mil_refuses_a_frozen_backbone_and_hops_half_a_window_by_default():
    from birdclef.config import mil_hop_s

    with pytest.raises(ConfigError, match="data.strategy mil .* model.freeze_backbone"):
        load_config(None, ["data.strategy=mil", "model.backbone=birdnet", "data.sample_rate=48000",
                           "model.freeze_backbone=true"])
    assert mil_hop_s(load_config(None, ["data.strategy=mil"])) == 2.5
    assert mil_hop_s(load_config(None, ["data.strategy=mil", "train.mil_hop_s=1"])) == 1.0


# ---------------------------------------------------------------- bags


def test_windows_of_a_span_and_which_a_bag_takes():
    assert window_starts(10, 4, 2).tolist() == [0, 2, 4, 6]
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]  # a last window ends at the span's end
    assert window_starts(4, 4, 2).tolist() == [0] and window_starts(1, 4, 2).tolist() == [0]
    assert pick_windows(3, 4, None).tolist() == [0, 1, 2]
    assert pick_windows(9, 3, None).tolist() == [0, 4, 8]  # validation: evenly spaced
    drawn = pick_windows(9, 3, np.random.default_rng(5))
    assert drawn.tolist() == sorted(np.random.default_rng(5).choice(9, 3, replace=False).tolist())
    wins, starts = clip_windows(np.arange(3, dtype=np.float32), 4, 2)
    assert wins.tolist() == [[0, 1, 2, 0]] and starts.tolist() == [0]  # tiled, as WaveCache tiles


def test_bags_hold_all_windows_of_a_short_clip_and_a_seeded_subset_of_a_long_one(calls, tmp_path: Path):
    root, _ = calls
    config, cache, ex = _examples(root, tmp_path)
    assert cache.strategy == "random"  # mil stores what random stores: one cache serves both
    rows = np.arange(ex.n_clips)
    train, val = (BagDataset(ex, rows, train=t, k=4, hop_s=1.0, seed=3) for t in (True, False))
    n = len(rows)
    four, short, long_ = 0, n - 2, n - 1
    bag, target, mask, weight, valid = train[four]
    segment = cache.segment(four)
    assert bag.shape == (4, SR) and valid.all() and mask.all() and weight == ex.weights[four]
    assert torch.equal(bag, torch.from_numpy(np.stack([segment[i * SR : (i + 1) * SR] for i in range(4)])))
    bag, *_, valid = train[short]
    assert valid.tolist() == [True, False, False, False] and not bag[1:].any()
    assert np.array_equal(bag[0].numpy(), np.resize(cache.segment(short), SR))
    # 9.5 s at a 1 s hop: windows at 0..8 s and one at 8.5 s; 4 of the 10 per epoch, the same on a re-read.
    all_windows, _ = clip_windows(cache.segment(long_), SR, SR)
    assert len(all_windows) == 10
    picks = []
    for epoch in range(3):
        bag, *_, valid = train[epoch * n + long_]
        assert valid.all() and torch.equal(bag, train[epoch * n + long_][0])
        picks.append(tuple(next(i for i in range(10) if np.array_equal(all_windows[i], w)) for w in bag.numpy()))
    assert len(set(picks)) > 1 and all(list(p) == sorted(p) for p in picks)
    assert torch.equal(val[long_][0], torch.from_numpy(all_windows[[0, 3, 6, 9]]))


def test_a_pseudo_window_is_a_bag_of_one_and_a_mixed_window_joins_every_window_of_a_bag(pseudo_data, tmp_path):
    data, table = pseudo_data
    config, cache, _, ex = pseudo_examples(data, table, tmp_path, "data.strategy=mil", "train.mil_windows=3")
    pseudo = np.flatnonzero(ex.table["source"] == "pseudo")
    bags = BagDataset(ex, pseudo, train=True, k=3, hop_s=0.5, seed=1)
    bag, target, mask, weight, valid = bags[0]
    assert valid.tolist() == [True, False, False] and torch.equal(bag[0], torch.from_numpy(ex.wave(pseudo[0])))
    assert mask.tolist() == ex.mask[pseudo[0]].tolist() and weight == ex.weights[pseudo[0]]
    clips = np.arange(ex.n_clips)
    mixed = BagDataset(ex, clips, train=True, k=3, hop_s=0.5, seed=1, mix_rows=pseudo[:1], mix_prob=1.0)
    plain = BagDataset(ex, clips, train=True, k=3, hop_s=0.5, seed=1)
    bag, target, *_, valid = mixed[0]
    clean = plain[0][0]
    assert all(not torch.equal(bag[j], clean[j]) for j in range(int(valid.sum())))
    assert np.allclose(target.numpy(), np.maximum(ex.targets[0], ex.targets[pseudo[0]]))


# ---------------------------------------------------------------- pooling


def test_pooling_matches_hand_values():
    logits = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [2.0, 0.5], [9.0, 9.0]]])  # (1 bag, 4 windows, 2 classes)
    valid = torch.tensor([[True, True, True, False]])  # the 9s are padding
    bag, w = MilPooling("mean", 2)(logits, valid)
    assert torch.allclose(bag, torch.tensor([[2.0, -0.5]])) and torch.allclose(w[0, 3], torch.zeros(2))
    bag, w = MilPooling("max", 2)(logits, valid)
    assert torch.equal(bag, torch.tensor([[3.0, 0.5]]))
    assert w[0].tolist() == [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    bag, w = MilPooling("topk", 2, topk=2)(logits, valid)
    assert torch.allclose(bag, torch.tensor([[2.5, 0.25]]))
    assert w[0].tolist() == [[0.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.0, 0.0]]
    attention = MilPooling("attention", 2)
    with torch.no_grad():
        attention.raw_alpha.copy_(torch.tensor([math.log(math.e**2 - 1), math.log(math.e - 1)]))  # alpha 2, 1
    bag, w = attention(logits, valid)
    e0 = np.exp(2 * np.array([1.0, 3.0, 2.0]))
    e1 = np.exp(np.array([-2.0, 0.0, 0.5]))
    expect = np.stack([e0 / e0.sum(), e1 / e1.sum()], axis=1)
    assert np.allclose(w[0, :3].detach().numpy(), expect, atol=1e-6) and (w[0, 3] == 0).all()
    assert np.allclose(bag.detach().numpy(), [[expect[:, 0] @ [1, 3, 2], expect[:, 1] @ [-2, 0, 0.5]]], atol=1e-6)
    assert torch.allclose(MilPooling("attention", 2).alpha, torch.ones(2))  # starts as the logits' own softmax
    short = torch.tensor([[True, False, False, False]])
    assert MilPooling("topk", 2, topk=3)(logits, short)[0].tolist() == [[1.0, -2.0]]  # k shrinks to the bag
    with pytest.raises(ValueError, match="at least one valid window"):
        MilPooling("max", 2)(logits, torch.zeros(1, 4, dtype=torch.bool))


@pytest.mark.parametrize("head", ["linear", "sed"])
def test_a_bag_of_one_equals_the_plain_model(head: str):
    torch.manual_seed(0)
    model = create_model(load_config(None, [*TINY, f"model.head={head}"]).model, 3).eval()
    wave = torch.randn(2, SR) * 0.1
    bag = torch.zeros(2, 3, SR)
    bag[:, 0] = wave
    valid = torch.tensor([[True, False, False]] * 2)
    with torch.no_grad():
        plain = model(wave)["clip_logits"]
        for how in ("attention", "max", "topk", "mean"):
            out = bag_forward(model, MilPooling(how, 3), bag, valid)
            assert torch.equal(out["clip_logits"], plain), how
            unpadded = bag_forward(model, MilPooling(how, 3), wave[:, None], valid[:, :1])
            assert torch.equal(unpadded["clip_logits"], plain)


def test_mixup_mixes_whole_bags_window_by_window():
    bag = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)
    valid = torch.tensor([[True, True], [True, False], [True, False]])
    target = torch.eye(3)
    mask = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])
    mixed, mixed_valid = mix_bags(bag, valid, target, 0.5, np.random.default_rng(0), mask)
    rng = np.random.default_rng(0)  # the order of draws of mix_batch: lam, then the permutation
    lam, perm = rng.beta(0.5, 0.5), rng.permutation(3)
    assert mixed.lam == pytest.approx(lam) and torch.allclose(mixed.wave, lam * bag + (1 - lam) * bag[perm])
    assert torch.equal(mixed.partner, target[perm]) and torch.equal(mixed.partner_mask, mask[perm])
    assert torch.equal(mixed_valid, valid | valid[perm])


# ---------------------------------------------------------------- training


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")  # Lightning's own use of a torch API
def test_attention_finds_the_window_that_holds_the_call(calls, tmp_path: Path):
    root, call_window = calls
    config, cache, ex = _examples(root, tmp_path, "train.mixup_prob=0", "train.epochs=20", "train.lr=3e-3")
    L.seed_everything(0, verbose=False)
    module = BirdModule(config, list(SWEEPS))
    trainer = L.Trainer(max_epochs=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=FoldData(config, ex, 0, None))
    folds = ex.table["fold"].to_numpy()[: ex.n_clips]
    table = fold_windows(module.model.eval(), module.mil, cache, list(SWEEPS), folds, 0, 1.0, torch.device("cpu"))
    four = table[table["row"] < len(call_window)]
    weights = four.pivot(index="row", columns="window", values="weight").to_numpy()  # (18, 4)
    chosen = four.loc[four["chosen"], "window"].to_numpy()
    hits = chosen == np.array(call_window)
    # Chance is 1 in 4 (4.5 of 18 clips) and a uniform weight is 0.25.
    assert hits.sum() >= 15, f"attention chose the call window in {hits.sum()} of 18 clips"
    assert np.median(weights[np.arange(len(weights)), call_window]) > 0.6
    assert hits[four.drop_duplicates("row")["held_out"].to_numpy()].mean() >= 0.75  # clips it never trained on too
    assert np.allclose(table.groupby("row")["weight"].sum(), 1.0, atol=1e-5)
    # Windows of several clips share a forward pass; a clip with more windows than a batch gets one of its own.
    small = fold_windows(module.model, module.mil, cache, list(SWEEPS), folds, 0, 1.0, torch.device("cpu"),
                         batch_size=3)  # (chosen is left out: the noise-only clip's weights are near ties)
    pd.testing.assert_frame_equal(small.drop(columns="chosen"), table.drop(columns="chosen"), rtol=1e-4)


@pytest.mark.parametrize("head, pooling", [("linear", "attention"), ("conv", "topk"), ("sed", "max")])
def test_mil_run_with_each_head_and_mixup_writes_the_chosen_windows(calls, tmp_path: Path, head: str, pooling: str):
    root, _ = calls
    config = load_config(None, [*MIL, "train.epochs=1", f"model.head={head}", f"train.mil_pooling={pooling}",
                                "train.mixup_prob=1", "train.background_prob=0"])
    run = tmp_path / "run"
    summary = train_kfold(config, root, run, progress=False)
    assert summary.fold_scores.keys() == {0}
    best = load_checkpoint(run / "fold0" / "best.pt")
    assert best.extra["mil_pooling"]["how"] == pooling and best.config.data.strategy == "mil"
    folds = pd.read_csv(run / "folds.csv")
    oof = pd.read_parquet(run / "oof.parquet")
    assert len(oof) == (folds["fold"] == 0).sum()
    table = pd.read_csv(run / "mil_windows.csv")
    assert table.columns.tolist() == ["filename", "row", "primary_label", "fold", "held_out", "window", "start_s",
                                      "end_s", "weight", "logit", "chosen"]
    assert table.groupby("row")["chosen"].sum().eq(1).all() and len(table.drop_duplicates("row")) == len(folds)
    assert np.allclose(table.groupby("row")["weight"].sum(), 1.0, atol=1e-5)
    held = table.drop_duplicates("row").set_index("filename")["held_out"]
    assert held.to_dict() == (folds.set_index("filename")["fold"] == 0).to_dict()
    long_ = table[table["filename"] == "aaa/XC0101.ogg"]
    assert long_["start_s"].tolist() == [*map(float, range(9)), 8.5] and (long_["end_s"] - long_["start_s"]).eq(1).all()
    fold_table = pd.read_parquet(run / "fold0" / "mil_windows.parquet").sort_values(["row", "window"])
    pd.testing.assert_frame_equal(table, fold_table.reset_index(drop=True), check_dtype=False)


def test_mil_resume_equals_uninterrupted_and_predicts_windows_unchanged(calls, tmp_path: Path):
    root, _ = calls
    config = load_config(None, [*MIL, "train.epochs=2", "train.num_workers=1", "train.background_prob=0"])
    cache = tmp_path / "cache"
    train_kfold(config, root, tmp_path / "full", cache_dir=cache, progress=False)
    part = tmp_path / "part"
    train_kfold(config, root, part, cache_dir=cache, progress=False, callbacks=[StopAfterEpochs(1)])
    log = EpochLog()
    train_kfold(config, root, part, cache_dir=cache, resume=True, progress=False, callbacks=[log])
    assert log.epochs == [1]
    a, b = (torch.load(r / "fold0" / "best.pt", weights_only=True) for r in (tmp_path / "full", part))
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["mil_pooling"]["state"]["raw_alpha"], b["mil_pooling"]["state"]["raw_alpha"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "metrics.csv"), pd.read_csv(part / "metrics.csv"))
    tables = [pd.read_csv(r / "mil_windows.csv") for r in (tmp_path / "full", part)]
    pd.testing.assert_frame_equal(*tables)
    # Inference is the plain model on a window (a bag of one): best.pt loads like any other run's.
    loaded = load_checkpoint(part / "fold0" / "best.pt")
    plain = create_model(load_config(None, TINY).model, 3)
    assert loaded.model.state_dict().keys() == plain.state_dict().keys()
    wave = torch.from_numpy(WaveCache(cache).window(0))[None]
    assert loaded.model.predict_proba(wave).shape == (1, 3)


# ---------------------------------------------------------------- the chosen windows as a window rule


@pytest.fixture(scope="module")
def mil_run(calls, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch MIL run (attention pooling) on the calls data set."""
    root, _ = calls
    run = tmp_path_factory.mktemp("milrun") / "run"
    train_kfold(load_config(None, [*MIL, "train.epochs=1"]), root, run, progress=False)
    return run


def test_window_table_errors_name_the_file_row_and_clip(tmp_path: Path):
    path = tmp_path / "t.csv"
    for frame, match in [
        (pd.DataFrame({"filename": ["a.ogg"]}), r"t.csv: window table lacks the column\(s\) \['start_s'\]"),
        (pd.DataFrame({"filename": ["a.ogg", "b.ogg"], "start_s": [1.0, "x"]}), r"t.csv: row 1 \(b.ogg\): start_s"),
        (pd.DataFrame({"filename": ["a.ogg", "a.ogg"], "start_s": [1.0, 2.0]}), r"clip a.ogg has several windows"),
    ]:
        frame.to_csv(path, index=False)
        with pytest.raises(DatasetError, match=match):
            read_window_table(path)
    pd.DataFrame({"filename": ["a.ogg", "a.ogg", "b.ogg"], "start_s": [1.0, 2.5, 0.0],
                  "chosen": [False, True, True]}).to_csv(path, index=False)
    assert read_window_table(path) == {"a.ogg": 2.5, "b.ogg": 0.0}
    with pytest.raises(DatasetError, match="window table not found"):
        read_window_table(tmp_path / "none.csv")
    with pytest.raises(ConfigError, match="data.window_table must be given exactly with data.strategy=table"):
        load_config(None, ["data.strategy=table"])
    with pytest.raises(ConfigError, match="data.window_table must be given exactly"):
        load_config(None, ["data.strategy=mil", f"data.window_table={path}"])


def test_the_chosen_windows_feed_back_as_the_window_rule_of_another_run(calls, mil_run: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture):
    root, _ = calls
    table = mil_run / "mil_windows.csv"
    chosen = pd.read_csv(table).query("chosen").set_index("filename")["start_s"]
    cache = WaveCache(prepare_cache(root, tmp_path / "cache", strategy="table", window_table=table, window_s=1.0,
                                    num_workers=0, progress=False).out)
    got = cache.index.set_index("filename")["start_s"]
    assert got.to_dict() == pytest.approx(chosen.to_dict())
    i = int(np.flatnonzero(cache.index["filename"] == "aaa/XC0101.ogg")[0])  # the 9.5 s clip
    wave = load_audio(root / "train_audio" / "aaa/XC0101.ogg", SR)
    start = int(round(got["aaa/XC0101.ogg"] * SR))
    assert np.allclose(cache.window(i), wave[start : start + SR], atol=1e-3)  # float16 storage
    part = tmp_path / "part.csv"
    pd.read_csv(table).query("filename != 'bbb/XC0006.ogg'").to_csv(part, index=False)
    with pytest.warns(DataWarning, match=r"part.csv: names no window for 1 of 20 clips .*reference rule"):
        prepare_cache(root, tmp_path / "cache2", strategy="table", window_table=part, window_s=1.0, num_workers=0,
                      progress=False)
    with pytest.raises(DatasetError, match="window_table_sha256"):  # another table is another cache
        prepare_cache(root, tmp_path / "cache", strategy="table", window_table=part, window_s=1.0, progress=False)
    argv = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu",
            "--set", *TINY, "train.epochs=1", "data.strategy=table", f"data.window_table={table}"]
    assert cli.main(argv) == 0
    assert (tmp_path / "run" / "fold0" / "done.json").is_file() and not (tmp_path / "run" / "mil_windows.csv").exists()


def test_a_mil_run_exports_like_any_other(mil_run: Path, tmp_path: Path):
    from birdclef.export.export import check_target, export_model
    from birdclef.export.runtime import ExportedPredictor
    from birdclef.infer.predict import TorchPredictor

    try:
        check_target("onnx", "fp32")
    except BirdclefError as exc:
        pytest.skip(f"onnx export not available here: {exc}")
    raw = InferConfig(smoothing=False, power_adjust=False)
    report = export_model([mil_run], None, "onnx", "fp32", tmp_path / "model", parity_count=2, config=raw)
    assert report.written and report.parity.passed
    wave = noise(3.0, seed=7, level=0.1) + np.resize(chirp(0.8, 3_000, 4_500, noise=0.0), 3 * SR)
    torch_probs = TorchPredictor([mil_run], None, raw, device="cpu").predict_file(wave)
    assert np.abs(ExportedPredictor(tmp_path / "model", threads=1).predict_file(wave) - torch_probs).max() < 1e-4


def test_report_of_a_mil_run_shows_spectrograms_with_window_weights(mil_run: Path, tmp_path: Path):
    from birdclef.eval.mil_report import pick_clips
    from birdclef.eval.plots import plot_window_weights
    from birdclef.eval.report import write_report

    submission = tmp_path / "submission.csv"
    pd.DataFrame({"row_id": ["SC_5"], "aaa": [0.1], "bbb": [0.2], "ccc": [0.3]}).to_csv(submission, index=False)
    page = write_report(tmp_path / "report", submission, run=mil_run).read_text()
    table = pd.read_csv(mil_run / "mil_windows.csv")
    rows = pick_clips(table, 3)
    best = table[table["chosen"] & (table.groupby("row")["row"].transform("size") >= 2)]["weight"]
    assert len(rows) == 3 and table.set_index("row").loc[rows[0]].query("chosen")["weight"].item() == best.max()
    assert "Multiple-instance learning: chosen windows" in page
    pngs = sorted(p.name for p in (tmp_path / "report").glob("mil_windows_*.png"))
    assert len(pngs) == 3 and all(f'src="{name}"' in page for name in pngs)
    assert "chosen windows" not in write_report(tmp_path / "plain", submission).read_text()  # no run: no section
    with pytest.raises(ValueError, match=r"windows: missing column\(s\) \['chosen'\]"):
        plot_window_weights(np.zeros(SR), SR, table.drop(columns="chosen"), tmp_path / "x.png")
