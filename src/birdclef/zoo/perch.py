"""Kind ``perch-v2``: Google's Perch v2 (Perch 2.0) bird-vocalization classifier, from the user's ONNX export.

Perch v2 is Google DeepMind's multi-taxa bioacoustics model (EfficientNet-B3, trained on Xeno-Canto,
iNaturalist, the Tierstimmenarchiv and FSD50K; weights Apache-2.0, Kaggle ``google/bird-vocalization-classifier``).
birdclef runs its ONNX conversion with ONNX Runtime and never ships the file: name it as
``perch-v2:/models/perch_v2.onnx``. The graph contract (its public model card):

- input ``inputs``: float32 ``[batch, 160000]``, 5 s of mono audio at 32 kHz;
- outputs ``embedding`` ``[batch, 1536]``, ``spatial_embedding`` ``[batch, 16, 4, 1536]``, ``spectrogram``
  ``[batch, 500, 128]`` and ``label`` ``[batch, 14795]`` (logits; absent in an embedding-only export).

Only ``embedding`` and ``label`` are fetched (ONNX Runtime then skips what only the others need). The label
names come from ``labels.csv`` beside the ``.onnx`` file (a header line, then one name per ``label`` column, as
the Kaggle model's ``assets/labels.csv``); an embedding-only export has no labels (embeddings and heads, no
zero-shot). Classes Perch does not know stay NaN in zero-shot scores (the zero-shot predictor's mask).

**Input preparation** follows perch-hoplite, Google's reference library (``zoo_interface.normalize_audio``):
each window has its mean removed, then is scaled so that its peak ``|x|`` is 0.25 (:func:`prepare_windows`;
a silent window stays zero). hoplite resamples with a polyphase filter (``librosa.resample(...,
res_type="polyphase")``, i.e. ``scipy.signal.resample_poly``); birdclef's audio layer resamples with soxr (a
polyphase FIR resampler too) before windows reach the model. :func:`resample_to_model` is hoplite's resampler,
for callers that hand raw audio at another rate and want hoplite's numbers exactly.

**Activation**: ``sigmoid`` per class. Perch's label head is trained with a softmax over its labels, but each
class is scored on its own: the competition's metric is per-class ROC-AUC, which depends only on the order of
that class's scores over windows. A sigmoid keeps the order of each class's logits; a softmax would mix in the
other 14,794 logits of each window and reorder them.

Example:
    >>> model = PerchModel("/models/perch_v2.onnx", threads=2)
    >>> logits, embeddings = model.infer(np.zeros((3, 160_000), np.float32))   # (3, 14795), (3, 1536)
"""

from __future__ import annotations

import csv
from math import gcd
from pathlib import Path

import numpy as np

from birdclef.errors import BirdclefError
from birdclef.zoo.birdnet import build_zero_shot
from birdclef.zoo.onnx_graph import OnnxGraph, check_windows, dense_layer
from birdclef.zoo.registry import BuildContext, Kind, register_kind

PERCH_V2 = "perch-v2"
SAMPLE_RATE = 32_000
WINDOW_S = 5.0
WINDOW_SAMPLES = 160_000
TARGET_PEAK = 0.25
"""Peak |x| of every window after :func:`prepare_windows` (perch-hoplite's ``target_peak``)."""
INPUT = "inputs"
EMBEDDING = "embedding"
LABEL = "label"
LABELS_FILE = "labels.csv"
LICENCE = "Apache-2.0"
_NOT_PERCH = "; not a Perch v2 export (input 'inputs' [batch, 160000]; outputs 'embedding', 'label')"


def prepare_windows(windows: np.ndarray, peak: float = TARGET_PEAK) -> np.ndarray:
    """(..., T) windows -> float32 windows with zero mean and peak ``|x|`` = `peak` each (perch-hoplite's
    ``normalize_audio``); a window that is constant (silent) becomes zeros, never NaN."""
    x = np.array(windows, dtype=np.float32)  # a copy: the caller's windows stay as they were
    x -= x.mean(axis=-1, keepdims=True)
    top = np.abs(x).max(axis=-1, keepdims=True)
    out = np.zeros_like(x)
    np.divide(x, top, out=out, where=top > 0)
    return out * np.float32(peak)


