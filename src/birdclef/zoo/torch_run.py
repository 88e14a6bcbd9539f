"""Kind ``torch``: a training run of :class:`~birdclef.models.BirdClassifier` checkpoints (timm CNNs, BirdNET
fine-tuned in torch). Reads ``RUN/fold*/best.pt`` (finished folds, soft-voted) or one checkpoint file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from birdclef.infer.base import Predictor
from birdclef.zoo.registry import BuildContext, Kind, register_kind
from birdclef.zoo.runs import TORCH_RUN


def build(sources: Sequence[Path | str | None], ctx: BuildContext) -> Predictor:
    """One :class:`~birdclef.infer.predict.TorchPredictor` over the runs (one part each, ``ctx.weights``)."""
    from birdclef.infer.predict import TorchPredictor  # torch only when a torch run is built

    return TorchPredictor([Path(s) for s in sources], ctx.weights, ctx.config, ctx.device)


KIND = register_kind(Kind(
    name=TORCH_RUN, summary="trained CNN run (timm backbone + head, or BirdNET fine-tuned in torch)",
    reads="run folder (fold*/best.pt of finished folds) or one best.pt", licence="yours (BirdNET-derived: CC BY-NC-SA 4.0)",
    verbs=("predict", "analyze", "pseudo", "selftrain", "distill", "export", "report"), build=build))
