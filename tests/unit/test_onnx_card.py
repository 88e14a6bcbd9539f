"""Kind ``onnx``: any ONNX embedding model described by a card; every field checked, errors naming card and field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from onnx import TensorProto

from birdclef.config import InferConfig
from birdclef.errors import BirdclefError
from birdclef.zoo.foundation import FoundationSpec, load_foundation, parse_foundation, provenance
from birdclef.zoo.onnx_card import OnnxCardModel, read_card
from birdclef.zoo.registry import BuildContext, get_kind

from conftest import chirp
from fakes.onnx_models import FAKE_LABELS, band_index, write_card_model

SR = 16_000
REPO = Path(__file__).resolve().parents[2]


def tone(freq_hz: float, level: float = 0.5, seed: int = 0) -> np.ndarray:
    """3 s of a pure tone plus faint noise at 16 kHz: one window of the fake card model."""
    return chirp(3.0, freq_hz, freq_hz, sr=SR, seed=seed) * (level / 0.5)


def test_a_card_describes_a_model_without_code(tmp_path: Path) -> None:
    card = write_card_model(tmp_path)
    model = OnnxCardModel(card, threads=1, batch_size=2)
    assert (model.kind, model.sample_rate, model.window_s, model.hop_s, model.licence, model.activation) == \
        ("onnx", SR, 3.0, 3.0, "MIT (test fake)", "sigmoid")
    assert model.path == tmp_path / "model.onnx" and model.labels == FAKE_LABELS[:3] and model.embedding_size == 160
    logits, embeddings = model.infer(np.stack([tone(1_000), tone(2_000), tone(3_000)]))
    assert logits.shape == (3, 3) and embeddings.shape == (3, 160) and embeddings.dtype == np.float32
    assert list(logits.argmax(axis=1)) == [0, 1, 2], "label j listens to (j + 1) kHz"
    assert embeddings[1, :64].argmax() == band_index(2_000, SR)
    with pytest.raises(BirdclefError, match=r"takes \(N, 48000\) windows \(3 s at 16000 Hz\)"):
        model.infer(np.zeros((1, 160_000), np.float32))


def test_json_cards_hops_and_absolute_model_paths(tmp_path: Path) -> None:
    card = write_card_model(tmp_path, card_name="card.json",
                            card={"model": str(tmp_path / "model.onnx"), "hop_s": 1.5, "license": "CC0-1.0",
                                  "licence": None})
    model = OnnxCardModel(card)
    assert model.hop_s == 1.5 and model.licence == "CC0-1.0" and model.path == tmp_path / "model.onnx"
    assert json.loads(card.read_text())["hop_s"] == 1.5


def test_labels_from_a_column_of_a_delimited_table(tmp_path: Path) -> None:
    """BirdNET+ V3.0's labels: `;`-separated, a header, the scientific name in column `sci_name`."""
    card = write_card_model(tmp_path, card={"labels": {"file": "table.csv", "header": True, "delimiter": ";",
                                                       "column": "sci_name"}})
    rows = [f"{i};{name};Common {i};{1000 + i};Aves;Passeriformes" for i, name in enumerate(FAKE_LABELS[:3])]
    (tmp_path / "table.csv").write_text("\n".join(["id;sci_name;com_name;gbif;class;order", *rows, ""]))
    assert OnnxCardModel(card).labels == FAKE_LABELS[:3]
    yaml_card = yaml.safe_load(card.read_text())
    yaml_card["labels"] = {"file": "table.csv", "header": True, "delimiter": ";", "column": 2}
    card.write_text(yaml.safe_dump(yaml_card))
    assert OnnxCardModel(card).labels == ["Common 0", "Common 1", "Common 2"]
    yaml_card["labels"] = {"file": "plain.txt", "header": True}
    (tmp_path / "plain.txt").write_text("label\n" + "\n".join(FAKE_LABELS[:3]) + "\n\n")
    card.write_text(yaml.safe_dump(yaml_card))
    assert OnnxCardModel(card).labels == FAKE_LABELS[:3]


