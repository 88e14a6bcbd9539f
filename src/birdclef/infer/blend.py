"""Blending predictors of different sample rates (torch runs at 32 kHz with BirdNET at 48 kHz).

:class:`BlendPredictor` decodes each file once, at the *lowest* rate of its members (BirdNET's mel
bands stop at 15 kHz, so a 32 kHz decode loses it nothing, and the torch runs get exactly the wave they
get alone), and resamples for the others with soxr (HQ, as :func:`~birdclef.audio.io.load_audio`).
Each member gives its raw per-run rows; they are post-processed and blended per class by
:func:`~birdclef.infer.ensemble.combine_runs`, which ignores NaN: a class that only some members score
(BirdNET's unknown classes) gets their blend.

:class:`FilledPredictor` puts a constant into the cells no member scores, for a CSV (which cannot
hold NaN): any constant is neutral for a class's ROC-AUC.

Example:
    >>> blend = BlendPredictor([TorchPredictor(["runs/a"]), birdnet], weights=[0.5, 0.5], config=infer)
    >>> probs = blend.predict_file(load_audio("XCB_DEV_000.ogg", blend.sample_rate))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import soxr

from birdclef.config import InferConfig, config_to_dict
from birdclef.errors import BirdclefError
from birdclef.infer.base import Predictor, row_count
from birdclef.infer.ensemble import combine_runs, normalise_weights


def run_count(member: object) -> int:
    """How many blend weights a member takes: one per torch run, one for any other predictor."""
    return len(getattr(member, "ensembles", None) or [None])


def unscored_classes(member: object) -> list[str]:
    """Classes a member leaves NaN (BirdNET's unknown ones; none for the others)."""
    mapping = getattr(member, "mapping", None)
    return list(mapping.unknown) if mapping is not None else []


class BlendPredictor:
    """Members (each with ``predict_runs``, ``classes``, ``sample_rate``) blended run by run.

    Args:
        members: e.g. a TorchPredictor (its runs) and a BirdnetPredictor; all must share the class list.
        weights: one per run over all members, in order (``--run A --run B --birdnet``: 3); None equal.
        config: post-processing (``infer.postprocess_stage`` per_model or blend), as for torch blends.

    Raises:
        BirdclefError: no members, or members whose class lists differ.
        SubmissionError: the wrong number of weights, or invalid ones.
    """

    def __init__(self, members: Sequence[object], weights: Sequence[float] | None, config: InferConfig):
        if not members:
            raise BirdclefError("nothing to blend")
        self.members, self.config = list(members), config
        self.classes = list(self.members[0].classes)
        for member in self.members[1:]:
            if list(member.classes) != self.classes:
                raise BirdclefError(f"blended predictors must score the same classes in one order; "
                                    f"{type(member).__name__} differs from {type(self.members[0]).__name__}")
        self.counts = [run_count(m) for m in self.members]
        self.weights = normalise_weights(weights, sum(self.counts))
        self.sample_rate = min(int(m.sample_rate) for m in self.members)

    @property
    def unscored(self) -> list[str]:
        """Classes that no member scores (NaN in :meth:`predict_file`; a zero-weight member is a fallback,
        see :func:`~birdclef.infer.ensemble.blend_ignoring_nan`)."""
        left = set(self.classes)
        for member in self.members:
            left &= set(unscored_classes(member))
        return [c for c in self.classes if c in left]

    def _member_runs(self, member: object, wave: np.ndarray, n_rows: int) -> list[np.ndarray]:
        if member.sample_rate != self.sample_rate:
            wave = soxr.resample(wave, self.sample_rate, member.sample_rate, quality="HQ").astype(np.float32)
        if hasattr(member, "predict_rows"):
            return [member.predict_rows(wave, n_rows)]
        runs = member.predict_runs(wave)
        if any(len(r) != n_rows for r in runs):
            raise BirdclefError(f"{type(member).__name__} gave {len(runs[0])} rows where the blend expects {n_rows}")
        return runs

    def predict_runs(self, wave: np.ndarray) -> list[np.ndarray]:
        n_rows = row_count(len(wave), self.sample_rate)
        return [r for member in self.members for r in self._member_runs(member, wave, n_rows)]

    def predict_file(self, wave: np.ndarray) -> np.ndarray:
        return combine_runs(self.predict_runs(wave), self.weights, self.config)

    def settings(self) -> dict:
        return {"backend": "blend", "members": [m.settings() for m in self.members], "sample_rate": self.sample_rate,
                "weights": self.weights.tolist(), "infer": config_to_dict(self.config)}


class FilledPredictor:
    """`predictor` with its NaN cells (classes nobody scores) set to `value`, for a submission CSV."""

    def __init__(self, predictor: Predictor, value: float):
        self.predictor, self.value = predictor, float(value)
        self.classes, self.sample_rate = predictor.classes, predictor.sample_rate

    def predict_file(self, wave: np.ndarray) -> np.ndarray:
        probs = np.asarray(self.predictor.predict_file(wave), dtype=np.float64)
        return np.where(np.isnan(probs), self.value, probs)

    def settings(self) -> dict:
        return {**self.predictor.settings(), "unknown_fill": self.value}
