"""What an embedding head hears: the windows of one or several frozen foundation models, per 5 s row.

``model.foundation`` names the models (``KIND[:FILE]``; empty: BirdNET from ``model.birdnet_path``). Rows come at
the run's ``data.sample_rate`` and are resampled (soxr, per row) to each model's rate when it differs.

- **One model**: each row's windows (offsets :func:`~birdclef.birdnet.predictor.model_offsets` at
  ``infer.birdnet_hop_s``) give ``(R, C, D)``; the head scores every window and pools them over the row
  (``infer.birdnet_pool``), as zero-shot does. Rows of the classes the model knows start from its own output
  layer (``model.init_from_birdnet``), so an untrained head is its zero-shot.
- **Several models**: each model's window embeddings are averaged over the row and concatenated, ``(R, 1, ΣD)``.
  The start rows of a class are each knowing model's own rows (on its block), divided by the number of models
  that know it, so the untrained head averages their zero-shot logits (of the row-mean embedding).

Example:
    >>> inputs = HeadInputs.from_config(config, ctx)        # BirdNET, or e.g. [birdnet, perch-v2:...]
    >>> emb = inputs.embed([row0, row1])                    # (2, C, D) float16
    >>> weight, bias = inputs.start_rows(classes, names, init=True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soxr

from birdclef.birdnet.model import output_layer
from birdclef.birdnet.predictor import model_offsets, row_chunks
from birdclef.config import Config
from birdclef.errors import BirdclefError
from birdclef.infer.base import ROW_WINDOW_S

UNKNOWN_BIAS = -4.0
"""Start bias of the classes no model knows: sigmoid(-4) = 0.018, a low prior."""


def run_foundations(model_config) -> list[str]:
    """The ``KIND[:FILE]`` specs of a head config's models (``model.foundation``, else BirdNET's file)."""
    if model_config.foundation:
        return [str(spec) for spec in model_config.foundation]
    return ["birdnet" + (f":{model_config.birdnet_path}" if model_config.birdnet_path else "")]


def output_rows(model) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight (L, D), bias (L,)) of a model's own classifier on its embeddings, or None when it cannot say
    (its ``output_layer()``; BirdNET's read from its file)."""
    model = getattr(model, "unwrapped", model)
    if hasattr(model, "output_layer"):
        return model.output_layer()
    if getattr(model, "kind", "birdnet") == "birdnet":
        return output_layer(model.path)
    return None


