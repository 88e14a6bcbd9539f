"""The kinds of model birdclef can predict with, each registered by its own module (timm's ``@register_model``).

A kind says what it reads and builds a :class:`~birdclef.infer.base.Predictor` from sources (run folders, a model
folder, a foundation-model file) and a :class:`BuildContext` (infer settings, device, the classes of the blend,
the foundation models already loaded). :func:`birdclef.zoo.build.build_predictor` picks the kinds and blends
them; nothing else needs to know which kinds exist.

Example:
    >>> from birdclef.zoo.registry import get_kind, list_kinds
    >>> list_kinds()
    ['birdnet', 'birdnet_head', 'exported', 'onnx', 'perch-v2', 'placeholder', 'torch']
    >>> predictor = get_kind("torch").build([Path("runs/a")], BuildContext(InferConfig()))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birdclef.config import InferConfig
from birdclef.errors import BirdclefError
from birdclef.infer.base import Predictor

BUILTIN_KINDS = ("birdclef.zoo.torch_run", "birdclef.zoo.head_run", "birdclef.zoo.exported",
                 "birdclef.zoo.birdnet", "birdclef.zoo.perch", "birdclef.zoo.onnx_card", "birdclef.zoo.placeholder")
"""Modules that register the built-in kinds (imported on the first look-up; their heavy imports stay lazy)."""


@dataclass
class BuildContext:
    """What building a kind needs beside its sources."""

    config: InferConfig
    """Batch and post-processing settings of the prediction."""
    device: str = "auto"
    threads: int | None = None
    """Runtime threads (exported graphs, LiteRT)."""
    backend: str | None = None
    """Runtime of an exported model (torch | onnx | openvino; None: the model's own format)."""
    weights: list[float] | None = None
    """Blend weights of a kind's sources (torch runs), None: equal."""
    classes: list[str] | None = None
    """Output columns when they are already fixed (a blend's), else None (the kind's own)."""
    scientific_names: dict[str, str] | None = None
    """primary_label -> scientific name, for kinds that match their labels to the classes."""
    models: dict[Any, Any] = field(default_factory=dict)
    """Foundation models loaded so far in this build, by key: head runs and zero-shot on one file share one."""

    def shared(self, key: Any, load: Callable[[], Any]) -> Any:
        """The model cached under `key`, loaded once with `load`."""
        if key not in self.models:
            self.models[key] = load()
        return self.models[key]


@dataclass(frozen=True)
class Kind:
    """One kind of model (see the README's model-zoo table)."""

    name: str
    summary: str
    reads: str
    """What it is built from: a run folder, a model folder's metadata.json, a model file."""
    verbs: tuple[str, ...]
    """Verbs that accept it."""
    licence: str
    build: Callable[[Sequence[Path | str | None], BuildContext], Predictor]
    """(sources, context) -> predictor."""
    zero_shot: bool = False
    """A foundation model that scores the classes itself (``--birdnet``; ``--birdnet-model NAME`` picks it)."""
    load_model: Callable[[Path | str | None, BuildContext], Any] | None = None
    """A zero-shot kind's foundation model alone, (source, context) -> model with ``labels``, ``path``,
    ``embedding_size``, ``infer(windows) -> (logits, embeddings)`` (what ``embed`` and the heads use)."""
    needs_source: bool = False
    """A foundation kind that has no default file (``perch-v2:PATH``, ``onnx:CARD``)."""


_KINDS: dict[str, Kind] = {}
_loaded = False


def register_kind(kind: Kind) -> Kind:
    """Add a kind (its module calls this at import).

    Raises:
        ValueError: a kind of that name exists.
    """
    if kind.name in _KINDS:
        raise ValueError(f"model kind {kind.name!r} already registered")
    _KINDS[kind.name] = kind
    return kind


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_KINDS:
            importlib.import_module(module)


def get_kind(name: str) -> Kind:
    """The registered kind `name`.

    Raises:
        BirdclefError: no such kind (the message lists them).
    """
    _load_builtin()
    if name not in _KINDS:
        raise BirdclefError(f"unknown model kind {name!r}; choose from {list_kinds()}")
    return _KINDS[name]


def list_kinds(zero_shot: bool | None = None) -> list[str]:
    """Names of the registered kinds (only the zero-shot ones, or only the others, when asked), sorted."""
    _load_builtin()
    return sorted(name for name, kind in _KINDS.items() if zero_shot is None or kind.zero_shot == zero_shot)
