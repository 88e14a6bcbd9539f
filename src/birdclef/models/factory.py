"""Build models from the config and save / load self-describing checkpoints (nanoGPT style).

A checkpoint is a plain dict ``{"model", "config", "classes", "epoch", "score", **extra}`` of
tensors, builtins and strings, so it loads with ``torch.load(weights_only=True)``; the resolved
config and the class order travel with the weights, and loading never downloads anything.

Example:
    >>> from birdclef.config import load_config
    >>> cfg = load_config(None, ["model.backbone=test_efficientnet", "model.pretrained=false"])
    >>> model = create_model(cfg.model, num_classes=3)
    >>> path = save_checkpoint("best.pt", model, cfg, ["a", "b", "c"], epoch=1, score=0.9)
    >>> loaded = load_checkpoint("best.pt")
    >>> loaded.classes, loaded.model.training
    (['a', 'b', 'c'], False)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from birdclef.config import Config, ModelConfig, config_from_dict, config_to_dict
from birdclef.errors import BirdclefError
from birdclef.models.classifier import BirdClassifier
from birdclef.models.heads import list_heads
from birdclef.utils.io import atomic_path

CHECKPOINT_KEYS = ("model", "config", "classes", "epoch", "score")
KIND = "torch"
"""The model kind every checkpoint written here records (``"kind"``; :data:`birdclef.zoo.runs.TORCH_RUN`).
Checkpoints written before kinds were recorded have none and are read as this kind."""
"""Keys every checkpoint holds; ``extra`` keys (fold, optimizer state, ...) sit beside them."""

__all__ = ["CHECKPOINT_KEYS", "CheckpointError", "LoadedModel", "create_model", "list_heads",
           "load_checkpoint", "save_checkpoint"]


class CheckpointError(BirdclefError):
    """A checkpoint file that is missing, unreadable, incomplete or does not fit its own config."""


@dataclass
class LoadedModel:
    """What :func:`load_checkpoint` returns.

    Attributes:
        model: the classifier with the checkpoint's weights, in eval mode, on ``map_location``.
        config: the full resolved config the model was trained with.
        classes: class names in output (submission) order; ``len(classes)`` = K.
        epoch: the epoch the weights are from.
        score: the validation score recorded with them (None when there was none).
        path: the file read.
        extra: any other keys stored with the checkpoint (e.g. ``fold``).
    """

    model: BirdClassifier
    config: Config
    classes: list[str]
    epoch: int
    score: float | None
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def create_model(cfg: ModelConfig, num_classes: int) -> BirdClassifier:
    """Build the classifier described by the model config.

    Args:
        cfg: the ``model`` section (backbone, head, pretrained, pretrained_path, front end, ...).
        num_classes: K, the number of output classes.

    Returns:
        A :class:`BirdClassifier` in train mode.

    Raises:
        ConfigError: unknown backbone or head.
        PretrainedWeightsError: pretrained weights were requested and cannot be loaded.

    Example:
        >>> model = create_model(ModelConfig(backbone="test_resnet", head="conv", pretrained=False), 10)
        >>> model.predict_proba(torch.zeros(1, 32_000)).shape
        torch.Size([1, 10])
    """
    return BirdClassifier(cfg, num_classes)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    inner = getattr(model, "module", None)
    if not isinstance(inner, nn.Module):
        inner = getattr(model, "_orig_mod", None)
    return _unwrap(inner) if isinstance(inner, nn.Module) else model


def save_checkpoint(path: str | Path, model: nn.Module, config: Config, classes: list[str], epoch: int,
                    score: float | None, extra: dict[str, Any] | None = None) -> Path:
    """Write a self-describing checkpoint atomically (readers never see half a file).

    Args:
        path: destination, e.g. ``runs/<run>/fold0/best.pt``; parent folders are created.
        model: the classifier (a DDP / ``torch.compile`` wrapper is unwrapped); weights are saved on CPU.
        config: the full resolved config.
        classes: class names in output order (``len(classes)`` must equal the model's K).
        epoch: epoch of these weights.
        score: validation score, or None.
        extra: more entries to store (must not reuse :data:`CHECKPOINT_KEYS`; keep them to tensors and
            builtins so the file still loads with ``weights_only=True``).

    Returns:
        `path` as a Path.

    Raises:
        ValueError: `extra` reuses a reserved key, or `classes` does not match the model's outputs.
    """
    model = _unwrap(model)
    clash = sorted(set(extra or {}) & {*CHECKPOINT_KEYS, "kind"})
    if clash:
        raise ValueError(f"extra checkpoint entries may not reuse the keys {clash}")
    num_classes = getattr(model, "num_classes", len(classes))
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {num_classes} outputs")
    checkpoint = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                  "config": config_to_dict(config), "classes": [str(c) for c in classes], "epoch": int(epoch),
                  "score": None if score is None else float(score), "kind": KIND, **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def _read_checkpoint(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...: the file is unusable either way
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a birdclef checkpoint; missing keys {missing}")
    return checkpoint


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint from its stored config and load its weights.

    The backbone is built with ``pretrained=False``: the weights come from the file, so loading
    works offline.

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: device to load tensors and put the model on.

    Returns:
        A :class:`LoadedModel` with the model in eval mode.

    Raises:
        CheckpointError: the file is missing, unreadable, lacks a key, or its weights do not fit
            the model its config describes.
    """
    path = Path(path)
    checkpoint = _read_checkpoint(path, map_location)
    if checkpoint.get("kind") == "birdnet_head":  # birdclef.birdnet.head's format, not a BirdClassifier
        raise CheckpointError(f"{path}: a head on frozen BirdNET embeddings, not a torch model; "
                              "`birdclef predict --run` scores such runs (export and this loader do not)")
    try:
        config = config_from_dict(checkpoint["config"])
    except BirdclefError as exc:
        raise CheckpointError(f"{path}: stored config is invalid ({exc})") from exc
    classes = list(checkpoint["classes"])
    model = create_model(dataclasses.replace(config.model, pretrained=False, pretrained_path=None), len(classes))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored model config ({exc})") from exc
    model.to(map_location).eval()
    extra = {k: v for k, v in checkpoint.items() if k not in CHECKPOINT_KEYS and k != "kind"}
    return LoadedModel(model, config, classes, checkpoint["epoch"], checkpoint["score"], path, extra)
