"""The model zoo: run folders and their kinds, the kind registry, the placeholder foundation model, one assembler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef.cli import main
from birdclef.config import Config, InferConfig, dump_config
from birdclef.errors import BirdclefError
from birdclef.infer.blend import BlendPredictor, FilledPredictor
from birdclef.zoo.build import PredictorSpec, build_predictor, check_spec
from birdclef.zoo.placeholder import PlaceholderModel
from birdclef.zoo.registry import BuildContext, Kind, get_kind, list_kinds, register_kind
from birdclef.zoo.runs import HEAD_RUN, TORCH_RUN, Run

from conftest import chirp, write_ogg

RAW = InferConfig(smoothing=False, power_adjust=False)
CLASSES = ["blabir", "eurrob", "frog"]
NAMES = {"blabir": "Turdus merula", "eurrob": "Erithacus rubecula", "frog": "Rana temporaria"}
PART_MEMBERS = ("classes", "sample_rate", "lead", "length", "n_runs", "can_embed", "unscored", "checkpoints",
                "model_file", "score", "embed", "settings")


def _run(folder: Path, config: Config, done: dict | None = None) -> Path:
    (folder / "fold0").mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(config))
    (folder / "fold0" / "best.pt").write_bytes(b"")
    (folder / "fold0" / "done.json").write_text(json.dumps(done or {}))
    return folder


def test_run_open_reads_the_recorded_kind_and_old_runs_as_before(tmp_path: Path) -> None:
    from birdclef.config import load_config

    head_config = load_config(None, ["model.backbone=birdnet", "model.freeze_backbone=true", "data.sample_rate=48000"])
    recorded = _run(tmp_path / "recorded", Config(), {"kind": HEAD_RUN})
    old_head = _run(tmp_path / "old_head", head_config)
    old_torch = _run(tmp_path / "old_torch", Config())
    assert Run.open(recorded).kind == HEAD_RUN, "the kind done.json records wins over the config"
    assert Run.open(old_head).kind == HEAD_RUN and Run.open(old_torch).kind == TORCH_RUN
    fold = Run.open(old_head / "fold0" / "best.pt")
    assert fold.root == old_head and fold.kind == HEAD_RUN and fold.checkpoints == [old_head / "fold0" / "best.pt"]
    assert Run.open(old_torch).checkpoints == [old_torch / "fold0" / "best.pt"]
    (old_torch / "data.json").write_text(json.dumps({"data_root": str(tmp_path)}))
    assert Run.open(old_torch).taxonomy is None  # recorded, but no taxonomy.csv there
    (tmp_path / "taxonomy.csv").write_text("primary_label,scientific_name\n")
    assert Run.open(old_torch / "fold0" / "best.pt").taxonomy == tmp_path / "taxonomy.csv"
    with pytest.raises(BirdclefError, match="no such run folder"):
        Run.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BirdclefError, match="no finished fold"):
        Run.open(tmp_path / "empty").checkpoints


def test_trained_runs_record_their_kind(tiny_dataset: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from birdclef.config import load_config
    from birdclef.train.kfold import train_kfold

    from test_train import TINY

    config = load_config(None, [*TINY, "train.epochs=1"])
    run = tmp_path / "run"
    train_kfold(config, tiny_dataset, run, progress=False)
    assert json.loads((run / "fold0" / "done.json").read_text())["kind"] == TORCH_RUN
    assert torch.load(run / "fold0" / "best.pt", weights_only=True)["kind"] == TORCH_RUN
    assert Run.open(run / "fold0" / "best.pt").kind == TORCH_RUN


def test_registry_lists_the_kinds_and_refuses_unknown_ones() -> None:
    assert {"torch", "birdnet_head", "exported", "birdnet", "placeholder"} <= set(list_kinds())
    with pytest.raises(BirdclefError, match="unknown model kind 'nope'; choose from"):
        get_kind("nope")
    kind = get_kind("placeholder")
    with pytest.raises(ValueError, match="already registered"):
        register_kind(Kind(kind.name, "", "", (), "", kind.build))


def test_placeholder_model_is_deterministic_and_hears_the_band_of_a_tone() -> None:
    model = PlaceholderModel(["a_A", "b_B"], sample_rate=16_000, window_s=2.0, embedding_size=8, n_bands=8)
    tones = np.stack([chirp(2.0, f, f, sr=16_000, noise=0.0) for f in (500, 5_500)])
    logits, emb = model.infer(tones)
    assert logits.shape == (2, 2) and emb.shape == (2, 8) and logits.dtype == np.float32
    again = PlaceholderModel(["a_A", "b_B"], sample_rate=16_000, window_s=2.0, embedding_size=8, n_bands=8)
    np.testing.assert_array_equal(again.infer(tones)[1], emb)
    features = model.features(tones)
    assert features[0, :8].argmax() == 0 and features[1, :8].argmax() == 5  # 500 Hz: band 0; 5.5 kHz: band 5
    np.testing.assert_allclose(features[:, :8].sum(axis=1), 1.0)
    np.testing.assert_allclose(emb, (features @ model.projection).astype(np.float32), rtol=1e-5)
    with pytest.raises(BirdclefError, match=r"takes \(N, 32000\) windows"):
        model.infer(np.zeros((1, 100), np.float32))


def _dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"primary_label": CLASSES, "scientific_name": [NAMES[c] for c in CLASSES]}).to_csv(
        folder / "taxonomy.csv", index=False)
    return folder


def test_every_kind_speaks_the_protocol(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    built = build_predictor(PredictorSpec(birdnet=True, birdnet_model=Path("placeholder"), data=data))
    predictor = built.predictor
    for member in ("classes", "sample_rate", "config", "weights", "fill", "parts", "unscored", "checkpoints",
                   "model_files", "predict_file", "settings"):
        assert hasattr(predictor, member), member
    (part,) = predictor.parts()
    for member in PART_MEMBERS:
        assert hasattr(part, member), member
    assert (part.sample_rate, part.lead, part.length, part.n_runs) == (48_000, 0, 240_000, 1)
    assert part.can_embed and part.unscored == [] and part.model_file == "placeholder" and built.unknown == []
    spans = np.stack([chirp(5.0, 2_000, 2_000, sr=48_000), np.zeros(240_000, np.float32)])
    (probs,), emb = part.embed(spans)
    assert probs.shape == (2, 3) and emb.shape == (2, 32) and np.isfinite(probs).all()


def test_placeholder_stands_in_for_birdnet_on_the_command_line(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    soundscapes = tmp_path / "ss"
    write_ogg(soundscapes / "S1.ogg", chirp(10.0, 1_000, 8_000))
    out = tmp_path / "sub.csv"
    assert main(["predict", "--birdnet", "--birdnet-model", "placeholder", "--data", str(data), "--soundscapes",
                 str(soundscapes), "--out", str(out), "--no-progress"]) == 0
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["row_id", *CLASSES] and sub["row_id"].tolist() == ["S1_5", "S1_10"]
    assert np.isfinite(sub[CLASSES].to_numpy()).all()
    again = tmp_path / "again.csv"
    assert main(["predict", "--birdnet", "--birdnet-model", "placeholder", "--data", str(data), "--soundscapes",
                 str(soundscapes), "--out", str(again), "--no-progress"]) == 0
    pd.testing.assert_frame_equal(sub, pd.read_csv(again))
    results = tmp_path / "results"
    assert main(["analyze", str(soundscapes), "--out", str(results), "--birdnet", "--birdnet-model", "placeholder",
                 "--data", str(data), "--hop", "2.5", "--embeddings", "--no-progress"]) == 0
    table = pd.read_parquet(results / "detections.parquet")
    assert table["start_s"].tolist() == [0.0, 2.5, 5.0, 7.5] and np.isfinite(table[CLASSES].to_numpy()).all()
    assert len(pd.read_parquet(results / "embeddings.parquet")) == 4
    assert main(["embed", "--audio", str(soundscapes), "--out", str(tmp_path / "emb.parquet"), "--birdnet-model",
                 "placeholder", "--no-progress"]) == 0
    emb = pd.read_parquet(tmp_path / "emb.parquet")
    assert emb["start_s"].tolist() == [0.0, 3.0, 6.0, 9.0] and emb.filter(like="emb_").shape[1] == 32
    pseudo = tmp_path / "pseudo.parquet"
    assert main(["pseudo", "--birdnet", "--birdnet-model", "placeholder", "--data", str(data), "--soundscapes",
                 str(soundscapes), "--out", str(pseudo), "--no-progress"]) == 0
    np.testing.assert_allclose(pd.read_parquet(pseudo)[CLASSES].to_numpy(), sub[CLASSES].to_numpy(), rtol=1e-5)


def _constant_part(value: float, rate: int, window_s: float):
    from birdclef.infer.base import SinglePart, span

    class ConstantPart(SinglePart):
        def __init__(self):
            self.classes, self.sample_rate, self.config = ["a", "b"], rate, RAW
            self.lead, self.length = span(rate, window_s)
            self.weights = np.ones(1)
            self.spans: list[tuple[int, ...]] = []

        def score(self, spans: np.ndarray) -> list[np.ndarray]:
            self.spans.append(spans.shape)
            return [np.full((len(spans), 2), value)]

        def settings(self) -> dict:
            return {"value": value}

    return ConstantPart()


def test_a_blend_cuts_each_part_its_own_span_and_follows_the_given_order() -> None:
    short, wide = _constant_part(0.2, 32_000, 5.0), _constant_part(0.6, 16_000, 10.0)
    blend = BlendPredictor([short, wide], [3, 1], RAW, order=[1, 0])
    assert blend.parts() == [wide, short] and blend.sample_rate == 16_000
    probs = blend.predict_file(np.zeros(12 * 16_000, np.float32))  # 12 s: three rows, the last one padded
    np.testing.assert_allclose(probs, 0.75 * 0.6 + 0.25 * 0.2)
    assert wide.spans == [(3, 160_000)] and short.spans == [(3, 160_000)]  # 10 s at 16 kHz; 5 s at 32 kHz
    filled = FilledPredictor(blend, 0.5)
    assert filled.parts() == blend.parts() and filled.fill == 0.5 and filled.settings()["unknown_fill"] == 0.5
    with pytest.raises(BirdclefError, match="not a permutation"):
        BlendPredictor([short, wide], None, RAW, order=[0, 0])


def test_spec_checks_refuse_what_no_predictor_can_be_built_from(tmp_path: Path) -> None:
    with pytest.raises(BirdclefError, match="give either --run"):
        check_spec(PredictorSpec())
    with pytest.raises(BirdclefError, match="--taxonomy: only used with --birdnet"):
        check_spec(PredictorSpec(runs=(tmp_path,), taxonomy=tmp_path))
    with pytest.raises(BirdclefError, match="--data: only used with --birdnet or --run"):
        check_spec(PredictorSpec(model=tmp_path, data=tmp_path))
    with pytest.raises(BirdclefError, match="blends with --run, not with --model"):
        check_spec(PredictorSpec(model=tmp_path, birdnet=True))
    with pytest.raises(BirdclefError, match="a zero-shot model needs the classes"):
        get_kind("birdnet").build([None], BuildContext(RAW))
