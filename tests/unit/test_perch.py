"""Kind ``perch-v2``: Perch v2's ONNX contract on a fake export, hoplite's input preparation, errors, the registry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from birdclef.config import InferConfig
from birdclef.errors import BirdclefError
from birdclef.zoo.foundation import FoundationSpec, load_foundation, parse_foundation, provenance
from birdclef.zoo.perch import PerchModel, prepare_windows, resample_to_model
from birdclef.zoo.registry import BuildContext, get_kind, list_kinds

from conftest import chirp
from fakes.onnx_models import FAKE_LABELS, band_energy_graph, band_index, write_perch_v2

SR = 32_000


def tone(freq_hz: float, level: float = 0.5, seed: int = 0) -> np.ndarray:
    """5 s of a pure tone plus faint noise at 32 kHz: one Perch window."""
    return chirp(5.0, freq_hz, freq_hz, seed=seed) * (level / 0.5)


@pytest.fixture(scope="module")
def perch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_perch_v2(tmp_path_factory.mktemp("perch"))


def test_prepare_windows_removes_the_mean_and_scales_the_peak_to_a_quarter() -> None:
    windows = np.array([[0.0, 1.0, 2.0, 5.0], [3.0, 3.0, 3.0, 3.0], [-1.0, 0.0, 0.0, 1.0]], np.float32)
    before = windows.copy()
    out = prepare_windows(windows)
    # by hand: mean 2 -> [-2, -1, 0, 3], peak 3; constant -> silent; mean 0 -> peak 1
    expected = np.array([[-2 / 12, -1 / 12, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0], [-0.25, 0.0, 0.0, 0.25]])
    assert out.dtype == np.float32 and np.allclose(out, expected, atol=1e-7)
    assert np.isfinite(out).all() and np.array_equal(windows, before), "no NaN; the input is not modified"
    assert np.allclose(prepare_windows(windows, peak=1.0), expected * 4, atol=1e-6)
    assert np.array_equal(prepare_windows(np.zeros((2, 160_000))), np.zeros((2, 160_000), np.float32))


def test_resample_to_model_is_hoplites_polyphase_resampler() -> None:
    t48 = np.arange(48_000) / 48_000
    wave = (0.5 * np.sin(2 * np.pi * 1_000 * t48)).astype(np.float32)
    out = resample_to_model(wave, 48_000)
    assert out.dtype == np.float32 and out.shape == (32_000,)  # ceil(48000 * 2 / 3)
    assert np.allclose(out, resample_poly(wave, 2, 3), atol=1e-6), "librosa's 'polyphase': resample_poly, 48:32 = 3:2"
    t32 = np.arange(32_000) / SR
    assert np.abs(out[500:-500] - 0.5 * np.sin(2 * np.pi * 1_000 * t32[500:-500])).max() < 1e-3
    assert resample_to_model(np.zeros(44_100), 44_100).shape == (32_000,)
    same = resample_to_model(wave[:32_000], SR)
    assert np.array_equal(same, wave[:32_000]) and same is not wave
    with pytest.raises(BirdclefError, match="positive whole sample rates"):
        resample_to_model(wave, 0)


def test_the_fake_export_loads_with_perch_v2s_contract(perch_file: Path) -> None:
    model = PerchModel(perch_file, threads=1)
    assert (model.kind, model.sample_rate, model.window_s, model.licence, model.activation) == \
        ("perch-v2", 32_000, 5.0, "Apache-2.0", "sigmoid")
    assert model.labels == FAKE_LABELS and model.embedding_size == 1536 and model.path == perch_file
    windows = np.stack([tone(2_000), tone(6_000), np.zeros(160_000, np.float32)])
    logits, embeddings = model.infer(windows)
    assert logits.shape == (3, len(FAKE_LABELS)) and embeddings.shape == (3, 1536)
    assert logits.dtype == embeddings.dtype == np.float32
    assert np.isfinite(logits).all() and np.isfinite(embeddings).all()
    assert embeddings[0, :128].argmax() == band_index(2_000) and embeddings[1, :128].argmax() == band_index(6_000)
    assert logits[0].argmax() == 1 and logits[1].argmax() == 4, "each label listens to its own frequency"
    assert np.array_equal(model.logits(windows), logits) and np.array_equal(model.embeddings(windows), embeddings)
    empty_logits, empty_emb = model.infer(np.zeros((0, 160_000), np.float32))
    assert empty_logits.shape == (0, 5) and empty_emb.shape == (0, 1536)


def test_windows_are_prepared_before_the_graph(perch_file: Path) -> None:
    model = PerchModel(perch_file, threads=1)
    loud = tone(3_000, level=0.9)
    quiet_offset = tone(3_000, level=0.01) + 0.2  # 40 dB quieter, on a DC offset
    _, embeddings = model.infer(np.stack([loud, quiet_offset]))
    assert np.allclose(embeddings[0], embeddings[1], atol=0.05), "mean removal and peak scaling undo level and offset"


def test_infer_fetches_only_the_embedding_and_the_label_in_batches(perch_file: Path) -> None:
    model = PerchModel(perch_file, threads=1, batch_size=2)
    calls = []
    session = model.graph.session

    class Recorder:
        def run(self, names, feeds):
            calls.append((list(names), next(iter(feeds.values())).shape))
            return session.run(names, feeds)

    model.graph.session = Recorder()
    windows = np.stack([tone(1_000 + 500 * i, seed=i) for i in range(5)])
    logits, embeddings = model.infer(windows)
    assert [names for names, _ in calls] == [["embedding", "label"]] * 3, "never spatial_embedding or spectrogram"
    assert [shape[0] for _, shape in calls] == [2, 2, 1]
    whole = PerchModel(perch_file, threads=1, batch_size=16).infer(windows)
    assert np.allclose(whole[0], logits, atol=1e-5) and np.allclose(whole[1], embeddings, atol=1e-5)


def test_an_embedding_only_export_has_no_labels(tmp_path: Path) -> None:
    path = write_perch_v2(tmp_path, embedding_only=True, name="perch_v2_embedding_only.onnx")
    model = PerchModel(path, threads=1)
    assert model.labels is None and model.embedding_size == 1536
    logits, embeddings = model.infer(np.stack([tone(2_000)]))
    assert logits is None and embeddings.shape == (1, 1536)
    with pytest.raises(BirdclefError, match="embedding-only"):
        model.logits(np.stack([tone(2_000)]))


def test_wrong_files_are_refused_naming_the_file_and_the_problem(tmp_path: Path) -> None:
    import onnx

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"certainly not a protobuf" * 10)
    with pytest.raises(BirdclefError, match=r"junk\.onnx: not an ONNX model"):
        PerchModel(junk)
    with pytest.raises(BirdclefError, match=r"missing\.onnx: Perch v2 model file not found"):
        PerchModel(tmp_path / "missing.onnx")
    other = tmp_path / "other" / "model.onnx"
    other.parent.mkdir()
    common = dict(sample_rate=SR, embedding_name="embedding", embedding_size=256, n_bands=32)
    onnx.save(band_energy_graph(input_name="audio", samples=160_000, **common), str(other))
    with pytest.raises(BirdclefError, match=r"model\.onnx: the Perch v2 model has no input 'inputs' \(its inputs: "
                                            r"\['audio'\]\); not a Perch v2 export"):
        PerchModel(other)
    onnx.save(band_energy_graph(input_name="inputs", samples=96_000, **common), str(other))
    with pytest.raises(BirdclefError, match="input 'inputs' takes 96000 samples, not 160000"):
        PerchModel(other)
    onnx.save(band_energy_graph(input_name="inputs", samples=160_000, **{**common, "embedding_name": "emb"}),
              str(other))
    with pytest.raises(BirdclefError, match=r"has no output 'embedding' \(its outputs: \['emb'\]\)"):
        PerchModel(other)


def test_the_labels_file_must_be_there_and_fit_the_label_output(tmp_path: Path) -> None:
    path = write_perch_v2(tmp_path / "a", write_labels=False)
    with pytest.raises(BirdclefError, match=r"perch_v2\.onnx: its label output needs labels\.csv beside it"):
        PerchModel(path)
    path = write_perch_v2(tmp_path / "b")
    (path.parent / "labels.csv").write_text("inat2024_fsd50k\nTurdus merula\nParus major\n")
    with pytest.raises(BirdclefError, match=r"perch_v2\.onnx: the label output scores 5 classes but .*labels\.csv "
                                            r"lists 2"):
        PerchModel(path)


def test_windows_of_another_shape_are_refused(perch_file: Path) -> None:
    with pytest.raises(BirdclefError, match=r"takes \(N, 160000\) windows \(5 s at 32000 Hz\), got \(2, 144000\)"):
        PerchModel(perch_file).infer(np.zeros((2, 144_000), np.float32))


def test_perch_v2_is_a_registered_foundation_kind(perch_file: Path) -> None:
    assert {"perch-v2", "onnx"} <= set(list_kinds(zero_shot=True))
    kind = get_kind("perch-v2")
    assert kind.needs_source and kind.zero_shot and kind.licence == "Apache-2.0"
    spec = parse_foundation(f"perch-v2:{perch_file}")
    assert spec == FoundationSpec("perch-v2", str(perch_file))
    with pytest.raises(BirdclefError, match="give its file, e.g. perch-v2:/models/model.onnx"):
        parse_foundation("perch-v2")
    ctx = BuildContext(InferConfig(birdnet_batch_size=4), threads=1)
    model = load_foundation(spec, ctx)
    assert model.kind == "perch-v2" and model.unwrapped.batch_size == 4
    assert load_foundation(f"perch-v2:{perch_file}", ctx) is model, "loaded once per build"
    logits, embeddings = model.infer(np.stack([tone(2_000)]))
    assert logits.shape == (1, 5) and embeddings.shape == (1, 1536)


def test_provenance_names_the_file_its_hash_and_licence(perch_file: Path) -> None:
    record = provenance(PerchModel(perch_file))
    assert record == {"kind": "perch-v2", "model": str(perch_file.resolve()),
                      "sha256": hashlib.sha256(perch_file.read_bytes()).hexdigest(), "licence": "Apache-2.0",
                      "sample_rate": 32_000, "window_s": 5.0, "embedding_size": 1536}


def test_outputs_are_deterministic_across_loads_and_calls(perch_file: Path) -> None:
    windows = np.stack([tone(2_500, seed=3), tone(4_000, seed=4)])
    first = PerchModel(perch_file, threads=1).infer(windows)
    again = PerchModel(perch_file, threads=1)
    for result in (again.infer(windows), again.infer(windows)):
        assert np.array_equal(result[0], first[0]) and np.array_equal(result[1], first[1])
