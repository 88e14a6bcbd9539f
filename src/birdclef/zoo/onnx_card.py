"""Kind ``onnx``: any ONNX audio embedding model, described by a small card (YAML or JSON), without code.

A card says which file to run and how: BirdNET+ V3.0's ONNX release, a headless Perch export, a user's own
model. Name it as ``onnx:/models/card.yaml``. Fields (``configs/cards/example-card.yaml`` is a commented
example):

| field | required | meaning |
| --- | --- | --- |
| ``model`` | yes | the ``.onnx`` file, relative to the card's folder (or absolute) |
| ``licence`` (or ``license``) | yes | the weights' licence, recorded with everything derived from them |
| ``sample_rate`` | yes | Hz of the windows the model takes |
| ``window_s`` | yes | seconds per window, at most 5 (one BirdCLEF row) |
| ``hop_s`` | no | default step (s) between windows of ``embed``; default ``window_s`` |
| ``input`` | no | the input's name; default the graph's only input |
| ``input_layout`` | no | ``[batch, samples]`` (the only layout supported) |
| ``embedding`` | yes | the embedding output's name, ``(batch, D)`` |
| ``logits`` | no | the class-score output's name, ``(batch, L)``; without it the model gives embeddings only |
| ``activation`` | no | ``sigmoid`` (default), ``softmax`` or ``none`` (the output already is scores) |
| ``labels`` | with ``logits`` | a file of one label per line, or ``{file, header, column, delimiter}`` |
| ``preprocessing`` | no | ``none`` (default), ``zero_mean_peak`` (peak 0.25) or ``{zero_mean_peak: PEAK}`` |
| ``name``, ``description``, ``source`` | no | free text |

``labels``: a plain file name reads one label per line; ``header: true`` skips the first line; ``column`` (a
header name, or a 0-based index) with ``delimiter`` (default ``,``) reads one column of a delimited table,
e.g. ``sci_name`` of BirdNET+ V3.0's ``;``-separated labels. Zero-shot matches labels by scientific name (the
part before a ``_``, BirdNET's ``Scientific name_Common name``).

Every field is checked when the card loads, and against the graph (the input exists and takes
``window_s * sample_rate`` samples, the outputs exist, the labels count the logits' width); every error names
the card and the field.

Example:
    >>> model = OnnxCardModel("/models/birdnet3/card.yaml", threads=2)
    >>> logits, embeddings = model.infer(windows)   # (N, L) or None, (N, D)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from birdclef.errors import BirdclefError
from birdclef.zoo.birdnet import build_zero_shot
from birdclef.zoo.foundation import ACTIVATIONS
from birdclef.zoo.onnx_graph import OnnxGraph, check_windows
from birdclef.zoo.perch import TARGET_PEAK, prepare_windows
from birdclef.zoo.registry import BuildContext, Kind, register_kind

ONNX = "onnx"
MAX_WINDOW_S = 5.0
LAYOUT = ("batch", "samples")
PREPROCESSING = ("none", "zero_mean_peak")
FIELDS = ("model", "licence", "license", "sample_rate", "window_s", "hop_s", "input", "input_layout", "embedding",
          "logits", "activation", "labels", "preprocessing", "name", "description", "source")
LABEL_FIELDS = ("file", "header", "column", "delimiter")


@dataclass(frozen=True)
class LabelsSpec:
    """Where a card's labels are: a file, whether its first line is a header, which column of which delimiter."""

    file: Path
    header: bool = False
    column: str | int | None = None
    delimiter: str = ","


@dataclass(frozen=True)
class OnnxCard:
    """A validated card (module docstring); paths resolved against the card's folder."""

    path: Path
    model: Path
    licence: str
    sample_rate: int
    window_s: float
    hop_s: float
    input: str | None
    embedding: str
    logits: str | None
    activation: str
    labels: LabelsSpec | None
    peak: float | None
    """Target peak of zero_mean_peak preprocessing; None: windows go in as they are."""
    name: str