def test_zero_mean_peak_preprocessing_makes_the_level_irrelevant(tmp_path: Path) -> None:
    windows = np.stack([tone(2_000, level=0.9), tone(2_000, level=0.01) + 0.1])
    raw = OnnxCardModel(write_card_model(tmp_path / "raw", card={"preprocessing": "none"})).embeddings(windows)
    assert not np.allclose(raw[0], raw[1], atol=0.5), "without preprocessing the level shows in the band energies"
    for folder, setting in (("default", "zero_mean_peak"), ("peak", {"zero_mean_peak": 0.5})):
        model = OnnxCardModel(write_card_model(tmp_path / folder, card={"preprocessing": setting}))
        emb = model.embeddings(windows)
        assert np.allclose(emb[0], emb[1], atol=0.05)
    assert read_card(tmp_path / "peak" / "card.yaml").peak == 0.5
    assert read_card(tmp_path / "default" / "card.yaml").peak == 0.25


def test_half_precision_inputs_and_symbolic_widths(tmp_path: Path) -> None:
    model = OnnxCardModel(write_card_model(tmp_path, input_type=TensorProto.FLOAT16, symbolic_widths=True))
    assert model.embedding_size == 160 and len(model.labels) == 3, "widths probed with one silent window"
    logits, embeddings = model.infer(np.stack([tone(3_000)]))
    assert logits.dtype == np.float32 and embeddings.shape == (1, 160) and logits[0].argmax() == 2


def test_an_embedding_only_card_has_no_labels(tmp_path: Path) -> None:
    model = OnnxCardModel(write_card_model(tmp_path, labels=None))
    logits, embeddings = model.infer(np.stack([tone(1_000)]))
    assert model.labels is None and logits is None and embeddings.shape == (1, 160)
    with pytest.raises(BirdclefError, match="names no 'logits' output"):
        model.logits(np.stack([tone(1_000)]))


BAD_FIELDS = [
    ({"licence": None}, "licence", "is required"),
    ({"licence": ""}, "licence", "non-empty string"),
    ({"license": "MIT"}, "license", "repeats 'licence'"),
    ({"model": None}, "model", "is required"),
    ({"sample_rate": None}, "sample_rate", "is required"),
    ({"sample_rate": "32k"}, "sample_rate", "positive whole number"),
    ({"sample_rate": 16000.5}, "sample_rate", "positive whole number"),
    ({"window_s": 6.0}, "window_s", "at most 5 s"),
    ({"window_s": -1}, "window_s", "positive number"),
    ({"window_s": 3.00001}, "window_s", "whole number of samples"),
    ({"hop_s": 0}, "hop_s", "positive number"),
    ({"embedding": None}, "embedding", "is required"),
    ({"input_layout": ["batch", "channels", "samples"]}, "input_layout", r"must be \[batch, samples\]"),
    ({"input_layout": "samples, batch"}, "input_layout", r"must be \[batch, samples\]"),
    ({"activation": "relu"}, "activation", "must be one of"),
    ({"logits": None}, "activation", "'logits' is not"),
    ({"logits": None, "activation": None}, "labels", "'logits' is not"),
    ({"labels": None}, "labels", "is required with 'logits'"),
    ({"labels": ["a", "b"]}, "labels", "a file name or a mapping"),
    ({"labels": {"file": "labels.txt", "colour": 1}}, "labels", r"unknown key\(s\) \['colour'\]"),
    ({"labels": {"file": "labels.txt", "column": "sci_name"}}, "labels", "set 'header: true'"),
    ({"labels": {"file": "labels.txt", "delimiter": ";;"}}, "labels", "one character"),
    ({"labels": {"header": True}}, "labels", "needs 'file'"),
    ({"preprocessing": "loudness"}, "preprocessing", "must be none, zero_mean_peak"),
    ({"preprocessing": {"zero_mean_peak": -1}}, "preprocessing", "positive peak"),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD_FIELDS, ids=[f"{f}-{i}" for i, (_, f, _) in
                                                                          enumerate(BAD_FIELDS)])
def test_bad_fields_are_refused_naming_the_card_and_the_field(tmp_path: Path, change: dict, field: str,
                                                              message: str) -> None:
    card = write_card_model(tmp_path, card=change)
    with pytest.raises(BirdclefError, match=rf"card\.yaml: field '{field}' .*{message}"):
        OnnxCardModel(card)