class HeadInputs:
    """The foundation models of a head and how a 5 s row becomes their embeddings (module docstring).

    Args:
        models: loaded foundation models (``infer``, ``sample_rate``, ``window_s``, ``embedding_size``).
        specs: their ``KIND[:FILE]`` names (what the run records).
        hop_s: seconds between window starts inside a row.
        sample_rate: rate of the rows handed to :meth:`embed`.
    """

    def __init__(self, models: Sequence, specs: Sequence[str], hop_s: float, sample_rate: int):
        if not models:
            raise BirdclefError("an embedding head needs at least one foundation model")
        self.models, self.specs = list(models), [str(s) for s in specs]
        self.offsets = [model_offsets(m, hop_s) for m in self.models]
        self.sample_rate = int(sample_rate)
        self.sizes = [int(m.embedding_size) for m in self.models]

    @classmethod
    def from_config(cls, config: Config, ctx=None, threads: int | None = None) -> HeadInputs:
        """The models a head config names, loaded through the zoo (shared with the other parts of `ctx`'s build)."""
        from birdclef.zoo.build import ZERO_SHOT_DEFAULTS
        from birdclef.zoo.foundation import load_foundation, parse_foundation
        from birdclef.zoo.registry import BuildContext

        if ctx is None:
            infer = dataclasses.replace(ZERO_SHOT_DEFAULTS, birdnet_batch_size=config.infer.birdnet_batch_size)
            ctx = BuildContext(infer, threads=threads)
        specs = run_foundations(config.model)
        models = [load_foundation(parse_foundation(spec), ctx) for spec in specs]
        return cls(models, specs, config.infer.birdnet_hop_s, config.data.sample_rate)

    @property
    def single(self) -> bool:
        return len(self.models) == 1

    @property
    def n_windows(self) -> int:
        """C: embeddings per row the head sees (one model: its windows; several: 1, their row means)."""
        return len(self.offsets[0]) if self.single else 1

    @property
    def embedding_size(self) -> int:
        return sum(self.sizes)

    def embed(self, rows: Sequence[np.ndarray] | np.ndarray, dtype: type = np.float16) -> np.ndarray:
        """(R, C, D) embeddings of R rows of 5 s at :attr:`sample_rate`: float16 for caches, float32 (`dtype`)
        where they are used at once (prediction)."""
        rows = [np.asarray(r, np.float32) for r in rows]
        if not rows:
            return np.zeros((0, self.n_windows, self.embedding_size), dtype)
        blocks = []
        for model, offsets in zip(self.models, self.offsets):
            rate = int(getattr(model, "sample_rate", self.sample_rate))
            waves = rows if rate == self.sample_rate else [
                soxr.resample(r, self.sample_rate, rate, quality="HQ").astype(np.float32) for r in rows]
            row_len = int(round(ROW_WINDOW_S * rate))
            wave = np.concatenate([_fit(w, row_len) for w in waves])
            window_s = float(getattr(model, "window_s", 3.0))
            emb = np.asarray(model.infer(row_chunks(wave, rate, len(rows), offsets, window_s))[1], np.float32)
            emb = emb.reshape(len(rows), len(offsets), -1)
            blocks.append(emb if self.single else emb.mean(axis=1, keepdims=True))
        return np.concatenate(blocks, axis=2).astype(dtype)

    def start_rows(self, classes: Sequence[str], names: dict[str, str],
                   init: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """((K, D) weights, (K,) biases, notes): each knowing model's own rows (module docstring), zeros and
        :data:`UNKNOWN_BIAS` for the classes none knows (all of them without `init`)."""
        from birdclef.birdnet.classes import map_classes

        k = len(classes)
        weight = np.zeros((k, self.embedding_size), np.float32)
        bias = np.zeros(k, np.float32)
        count = np.zeros(k, np.float32)
        notes, begin = [], 0
        for model, size, spec in zip(self.models, self.sizes, self.specs):
            rows = output_rows(model) if init and getattr(model, "labels", None) is not None else None
            if init and rows is None:
                notes.append(f"{spec}: no classifier rows to start from; its block starts at zero")
            if rows is not None:
                index = map_classes(list(classes), names, model.labels).index
                known = index >= 0
                w, b = np.asarray(rows[0], np.float32), np.asarray(rows[1], np.float32)
                weight[known, begin : begin + size] = w[index[known]]
                bias[known] += b[index[known]]
                count[known] += 1
            begin += size
        known = count > 0
        weight[known] /= count[known, None]
        bias[known] /= count[known]
        bias[~known] = UNKNOWN_BIAS
        return weight, bias, notes

    def provenance(self) -> list[dict]:
        """Per model: its spec, file, SHA-256 and licence (what the run records)."""
        from birdclef.zoo.foundation import provenance

        return [{"spec": spec, **provenance(model)} for spec, model in zip(self.specs, self.models)]

    def key_record(self) -> dict:
        """What changes the embeddings (for cache keys): each model's file identity, rate, window, offsets."""
        record = []
        for model, offsets, spec in zip(self.models, self.offsets, self.specs):
            path = Path(model.path)
            record.append({"spec": spec.split(":", 1)[0], "file": path.name,
                           "size": path.stat().st_size if path.is_file() else None,
                           "rate": int(getattr(model, "sample_rate", self.sample_rate)), "offsets": offsets})
        if len(record) == 1 and record[0]["spec"] == "birdnet":  # the key BirdNET heads always had
            return {"model": [record[0]["file"], record[0]["size"]]}
        return {"models": record}


def _fit(wave: np.ndarray, length: int) -> np.ndarray:
    """`wave` cut or zero padded to `length` samples (a resampled row can be a sample off)."""
    if len(wave) == length:
        return wave
    out = np.zeros(length, np.float32)
    out[: min(length, len(wave))] = wave[:length]
    return out