class _Fields:
    """Reads the fields of one card, each error naming the card and the field."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    def fail(self, field: str, message: str) -> BirdclefError:
        return BirdclefError(f"{self.path}: field {field!r} {message}")

    def text(self, field: str, required: bool = False) -> str | None:
        value = self.data.get(field)
        if value is None:
            if required:
                raise self.fail(field, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def number(self, field: str, kind: type, default: float | None = None) -> float:
        value = self.data.get(field, default)
        if value is None:
            raise self.fail(field, "is required")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0 \
                or (kind is int and int(value) != value):
            raise self.fail(field, f"must be a positive {'whole ' if kind is int else ''}number, got {value!r}")
        return kind(value)


def read_card(path: str | Path) -> OnnxCard:
    """The card at `path`, every field checked (the module docstring lists them).

    Raises:
        BirdclefError: an unreadable card, an unknown field, or a missing or invalid one (named).
    """
    path = Path(path)
    data = _load(path)
    fields = _Fields(path, data)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise BirdclefError(f"{path}: unknown field(s) {unknown}; a card has {list(FIELDS)}")
    if "licence" in data and "license" in data:
        raise fields.fail("license", "repeats 'licence'; give one")
    licence = fields.text("licence") or fields.text("license")
    if licence is None:
        raise fields.fail("licence", "is required: the weights' licence, recorded with everything derived from them")
    model = Path(fields.text("model", required=True))
    sample_rate = fields.number("sample_rate", int)
    window_s = fields.number("window_s", float)
    if window_s > MAX_WINDOW_S:
        raise fields.fail("window_s", f"must be at most {MAX_WINDOW_S:g} s (one BirdCLEF row), got {window_s:g}")
    if not float(window_s * sample_rate).is_integer():
        raise fields.fail("window_s", f"times sample_rate must be a whole number of samples, got "
                                     f"{window_s * sample_rate}")
    _check_layout(fields)
    logits = fields.text("logits")
    activation = fields.text("activation") or "sigmoid"
    if activation not in ACTIVATIONS:
        raise fields.fail("activation", f"must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if "activation" in data and logits is None:
        raise fields.fail("activation", "is given but 'logits' is not; name the class-score output")
    labels = _labels(fields, path.parent)
    if (labels is None) != (logits is None):
        raise fields.fail("labels", "is required with 'logits'" if labels is None
                          else "is given but 'logits' is not; name the class-score output")
    return OnnxCard(path=path, model=path.parent / model, licence=licence, sample_rate=sample_rate,
                    window_s=window_s, hop_s=fields.number("hop_s", float, window_s), input=fields.text("input"),
                    embedding=fields.text("embedding", required=True), logits=logits, activation=activation,
                    labels=labels, peak=_peak(fields), name=fields.text("name") or path.stem)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise BirdclefError(f"{path}: ONNX model card not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BirdclefError(f"{path}: cannot read the ONNX model card ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise BirdclefError(f"{path}: an ONNX model card is a mapping of fields (model, licence, sample_rate, ...), "
                            f"got {type(data).__name__}")
    return data


def _check_layout(fields: _Fields) -> None:
    layout = fields.data.get("input_layout")
    if layout is None:
        return
    if isinstance(layout, str):
        layout = [part.strip() for part in layout.strip("[]() ").split(",")]
    if not isinstance(layout, list) or tuple(str(p).strip().lower() for p in layout) != LAYOUT:
        raise fields.fail("input_layout", f"must be [batch, samples] (mono waveforms; the only layout birdclef "
                                          f"feeds), got {fields.data['input_layout']!r}")


def _labels(fields: _Fields, folder: Path) -> LabelsSpec | None:
    value = fields.data.get("labels")
    if value is None:
        return None
    if isinstance(value, str):
        value = {"file": value}
    if not isinstance(value, dict):
        raise fields.fail("labels", f"must be a file name or a mapping {list(LABEL_FIELDS)}, got {value!r}")
    unknown = sorted(set(value) - set(LABEL_FIELDS))
    if unknown:
        raise fields.fail("labels", f"has unknown key(s) {unknown}; it has {list(LABEL_FIELDS)}")
    file, header, column = value.get("file"), value.get("header", False), value.get("column")
    delimiter = value.get("delimiter", ",")
    if not isinstance(file, str) or not file.strip():
        raise fields.fail("labels", f"needs 'file' (a labels file beside the card), got {file!r}")
    if not isinstance(header, bool):
        raise fields.fail("labels", f"'header' must be true or false, got {header!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise fields.fail("labels", f"'delimiter' must be one character, got {delimiter!r}")
    if column is not None and (isinstance(column, bool) or not isinstance(column, (str, int))
                               or (isinstance(column, int) and column < 0)):
        raise fields.fail("labels", f"'column' must be a header name or a 0-based index, got {column!r}")
    if isinstance(column, str) and not header:
        raise fields.fail("labels", f"'column' {column!r} names a header column; set 'header: true'")
    return LabelsSpec(folder / file.strip(), header, column, delimiter)


def _peak(fields: _Fields) -> float | None:
    value = fields.data.get("preprocessing")
    if value is None or value == "none":
        return None
    if value == "zero_mean_peak":
        return TARGET_PEAK
    if isinstance(value, dict) and list(value) == ["zero_mean_peak"]:
        peak = value["zero_mean_peak"]
        if not isinstance(peak, bool) and isinstance(peak, (int, float)) and np.isfinite(peak) and peak > 0:
            return float(peak)
        raise fields.fail("preprocessing", f"zero_mean_peak needs a positive peak, got {peak!r}")
    raise fields.fail("preprocessing", f"must be none, zero_mean_peak or {{zero_mean_peak: PEAK}}, got {value!r}")


def read_card_labels(card: OnnxCard) -> list[str]:
    """The labels a card's ``labels`` names (blank lines dropped).

    Raises:
        BirdclefError: a missing or unreadable file, or a column it does not have (named with the card).
    """
    spec = card.labels
    where = f"{card.path}: field 'labels'"
    try:
        with open(spec.file, newline="", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BirdclefError(f"{where}: cannot read {spec.file} ({exc})") from None
    if spec.column is None:
        return [line.strip() for line in lines[1 if spec.header else 0:] if line.strip()]
    rows = [row for row in csv.reader(lines, delimiter=spec.delimiter) if any(cell.strip() for cell in row)]
    head, body = (rows[0], rows[1:]) if spec.header and rows else ([], rows)
    index = spec.column
    if isinstance(index, str):
        names = [cell.strip() for cell in head]
        if index not in names:
            raise BirdclefError(f"{where}: {spec.file} has no column {index!r} (its header: {names})")
        index = names.index(index)
    short = [n for n, row in enumerate(body) if len(row) <= index]
    if short:
        raise BirdclefError(f"{where}: row {short[0] + 1 + spec.header} of {spec.file} has no column {spec.column!r}")
    return [row[index].strip() for row in body]


class OnnxCardModel:
    """The model an ONNX card describes (module docstring).

    Args:
        card: the card file (YAML or JSON), or an already read :class:`OnnxCard`.
        threads: ONNX Runtime intra-op threads (None: its default).
        batch_size: windows per ONNX Runtime run.

    Raises:
        BirdclefError: an invalid card, or a graph or labels file that does not match it.
    """

    kind = ONNX

    def __init__(self, card: str | Path | OnnxCard, threads: int | None = None, batch_size: int = 16):
        self.card = card if isinstance(card, OnnxCard) else read_card(card)
        card = self.card
        self.path = card.model
        self.name, self.licence, self.activation = card.name, card.licence, card.activation
        self.sample_rate, self.window_s, self.hop_s = card.sample_rate, card.window_s, card.hop_s
        self.window_samples = int(round(card.window_s * card.sample_rate))
        self.batch_size = max(1, int(batch_size))
        if not card.model.is_file():
            raise BirdclefError(f"{card.path}: field 'model': {card.model} not found")
        self.graph = OnnxGraph(card.model, threads, f"model of card {card.path.name}")
        self.input = self._input_name()
        self.graph.input_dtype(self.input)
        self._fetch = [card.embedding] + ([card.logits] if card.logits else [])
        for field, name in zip(("embedding", "logits"), self._fetch):
            self.graph.output(name, f"; fix field {field!r} of {card.path}")
        widths = self.graph.widths(self.input, self._fetch, self.window_samples)
        self.embedding_size = widths[card.embedding]
        self.labels: list[str] | None = None
        if card.logits:
            self.labels = read_card_labels(card)
            if len(self.labels) != widths[card.logits]:
                raise BirdclefError(f"{card.path}: field 'labels': {card.labels.file} lists {len(self.labels)} "
                                    f"labels but output {card.logits!r} scores {widths[card.logits]} classes")

    def _input_name(self) -> str:
        card, inputs = self.card, self.graph.inputs
        if card.input is None and len(inputs) != 1:
            raise BirdclefError(f"{card.path}: field 'input' is required: {card.model} has inputs {list(inputs)}")
        name = card.input or next(iter(inputs))
        port = self.graph.input(name, f"; fix field 'input' of {card.path}")
        if len(port.shape) not in (0, 2):
            raise BirdclefError(f"{card.path}: input {name!r} of {card.model} has shape {port.shape}; birdclef "
                                "feeds [batch, samples] (field 'input_layout')")
        if port.width is not None and port.width != self.window_samples:
            raise BirdclefError(f"{card.path}: fields 'window_s' and 'sample_rate' give {self.window_samples} "
                                f"samples but input {name!r} of {card.model} takes {port.width}")
        return name

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(N, window samples) float32 windows -> ((N, n_labels) scores or logits or None, (N, D) float32).

        Raises:
            BirdclefError: windows of another shape.
        """
        windows = check_windows(windows, self.window_samples, self.path, self.sample_rate, self.window_s)
        if not len(windows):
            empty_logits = None if self.labels is None else np.zeros((0, len(self.labels)), np.float32)
            return empty_logits, np.zeros((0, self.embedding_size), np.float32)
        if self.card.peak is not None:
            windows = prepare_windows(windows, self.card.peak)
        outputs = self.graph.run(self.input, self._fetch, windows, self.batch_size)
        return (outputs[1] if self.labels is not None else None), outputs[0]

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """(N, n_labels) float32 logits (or scores, activation ``none``) of (N, window samples) windows.

        Raises:
            BirdclefError: a card without ``logits``.
        """
        logits, _ = self.infer(windows)
        if logits is None:
            raise BirdclefError(f"{self.card.path}: the card names no 'logits' output; the model gives embeddings "
                                "and heads, not zero-shot scores")
        return logits

    def embeddings(self, windows: np.ndarray) -> np.ndarray:
        """(N, D) float32 embeddings of (N, window samples) windows."""
        return self.infer(windows)[1]


def load_model(source: Path | str | None, ctx: BuildContext) -> OnnxCardModel:
    """The model the card at `source` describes, loaded once per build (``ctx.threads`` threads,
    ``infer.birdnet_batch_size`` windows per run).

    Raises:
        BirdclefError: no card given, or an invalid one.
    """
    if source is None:
        raise BirdclefError("onnx: give its card, e.g. onnx:/models/card.yaml")
    return ctx.shared((ONNX, str(source)), lambda: OnnxCardModel(source, ctx.threads, ctx.config.birdnet_batch_size))


KIND = register_kind(Kind(
    name=ONNX, summary="any ONNX embedding model described by a card (YAML/JSON): embeddings, and zero-shot when "
                       "the card names a class-score output and its labels",
    reads="a model card (onnx:CARD) naming the .onnx file, its rate, window, outputs, labels and licence",
    licence="the card's", verbs=("predict", "analyze", "embed", "pseudo"), build=build_zero_shot(ONNX),
    zero_shot=True, load_model=load_model, needs_source=True))
