"""Kind ``birdnet_head``: a run of light heads on frozen BirdNET embeddings (``configs/birdnet-head.yaml``).

Reads ``RUN/fold*/best.pt`` (heads) and the BirdNET file the run was trained on (``model.birdnet_path``). Head
runs on one BirdNET file share one loaded model in a build (:meth:`BuildContext.shared`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from birdclef.infer.base import Predictor
from birdclef.zoo.registry import BuildContext, Kind, register_kind
from birdclef.zoo.runs import HEAD_RUN, Run


def build(sources: Sequence[Path | str | None], ctx: BuildContext) -> Predictor:
    """One :class:`~birdclef.birdnet.head.HeadPredictor` for the one run in `sources` (columns ``ctx.classes``)."""
    from birdclef.birdnet.head import HeadPredictor
    from birdclef.zoo.birdnet import load_birdnet

    (run,) = sources
    return HeadPredictor(Path(run), ctx.config, ctx.classes, load_birdnet(Run.open(run).foundation_model, ctx))


KIND = register_kind(Kind(
    name=HEAD_RUN, summary="head on frozen BirdNET v2.4 embeddings (few-shot; learns classes BirdNET lacks)",
    reads="run folder (fold*/best.pt heads) + the BirdNET .tflite it was trained on", licence="CC BY-NC-SA 4.0",
    verbs=("predict", "analyze", "pseudo", "selftrain"), build=build))
