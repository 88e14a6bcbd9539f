"""Kind ``exported``: a model folder written by ``birdclef export`` (one fused ONNX / OpenVINO graph of every
fold and blended run, parity-checked). Reads ``MODEL/metadata.json`` and its graph; no torch, unless the
backend is ``torch`` (then the checkpoints it was exported from, when they are still there)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from birdclef.export.runtime import KIND as EXPORTED
from birdclef.infer.base import Predictor
from birdclef.zoo.registry import BuildContext, Kind, register_kind


def build(sources: Sequence[Path | str | None], ctx: BuildContext) -> Predictor:
    (model_dir,) = sources
    if ctx.backend == "torch":  # the same blend from the checkpoints it was exported from
        from birdclef.export.runtime import source_runs
        from birdclef.infer.predict import TorchPredictor

        runs, weights = source_runs(Path(model_dir))
        return TorchPredictor(runs, weights, ctx.config, ctx.device)
    from birdclef.export.runtime import ExportedPredictor  # onnxruntime / openvino, no torch

    return ExportedPredictor(Path(model_dir), backend=ctx.backend, threads=ctx.threads, config=ctx.config)


KIND = register_kind(Kind(
    name=EXPORTED, summary="exported model: folds and runs fused into one ONNX / OpenVINO graph (no torch)",
    reads="model folder (metadata.json + model.onnx or model.xml)", licence="that of the runs it was exported from",
    verbs=("predict", "analyze", "plan", "package", "distill"), build=build))