def test_unknown_fields_and_unreadable_cards_are_refused(tmp_path: Path) -> None:
    card = write_card_model(tmp_path, card={"sampling_rate": 32000})
    with pytest.raises(BirdclefError, match=r"card\.yaml: unknown field\(s\) \['sampling_rate'\]; a card has"):
        read_card(card)
    card.write_text("model: [unclosed\n")
    with pytest.raises(BirdclefError, match=r"card\.yaml: cannot read the ONNX model card"):
        read_card(card)
    card.write_text("- just\n- a list\n")
    with pytest.raises(BirdclefError, match=r"card\.yaml: an ONNX model card is a mapping"):
        read_card(card)
    with pytest.raises(BirdclefError, match=r"nope\.yaml: ONNX model card not found"):
        read_card(tmp_path / "nope.yaml")


def test_cards_that_do_not_match_their_graph_or_labels_are_refused(tmp_path: Path) -> None:
    cases = [({"model": "gone.onnx"}, r"card\.yaml: field 'model': .*gone\.onnx not found"),
             ({"input": "wave"}, r"has no input 'wave' \(its inputs: \['audio'\]\); fix field 'input' of .*card\.yaml"),
             ({"embedding": "embedding"}, r"has no output 'embedding' \(its outputs: \['emb', 'scores'\]\); fix "
                                          r"field 'embedding'"),
             ({"logits": "label"}, r"has no output 'label' .*; fix field 'logits'"),
             ({"window_s": 2.0}, r"card\.yaml: fields 'window_s' and 'sample_rate' give 32000 samples but input "
                                 r"'audio' .* takes 48000"),
             ({"labels": "short.txt"}, r"card\.yaml: field 'labels': .*short\.txt lists 2 labels but output "
                                       r"'scores' scores 3 classes"),
             ({"labels": "absent.txt"}, r"card\.yaml: field 'labels': cannot read .*absent\.txt"),
             ({"labels": {"file": "short.txt", "header": True, "column": "sci"}},
              r"field 'labels': .*short\.txt has no column 'sci'")]
    for n, (change, message) in enumerate(cases):
        folder = tmp_path / str(n)
        card = write_card_model(folder, card=change)
        (folder / "short.txt").write_text("Turdus merula\nParus major\n")
        with pytest.raises(BirdclefError, match=message):
            OnnxCardModel(card)
    junk = write_card_model(tmp_path / "junk")
    (tmp_path / "junk" / "model.onnx").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(BirdclefError, match=r"model\.onnx: not an ONNX model"):
        OnnxCardModel(junk)


def test_onnx_is_a_registered_foundation_kind_with_provenance(tmp_path: Path) -> None:
    card = write_card_model(tmp_path)
    kind = get_kind("onnx")
    assert kind.needs_source and kind.zero_shot
    spec = parse_foundation(f"onnx:{card}")
    assert spec == FoundationSpec("onnx", str(card))
    with pytest.raises(BirdclefError, match="give its file, e.g. onnx:/models/model.yaml"):
        parse_foundation("onnx")
    model = load_foundation(spec, BuildContext(InferConfig(birdnet_batch_size=3), threads=1))
    assert model.kind == "onnx" and model.unwrapped.batch_size == 3
    assert model.infer(np.stack([tone(1_000)]))[0].shape == (1, 3)
    record = provenance(model)
    assert record["sha256"] == hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()
    assert (record["kind"], record["licence"], record["sample_rate"], record["window_s"], record["embedding_size"]) \
        == ("onnx", "MIT (test fake)", SR, 3.0, 160)
    again = OnnxCardModel(card).infer(np.stack([tone(1_500, seed=2)]))
    assert np.array_equal(again[1], OnnxCardModel(card).infer(np.stack([tone(1_500, seed=2)]))[1])


@pytest.mark.parametrize("name", ["example-card.yaml", "perch-v2-headless.yaml"])
def test_the_shipped_example_cards_are_valid(name: str) -> None:
    card = read_card(REPO / "configs" / "cards" / name)
    assert card.window_s <= 5.0 and card.licence and card.embedding
    assert (card.logits is None) == (card.labels is None)
