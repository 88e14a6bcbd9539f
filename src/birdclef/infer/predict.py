"""Torch prediction: the finished folds of training runs, soft-voted, blended by weight.

All windows of a file go through the model in batches of ``infer.batch_size``; the mel image is
computed once per distinct front end and shared by the folds that use it. Rows, context windows and
decoding are shared with exported models (:mod:`birdclef.infer.base`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from birdclef.config import Config, InferConfig, config_to_dict
from birdclef.errors import BirdclefError
from birdclef.infer.base import (PartsPredictor, class_positions, iter_predictions, scatter_columns, span,
                                union_classes, unscored_classes)
from birdclef.infer.ensemble import average_folds, normalise_weights
from birdclef.infer.settings import stored_run_infer
from birdclef.models import BirdClassifier, load_checkpoint
from birdclef.utils.device import autocast_for, resolve_device
from birdclef.zoo.runs import Run


@dataclass
class RunEnsemble:
    """The finished folds of one training run (or a single checkpoint), ready to predict."""

    path: Path
    models: list[BirdClassifier]
    classes: list[str]
    config: Config
    checkpoints: list[Path]

    @property
    def window_s(self) -> float:
        return self.config.data.window_s

    @property
    def sample_rate(self) -> int:
        return self.config.data.sample_rate


def load_run(run: Path, device: torch.device) -> RunEnsemble:
    """Load every finished fold of `run` on `device`, in eval mode; folds must share classes and config."""
    paths = Run.open(run).checkpoints
    loaded = [load_checkpoint(p, map_location=device) for p in paths]
    first = loaded[0]
    for other, path in zip(loaded[1:], paths[1:]):
        if other.classes != first.classes:
            raise BirdclefError(f"{path}: its class list differs from {paths[0]}'s")
    models = [item.model.to(device).eval() for item in loaded]
    return RunEnsemble(Path(run), models, list(first.classes), first.config, paths)


@torch.no_grad()
def score_windows(ensemble: RunEnsemble, windows: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """(N, K) fold-averaged probabilities of (N, window_s * sample_rate) input windows, in the run's class order."""
    inputs = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    fold_probs: list[list[np.ndarray]] = [[] for _ in ensemble.models]
    for begin in range(0, len(inputs), batch_size):
        batch = inputs[begin : begin + batch_size].to(device)  # (B, T)
        mels: dict[object, torch.Tensor] = {}
        with autocast_for(device):
            for k, model in enumerate(ensemble.models):
                key = model.cfg.frontend  # frozen dataclass: equal front ends share one mel image
                if key not in mels:
                    mels[key] = model.forward_mel(batch)
                logits = model.forward_head(model.forward_backbone(mels[key]))["clip_logits"]
                fold_probs[k].append(torch.sigmoid(logits.float()).cpu().numpy())
    return average_folds([np.concatenate(chunks) for chunks in fold_probs])


class RunPart:
    """One run's folds as a :class:`~birdclef.infer.base.Part`: spans of its ``data.window_s`` around each row,
    scored by every fold and soft-voted, columns in `classes` order (NaN for classes the run does not score: a
    taxon specialist's, :mod:`birdclef.data.subset`)."""

    n_runs = 1
    can_embed = False
    model_file = None

    def __init__(self, ensemble: RunEnsemble, classes: Sequence[str], config: InferConfig, device: torch.device):
        self.ensemble, self.config, self.device = ensemble, config, device
        self.classes = list(classes)
        self.positions = class_positions(ensemble.classes, self.classes, str(ensemble.path))
        self.unscored = unscored_classes(self.classes, self.positions)
        self.sample_rate = ensemble.sample_rate
        self.lead, self.length = span(ensemble.sample_rate, ensemble.window_s)
        self.checkpoints = [str(p.resolve()) for p in ensemble.checkpoints]

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        probs = score_windows(self.ensemble, spans, self.config.batch_size, self.device)
        return [scatter_columns(probs, self.positions)]

    def embed(self, spans: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        raise BirdclefError(f"{self.ensemble.path}: a trained run gives no embeddings")

    def settings(self) -> dict:
        # A specialist names the classes it leaves NaN (a full run's identity stays what it always was).
        return {"backend": "torch", "checkpoints": self.checkpoints,
                **({"unscored": self.unscored} if self.unscored else {})}


class TorchPredictor(PartsPredictor):
    """:class:`~birdclef.infer.base.Predictor` over training runs: folds soft-voted, runs blended by weight.

    The output columns are `classes`, by default the runs' union (:func:`union_classes`: runs of one class list
    give the first run's order); a run that scores only some of them (a taxon specialist, :mod:`birdclef.data.subset`)
    is NaN on the others, and the blend is the weighted mean of the runs that score each class. All runs share one
    sample rate. `config` None uses the first run's stored infer settings
    (:func:`birdclef.infer.settings.stored_run_infer`), as ``birdclef predict --run`` does. Each run is one part
    (:class:`RunPart`), hearing its own window.
    """

    def __init__(self, runs: Sequence[str | Path], weights: Sequence[float] | None = None,
                 config: InferConfig | None = None, device: str = "auto", classes: Sequence[str] | None = None):
        self.device = resolve_device(device)
        self.ensembles = [load_run(Path(r), self.device) for r in runs]
        self.weights = normalise_weights(weights, len(self.ensembles))
        first = self.ensembles[0]
        self.config = config if config is not None else stored_run_infer(runs[0], first.config.infer)[0]
        self.classes = union_classes([e.classes for e in self.ensembles]) if classes is None else list(classes)
        self.sample_rate = first.sample_rate
        for ens in self.ensembles[1:]:
            if ens.sample_rate != first.sample_rate:
                raise BirdclefError(f"{ens.path}: sample rate {ens.sample_rate} differs from {first.path}'s")
        self._parts = [RunPart(ens, self.classes, self.config, self.device) for ens in self.ensembles]

    def parts(self) -> list[RunPart]:
        return list(self._parts)

    def settings(self) -> dict:
        return {"backend": "torch", "checkpoints": self.checkpoints, "weights": self.weights.tolist(),
                "infer": config_to_dict(self.config)}


def predict_soundscapes(
    paths: Sequence[str | Path],
    runs: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    config: InferConfig | None = None,
    device: str = "auto",
    num_workers: int = 0,
) -> pd.DataFrame:
    """Predict every 5 s row of the given soundscapes with one run or a weighted blend of runs.

    Args:
        paths: soundscape files (any length; a short tail is padded).
        runs: run folders (their finished folds are soft-voted) or best.pt files.
        weights: blend weights of `runs` (normalised to sum 1); default equal.
        config: post-processing and batch settings; default the first run's stored ones.
        device: auto | cpu | cuda.
        num_workers: threads decoding the next files while the model runs.

    Returns:
        DataFrame indexed by row_id, one probability column per class (the first run's order).
        Files that cannot be decoded are left out (the batch job, `predict_to_csv`, reports them).

    Example:
        >>> probs = predict_soundscapes(sorted(Path("test_soundscapes").glob("*.ogg")), ["runs/baseline"])
    """
    predictor = TorchPredictor(runs, weights, config, device)
    frames = [rows for _, rows, _ in iter_predictions([Path(p) for p in paths], predictor, num_workers)
              if rows is not None]
    if not frames:
        return pd.DataFrame(columns=predictor.classes).rename_axis("row_id")
    return pd.concat(frames, ignore_index=True).set_index("row_id")
