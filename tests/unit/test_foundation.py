"""Foundation models behind one interface: specs, the once-per-window cache, zero-shot and heads on a Perch-format
model (a tiny generated ONNX file with Perch v2's exact names and shapes), a head on two models at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from birdclef.cli import main
from birdclef.config import InferConfig
from birdclef.errors import BirdclefError
from birdclef.zoo.build import PredictorSpec, build_predictor
from birdclef.zoo.foundation import FoundationSpec, SharedInference, parse_foundation
from birdclef.zoo.placeholder import PlaceholderModel
from fakes.onnx_models import write_perch_v2

REPO = Path(__file__).resolve().parents[2]
HEAD = REPO / "configs" / "birdnet-head.yaml"
SMALL = ["data.n_folds=2", "train.folds=[0]", "train.epochs=6", "train.embed_copies=1", "train.num_workers=0",
         "train.batch_size=8", "train.lr=0.01"]
RAW = ("infer.smoothing=false", "infer.power_adjust=false")
# the synthetic dataset's species: syn00 (3 kHz) and syn01 (1 kHz) are among the fake Perch's labels, syn02 is not
KNOWN = ["Synthetica strepens syn00", "Synthetica modulans syn01"]


@pytest.fixture(scope="module")
def perch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_perch_v2(tmp_path_factory.mktemp("perch"), labels=KNOWN, label_hz=[3_000.0, 1_000.0])


def test_specs_name_a_kind_and_its_file(tmp_path: Path) -> None:
    assert parse_foundation(None) == FoundationSpec("birdnet")
    assert parse_foundation("birdnet") == FoundationSpec("birdnet")
    assert parse_foundation("perch-v2:/m/perch_v2.onnx") == FoundationSpec("perch-v2", "/m/perch_v2.onnx")
    assert parse_foundation("onnx:card.yaml") == FoundationSpec("onnx", "card.yaml")
    assert parse_foundation("placeholder") == FoundationSpec("placeholder")
    assert parse_foundation("/models/BirdNET.tflite") == FoundationSpec("birdnet", "/models/BirdNET.tflite")
    assert str(parse_foundation("perch-v2:/m/x.onnx")) == "perch-v2:/m/x.onnx"
    with pytest.raises(BirdclefError, match="unknown foundation model 'perch3'"):
        parse_foundation("perch3:/m/x.onnx")
    with pytest.raises(BirdclefError, match="give its file"):
        parse_foundation("perch-v2")


def test_shared_inference_runs_each_window_once_across_calls() -> None:
    model = SharedInference(PlaceholderModel(["a", "b"], sample_rate=1_000, window_s=1.0, embedding_size=4))
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((5, 1_000)).astype(np.float32)
    first = model.infer(windows[:3])
    again = model.infer(windows[[2, 0, 3, 4]])  # two known, two new
    assert model.calls == 2 and model.windows_run == 5
    direct = model.unwrapped.infer(windows[[2, 0, 3, 4]])
    np.testing.assert_array_equal(again[0], direct[0])
    np.testing.assert_array_equal(again[1], direct[1])
    np.testing.assert_array_equal(first[1][2], again[1][0])
    model.infer(windows[[1, 1, 1]])  # repeats inside one call: still nothing new
    assert model.windows_run == 5
    for k in range(3):  # three calls of new windows push the first calls out (keep=2)
        model.infer(rng.standard_normal((1, 1_000)).astype(np.float32))
    model.infer(windows[:1])
    assert model.windows_run == 5 + 3 + 1


def test_zero_shot_on_a_perch_export_masks_classes_it_does_not_know(perch: Path, tiny_dataset: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "perch.csv"
    assert main(["predict", "--foundation", f"perch-v2:{perch}", "--data", str(tiny_dataset), "--unknown-fill",
                 "0.5", "--soundscapes", str(tiny_dataset / "test_soundscapes"), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert (frame["syn02"] == 0.5).all()  # not among its labels: the fill, never a 0
    assert frame[["syn00", "syn01"]].notna().all().all() and frame["syn00"].nunique() > 1
    unknown = pd.read_csv(out.with_name("perch.birdnet_unknown.csv"))
    assert unknown["primary_label"].tolist() == ["syn02"]


def test_embedding_only_export_refuses_zero_shot_in_one_line(tmp_path: Path, tiny_dataset: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    headless = write_perch_v2(tmp_path / "headless", embedding_only=True)
    code = main(["predict", "--foundation", f"perch-v2:{headless}", "--data", str(tiny_dataset), "--unknown-fill",
                 "0.5", "--soundscapes", str(tiny_dataset / "test_soundscapes"), "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "no label output" in err[0] and "Traceback" not in err[0]


@pytest.fixture(scope="module")
def perch_head(perch: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("perch-head") / "run"
    assert main(["train", "-c", str(HEAD), "--data", str(tiny_dataset), "--out", str(run), "--no-progress", "--set",
                 *SMALL, "model.backbone=foundation", f"model.foundation=[perch-v2:{perch}]",
                 "data.sample_rate=32000", "infer.birdnet_hop_s=1.0"]) == 0
    return run


def test_a_head_on_a_perch_export_learns_a_class_it_could_not_score(perch_head: Path) -> None:
    oof = pd.read_parquet(perch_head / "fold0" / "oof.parquet")
    metrics = pd.read_csv(perch_head / "fold0" / "metrics.csv")
    truth = (oof["primary_label"] == "syn02").to_numpy()
    assert 0 < truth.sum() < len(truth)
    assert roc_auc_score(truth, oof["syn02"]) > 0.9  # it started at one constant (unknown): AUC 0.5
    assert metrics["val_auc"].max() > metrics.loc[metrics["epoch"] == 0, "val_auc"].item()
    note = (perch_head / "LICENSE-NOTE.txt").read_text()
    assert "perch-v2" in note and "Apache-2.0" in note and "sha256" in note


def test_a_blend_of_a_head_and_zero_shot_on_one_model_runs_it_once_per_window(perch: Path, perch_head: Path,
                                                                           tiny_dataset: Path) -> None:
    from birdclef.audio.io import load_audio

    spec = PredictorSpec(runs=(perch_head,), birdnet=True, birdnet_model=f"perch-v2:{perch}", data=tiny_dataset,
                         unknown_fill=0.5, overrides=RAW)
    predictor = build_predictor(spec).predictor
    models = {id(getattr(p, "model", None)): p.model for p in predictor.parts() if hasattr(p, "model")}
    assert len(models) == 1  # the head and zero-shot hold one loaded model
    (shared,) = models.values()
    wave = load_audio(next((tiny_dataset / "test_soundscapes").glob("*.ogg")), predictor.sample_rate)
    probs = predictor.predict_file(wave)
    n_rows = len(probs)
    assert shared.windows_run == n_rows  # 5 s windows: one per row, computed once for both parts
    assert shared.calls == 1
    assert np.isfinite(probs).all()


def test_a_head_on_two_foundation_models_at_once(perch: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "two"
    assert main(["train", "-c", str(HEAD), "--data", str(tiny_dataset), "--out", str(run), "--no-progress", "--set",
                 *SMALL, "model.backbone=foundation", f"model.foundation=[placeholder,perch-v2:{perch}]",
                 "data.sample_rate=32000", "infer.birdnet_hop_s=1.0"]) == 0
    import torch

    state = torch.load(run / "fold0" / "best.pt", weights_only=True)
    assert state["embedding_size"] == 32 + 1536
    out = tmp_path / "two.csv"
    assert main(["predict", "--run", str(run), "--soundscapes", str(tiny_dataset / "test_soundscapes"), "--out", str(out),
                 "--set", *RAW]) == 0
    frame = pd.read_csv(out)
    assert frame[["syn00", "syn01", "syn02"]].notna().all().all()
    note = (run / "LICENSE-NOTE.txt").read_text()
    assert "placeholder" in note and "perch-v2" in note


def test_analyze_and_pseudo_name_the_foundation_model_they_ran(perch: Path, tiny_dataset: Path,
                                                             tmp_path: Path) -> None:
    from birdclef.zoo.foundation import file_sha256

    out = tmp_path / "archive"
    assert main(["analyze", str(tiny_dataset / "test_soundscapes"), "--foundation", f"perch-v2:{perch}", "--data",
                 str(tiny_dataset), "--out", str(out), "--embeddings", "--no-progress"]) == 0
    embeddings = pd.read_parquet(out / "embeddings.parquet")
    assert embeddings.filter(regex=r"^emb_").shape[1] == 1536
    table = tmp_path / "pseudo.parquet"
    assert main(["pseudo", "--foundation", f"perch-v2:{perch}", "--data", str(tiny_dataset), "--soundscapes",
                 str(tiny_dataset / "train_soundscapes"), "--out", str(table), "--no-progress"]) == 0
    from birdclef.data.pseudo import read_provenance

    (model,) = read_provenance(table)["foundation_models"]
    assert model["sha256"] == file_sha256(perch) and model["licence"] == "Apache-2.0"
    assert model["kind"] == "perch-v2" and model["embedding_size"] == 1536


def _with_dense_label(path: Path, out: Path, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A copy of a fake Perch export whose ``label`` is ``embedding @ W + b`` (as a converted Dense layer is)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    for node in model.graph.node:
        node.output[:] = ["label_old" if name == "label" else name for name in node.output]
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((1536, n_labels)).astype(np.float32) * 0.01
    bias = rng.standard_normal(n_labels).astype(np.float32)
    model.graph.initializer.extend([numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    model.graph.node.extend([helper.make_node("Identity", ["embedding"], ["emb_id"]),
                             helper.make_node("MatMul", ["emb_id", "W"], ["label_mm"]),
                             helper.make_node("Add", ["label_mm", "b"], ["label"])])
    onnx.save(model, str(out))
    (out.parent / "labels.csv").write_text((path.parent / "labels.csv").read_text())
    return weight.T, bias


def test_a_head_starts_from_perchs_own_classifier_when_the_graph_has_it(perch: Path, tmp_path: Path) -> None:
    from birdclef.birdnet.head_inputs import HeadInputs
    from birdclef.zoo.perch import PerchModel

    from birdclef.zoo.onnx_graph import dense_layer

    assert PerchModel(write_perch_v2(tmp_path / "headless", embedding_only=True)).output_layer() is None
    assert dense_layer(perch, "spectrogram", "embedding") is None  # not a dense layer of the embedding
    weight, bias = _with_dense_label(perch, tmp_path / "dense.onnx", len(KNOWN))
    model = PerchModel(tmp_path / "dense.onnx")
    read_w, read_b = model.output_layer()
    np.testing.assert_array_equal(read_w, weight)
    np.testing.assert_array_equal(read_b, bias)
    inputs = HeadInputs([model], ["perch-v2"], 1.0, 32_000)
    names = {"syn00": KNOWN[0], "syn01": KNOWN[1], "syn02": "Gryllus x"}
    start_w, start_b, notes = inputs.start_rows(["syn01", "syn02", "syn00"], names)
    rows = np.random.default_rng(2).standard_normal((2, 160_000)).astype(np.float32) * 0.1
    logits, emb = model.infer(rows)
    np.testing.assert_allclose(emb @ start_w[[2, 0]].T + start_b[[2, 0]], logits, rtol=1e-4, atol=1e-4)
    assert not notes and (start_w[1] == 0).all()  # the class Perch lacks starts at zero
