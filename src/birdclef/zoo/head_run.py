"""Kind ``birdnet_head``: a run of light heads on frozen foundation-model embeddings (``configs/birdnet-head.yaml``,
``configs/perch-head.yaml``).

Reads ``RUN/fold*/best.pt`` (heads) and the foundation model(s) the run was trained on (``model.foundation``, else
``model.birdnet_path``). Every part of a build on one model file (heads, zero-shot) shares one loaded model and
its per-window results (:func:`~birdclef.zoo.foundation.load_foundation`): the model runs once per file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from birdclef.infer.base import Predictor
from birdclef.zoo.registry import BuildContext, Kind, register_kind
from birdclef.zoo.runs import HEAD_RUN, Run


def build(sources: Sequence[Path | str | None], ctx: BuildContext) -> Predictor:
    """One :class:`~birdclef.birdnet.head.HeadPredictor` for the one run in `sources` (columns ``ctx.classes`` when
    given, else the run's own: a blend places them)."""
    from birdclef.birdnet.head import HeadPredictor
    from birdclef.zoo.foundation import load_foundation

    (run,) = sources
    models = [load_foundation(spec, ctx) for spec in Run.open(run).foundations]
    return HeadPredictor(Path(run), ctx.config, ctx.classes, models)


KIND = register_kind(Kind(
    name=HEAD_RUN, summary="head on frozen foundation-model embeddings (BirdNET, Perch v2, ONNX, several; learns classes "
                         "they lack)",
    reads="run folder (fold*/best.pt heads) + the foundation model(s) it was trained on",
    licence="its foundation models' (BirdNET: CC BY-NC-SA 4.0)",
    verbs=("predict", "analyze", "pseudo", "selftrain"), build=build))
