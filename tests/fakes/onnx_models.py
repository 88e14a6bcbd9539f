"""Tiny ONNX files with the contracts of real foundation models, built with ``onnx.helper`` (no torch, no weights).

:func:`write_perch_v2` writes a fake Perch v2 export with exactly its input and outputs (``inputs`` float32
``[batch, 160000]``; ``embedding [batch, 1536]``, ``spatial_embedding [batch, 16, 4, 1536]``, ``spectrogram
[batch, 500, 128]``, ``label [batch, L]``; no ``label`` when embedding-only) and its ``labels.csv``.
:func:`write_card_model` writes any-shape models and their cards for the ``onnx`` kind.

The outputs depend on the audio, so a head can learn from them and zero-shot can rank windows:

- the window is cut into frames of :data:`FRAME` samples; each frame is projected on cosines and sines of the
  first ``n_bands`` DFT bins (bin k: ``k * sample_rate / FRAME`` Hz, 125 Hz apart at 32 kHz);
- ``log(mean power + 1e-6)`` per bin over the frames is the embedding's first ``n_bands`` values (a tone of f Hz
  peaks at index ``round(f * FRAME / sample_rate)``); the rest is a fixed random projection of them;
- label j's logit is the log power in the bin of ``label_hz[j]`` minus the mean log power over the bins: high
  where that frequency stands out.

Example:
    >>> path = write_perch_v2(tmp_path, labels=["Turdus merula", "Erithacus rubecula"], label_hz=[2000, 6000])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

FRAME = 256
"""Samples per analysis frame of the fake graphs."""
PERCH_SAMPLES = 160_000
PERCH_RATE = 32_000
PERCH_EMBEDDING = 1536
FAKE_LABELS = ["Turdus merula", "Erithacus rubecula", "Fringilla coelebs", "Parus major", "Rana temporaria"]
FAKE_LABEL_HZ = [1_000.0, 2_000.0, 3_000.0, 4_000.0, 6_000.0]
OPSET = 17


def band_index(freq_hz: float, sample_rate: int = PERCH_RATE) -> int:
    """The embedding index (DFT bin of a :data:`FRAME`-sample frame) where a tone of `freq_hz` peaks."""
    return int(round(freq_hz * FRAME / sample_rate))


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def band_energy_graph(*, input_name: str, samples: int, sample_rate: int, embedding_name: str, embedding_size: int,
                      logits_name: str | None = None, label_hz: Sequence[float] = (), n_bands: int = 128,
                      perch_extras: bool = False, input_type: int = TensorProto.FLOAT,
                      symbolic_widths: bool = False, seed: int = 0) -> onnx.ModelProto:
    """The graph of the module docstring: one ``[batch, samples]`` input, an embedding and optional logits.

    Args:
        perch_extras: add Perch v2's ``spatial_embedding [batch, 16, 4, D]`` and ``spectrogram [batch, 500, 128]``.
        input_type: ``TensorProto.FLOAT`` or ``FLOAT16`` (cast to float inside the graph).
        symbolic_widths: leave the outputs' last dimensions symbolic (as some exports do).
    """
    rng = np.random.default_rng(seed)
    frames = samples // FRAME
    bins = np.arange(n_bands)
    t = np.arange(FRAME)[:, None]
    basis = np.concatenate([np.cos(2 * np.pi * t * bins / FRAME), np.sin(2 * np.pi * t * bins / FRAME)], axis=1)
    fold = np.concatenate([np.eye(n_bands), np.eye(n_bands)])  # (2B, B): cos^2 + sin^2 per bin
    projection = rng.standard_normal((n_bands, embedding_size - n_bands)) / np.sqrt(n_bands)
    f32 = np.float32
    nodes = [helper.make_node("Cast", [input_name], ["x"], to=TensorProto.FLOAT),
             _const("starts", np.array([0], np.int64)), _const("ends", np.array([frames * FRAME], np.int64)),
             _const("axes", np.array([1], np.int64)),
             helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["xs"]),
             _const("frame_shape", np.array([0, frames, FRAME], np.int64)),
             helper.make_node("Reshape", ["xs", "frame_shape"], ["framed"]),          # (B, frames, FRAME)
             _const("basis", basis.astype(f32)), helper.make_node("MatMul", ["framed", "basis"], ["spec"]),
             helper.make_node("Mul", ["spec", "spec"], ["spec2"]),
             _const("fold", fold.astype(f32)), helper.make_node("MatMul", ["spec2", "fold"], ["power"]),
             helper.make_node("ReduceMean", ["power"], ["band_power"], axes=[1], keepdims=0),   # (B, n_bands)
             _const("eps", np.array(1e-6, f32)), helper.make_node("Add", ["band_power", "eps"], ["band_eps"]),
             helper.make_node("Log", ["band_eps"], ["log_power"]),
             _const("projection", projection.astype(f32)),
             helper.make_node("MatMul", ["log_power", "projection"], ["projected"]),
             helper.make_node("Concat", ["log_power", "projected"], [embedding_name], axis=1)]
    width = (lambda n, w: n) if symbolic_widths else (lambda n, w: w)
    outputs = [helper.make_tensor_value_info(embedding_name, TensorProto.FLOAT,
                                             ["batch", width("embedding_width", embedding_size)])]
    if logits_name is not None:
        weight = np.zeros((embedding_size, len(label_hz)), f32)
        weight[:n_bands] = -1.0 / n_bands
        for j, hz in enumerate(label_hz):
            weight[band_index(hz, sample_rate), j] += 1.0
        nodes += [_const("label_weight", weight),
                  helper.make_node("MatMul", [embedding_name, "label_weight"], [logits_name])]
        outputs.append(helper.make_tensor_value_info(logits_name, TensorProto.FLOAT,
                                                     ["batch", width("label_width", len(label_hz))]))
    if perch_extras:
        nodes += [_const("unsqueeze_axes", np.array([1, 2], np.int64)),
                  helper.make_node("Unsqueeze", [embedding_name, "unsqueeze_axes"], ["emb4"]),
                  _const("repeats", np.array([1, 16, 4, 1], np.int64)),
                  helper.make_node("Tile", ["emb4", "repeats"], ["spatial_embedding"]),
                  _const("spec_shape", np.array([0, 500, samples // 500], np.int64)),
                  helper.make_node("Reshape", ["x", "spec_shape"], ["spec_frames"]),
                  _const("mel", (rng.standard_normal((samples // 500, 128)) / 20).astype(f32)),
                  helper.make_node("MatMul", ["spec_frames", "mel"], ["spectrogram"])]
        outputs += [helper.make_tensor_value_info("spatial_embedding", TensorProto.FLOAT,
                                                  ["batch", 16, 4, embedding_size]),
                    helper.make_tensor_value_info("spectrogram", TensorProto.FLOAT, ["batch", 500, 128])]
    graph = helper.make_graph(nodes, "fake_foundation_model",
                              [helper.make_tensor_value_info(input_name, input_type, ["batch", samples])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="birdclef-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_perch_v2(folder: Path, labels: Sequence[str] = FAKE_LABELS, label_hz: Sequence[float] | None = None,
                   embedding_only: bool = False, write_labels: bool = True, name: str = "perch_v2.onnx",
                   label_header: str = "inat2024_fsd50k") -> Path:
    """A fake Perch v2 export (module docstring) at ``folder/name``, with ``labels.csv`` beside it.

    Args:
        labels: the label names (the ``label`` output's width is their count).
        label_hz: the frequency each label listens to (default :data:`FAKE_LABEL_HZ`, cycled).
        embedding_only: no ``label`` output (and no labels.csv), like the headless exports.
        write_labels: write labels.csv (False: test its absence).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hz = list(label_hz) if label_hz is not None else [FAKE_LABEL_HZ[j % len(FAKE_LABEL_HZ)] for j in range(len(labels))]
    model = band_energy_graph(input_name="inputs", samples=PERCH_SAMPLES, sample_rate=PERCH_RATE,
                              embedding_name="embedding", embedding_size=PERCH_EMBEDDING,
                              logits_name=None if embedding_only else "label", label_hz=hz, perch_extras=True)
    path = folder / name
    onnx.save(model, str(path))
    if write_labels and not embedding_only:
        (folder / "labels.csv").write_text("\n".join([label_header, *labels]) + "\n", encoding="utf-8")
    return path


def write_card_model(folder: Path, *, sample_rate: int = 16_000, window_s: float = 3.0, embedding_size: int = 160,
                     labels: Sequence[str] | None = FAKE_LABELS[:3], label_hz: Sequence[float] | None = None,
                     input_name: str = "audio", embedding_name: str = "emb", logits_name: str = "scores",
                     input_type: int = TensorProto.FLOAT, symbolic_widths: bool = False,
                     card: dict | None = None, card_name: str = "card.yaml") -> Path:
    """A fake model for the ``onnx`` kind, its labels file and its card; returns the card's path.

    Args:
        labels: label names (None: an embedding-only model, and a card without logits and labels).
        card: fields that replace (or, set to None, remove) those of the default card.
        card_name: ``*.yaml`` or ``*.json`` (the format written).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    samples = int(round(sample_rate * window_s))
    hz = list(label_hz) if label_hz is not None else [1_000.0 * (j + 1) for j in range(len(labels or []))]
    model = band_energy_graph(input_name=input_name, samples=samples, sample_rate=sample_rate,
                              embedding_name=embedding_name, embedding_size=embedding_size,
                              logits_name=None if labels is None else logits_name, label_hz=hz, n_bands=64,
                              input_type=input_type, symbolic_widths=symbolic_widths)
    onnx.save(model, str(folder / "model.onnx"))
    fields = {"name": "fake card model", "model": "model.onnx", "licence": "MIT (test fake)",
              "sample_rate": sample_rate, "window_s": window_s, "input": input_name, "embedding": embedding_name}
    if labels is not None:
        (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        fields.update(logits=logits_name, activation="sigmoid", labels="labels.txt")
    for key, value in (card or {}).items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    path = folder / card_name
    text = json.dumps(fields, indent=2) if path.suffix == ".json" else yaml.safe_dump(fields, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path