def resample_to_model(wave: np.ndarray, sample_rate: int, model_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(..., T) audio at `sample_rate` Hz -> float32 audio at `model_rate` Hz, resampled along the last axis as
    perch-hoplite does (``scipy.signal.resample_poly`` with the rates' ratio reduced; ``ceil(T * ratio)``
    samples). birdclef's own readers resample with soxr instead; use this where raw audio is handed over.

    Raises:
        BirdclefError: a rate that is not a positive whole number of Hz.
    """
    from scipy.signal import resample_poly

    if int(sample_rate) != sample_rate or sample_rate <= 0 or int(model_rate) != model_rate or model_rate <= 0:
        raise BirdclefError(f"resampling needs positive whole sample rates, got {sample_rate} -> {model_rate} Hz")
    sample_rate, model_rate = int(sample_rate), int(model_rate)
    wave = np.asarray(wave, dtype=np.float32)
    if sample_rate == model_rate:
        return wave.copy()
    common = gcd(sample_rate, model_rate)
    return resample_poly(wave, model_rate // common, sample_rate // common, axis=-1).astype(np.float32)


def read_labels(path: Path, model_path: Path) -> list[str]:
    """The label names of ``labels.csv`` (a header line, then the first column of each row; blank rows dropped).

    Raises:
        BirdclefError: the file is missing or unreadable.
    """
    if not path.is_file():
        raise BirdclefError(f"{model_path}: its label output needs {path.name} beside it ({path} not found): a "
                            "header line, then one label per output, as the Kaggle model's assets/labels.csv")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BirdclefError(f"{path}: cannot read Perch v2's labels ({exc})") from None
    return [row[0].strip() for row in rows[1:] if row and row[0].strip()]


class PerchModel:
    """Perch v2's ONNX export (module docstring).

    Args:
        path: the ``.onnx`` file (``labels.csv`` beside it when it has a ``label`` output).
        threads: ONNX Runtime intra-op threads (None: its default).
        batch_size: windows per ONNX Runtime run.

    Raises:
        BirdclefError: not an ONNX file, no ``inputs`` of 160000 samples or no ``embedding`` output, a missing
            ``labels.csv``, or one whose length is not the ``label`` output's width.
    """

    kind = PERCH_V2
    sample_rate = SAMPLE_RATE
    window_s = WINDOW_S
    hop_s = WINDOW_S
    """Default step (s) between windows of ``embed`` (perch-hoplite's ``hop_size_s``)."""
    licence = LICENCE
    activation = "sigmoid"

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 16):
        self.path = Path(path)
        self.graph = OnnxGraph(self.path, threads, "Perch v2 model")
        width = self.graph.input(INPUT, _NOT_PERCH).width
        if width is not None and width != WINDOW_SAMPLES:
            raise BirdclefError(f"{self.path}: input {INPUT!r} takes {width} samples, not {WINDOW_SAMPLES} "
                                f"(5 s at 32 kHz){_NOT_PERCH}")
        self.graph.output(EMBEDDING, _NOT_PERCH)
        self._fetch = [EMBEDDING] + ([LABEL] if LABEL in self.graph.outputs else [])
        widths = self.graph.widths(INPUT, self._fetch, WINDOW_SAMPLES)
        self.embedding_size = widths[EMBEDDING]
        self.batch_size = max(1, int(batch_size))
        self.labels: list[str] | None = None
        if LABEL in widths:
            self.labels = read_labels(self.path.with_name(LABELS_FILE), self.path)
            if len(self.labels) != widths[LABEL]:
                raise BirdclefError(f"{self.path}: the label output scores {widths[LABEL]} classes but "
                                    f"{self.path.with_name(LABELS_FILE)} lists {len(self.labels)}")

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(N, 160000) float32 windows at 32 kHz -> ((N, n_labels) logits or None, (N, embedding_size) float32).

        Raises:
            BirdclefError: windows of another shape.
        """
        windows = check_windows(windows, WINDOW_SAMPLES, self.path, SAMPLE_RATE, WINDOW_S)
        if not len(windows):
            empty_logits = None if self.labels is None else np.zeros((0, len(self.labels)), np.float32)
            return empty_logits, np.zeros((0, self.embedding_size), np.float32)
        outputs = self.graph.run(INPUT, self._fetch, prepare_windows(windows), self.batch_size)
        return (outputs[1] if self.labels is not None else None), outputs[0]

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """(N, n_labels) float32 logits of (N, 160000) windows.

        Raises:
            BirdclefError: an embedding-only export (no label output).
        """
        logits, _ = self.infer(windows)
        if logits is None:
            raise BirdclefError(f"{self.path}: an embedding-only Perch v2 export has no label output; it gives "
                                "embeddings and heads, not zero-shot scores")
        return logits

    def embeddings(self, windows: np.ndarray) -> np.ndarray:
        """(N, embedding_size) float32 embeddings of (N, 160000) windows."""
        return self.infer(windows)[1]

    def output_layer(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Its classifier as ``(weight (L, D), bias (L,))`` when the graph computes ``label`` as one dense layer of
        ``embedding`` (:func:`~birdclef.zoo.onnx_graph.dense_layer`), else None; a head's start rows."""
        if self.labels is None:
            return None
        if not hasattr(self, "_dense"):
            self._dense = dense_layer(self.path, LABEL, EMBEDDING)
        return self._dense


def load_model(source: Path | str | None, ctx: BuildContext) -> PerchModel:
    """The Perch v2 export at `source`, loaded once per build (``ctx.threads`` threads, ``infer.birdnet_batch_size``
    windows per run).

    Raises:
        BirdclefError: no file given, or not a usable Perch v2 export.
    """
    if source is None:
        raise BirdclefError("perch-v2: give its ONNX file, e.g. perch-v2:/models/perch_v2.onnx")
    return ctx.shared((PERCH_V2, str(source)),
                      lambda: PerchModel(source, ctx.threads, ctx.config.birdnet_batch_size))


KIND = register_kind(Kind(
    name=PERCH_V2, summary="Perch v2 (Google) from its ONNX export: 14,795 labels matched by scientific name, "
                           "1536-d embeddings; unknown classes NaN",
    reads="a Perch v2 .onnx file (perch-v2:FILE) and labels.csv beside it", licence=LICENCE,
    verbs=("predict", "analyze", "embed", "pseudo"), build=build_zero_shot(PERCH_V2), zero_shot=True,
    load_model=load_model, needs_source=True))
