"""A training run as one object: :meth:`Run.open` on a run folder or on one of its ``foldK/best.pt`` files.

What every verb asks of a run is here, read lazily (no torch, no weights loaded)::

    run = Run.open("runs/head")          # or "runs/head/fold0/best.pt"
    run.root                             # the run folder (None for a checkpoint outside one)
    run.checkpoints                      # best.pt of each finished fold (fold*/done.json), or the file itself
    run.kind                             # "torch" | "birdnet_head" (zoo kinds of runs)
    run.config                           # the stored config.yaml as a dict (None when there is none)
    run.data_root, run.taxonomy          # the dataset the run trained on (RUN/data.json)
    run.classes, run.subset              # the classes it scores; a taxon specialist's RUN/classes.json (else None)

**The kind.** Trainers write it into every ``foldK/done.json`` and checkpoint. A run trained before that is read
as it always was: a frozen-BirdNET ``config.yaml`` (``model.backbone: birdnet``, ``freeze_backbone``) is an
embedding-head run, anything else a torch run; a checkpoint file outside a run folder says its kind itself
(head checkpoints always carried ``"kind": "birdnet_head"``; a file without one is a torch checkpoint).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from birdclef.errors import BirdclefError, ConfigError

TORCH_RUN = "torch"
"""Kind of a run of :class:`~birdclef.models.BirdClassifier` checkpoints (timm CNNs, fine-tuned BirdNET)."""
HEAD_RUN = "birdnet_head"
"""Kind of a run of light heads on frozen foundation-model embeddings (:mod:`birdclef.birdnet.head`)."""
RUN_KINDS = (TORCH_RUN, HEAD_RUN)
RUN_CONFIG = "config.yaml"
RUN_DATA = "data.json"
DONE = "done.json"
FOLD_DIR = re.compile(r"fold\d+")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True, eq=False)
class Run:
    """A run folder, or one checkpoint file (module docstring). Build it with :meth:`open`."""

    path: Path
    """What was given: the run folder or a checkpoint file."""
    root: Path | None
    """The run folder (``path`` itself, or the folder above ``foldK/best.pt``); None for a lone checkpoint."""

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """The run at `path` (a run folder, ``RUN/foldK/best.pt``, or any checkpoint file).

        Raises:
            BirdclefError: nothing at `path`.
        """
        path = Path(path)
        if path.is_dir():
            return cls(path, path)
        if path.is_file():
            return cls(path, path.parent.parent if FOLD_DIR.fullmatch(path.parent.name) else None)
        raise BirdclefError(f"{path}: no such run folder or checkpoint file")

    @property
    def is_checkpoint(self) -> bool:
        """True when the run was given as one checkpoint file (that file alone is used)."""
        return self.path.is_file()

    @cached_property
    def checkpoints(self) -> list[Path]:
        """``best.pt`` of every finished fold, in fold order (or the given file).

        Raises:
            BirdclefError: a folder without a finished fold.
        """
        if self.is_checkpoint:
            return [self.path]
        done = [p.parent / "best.pt" for p in sorted(self.path.glob(f"fold*/{DONE}"))
                if (p.parent / "best.pt").is_file()]
        if not done:
            raise BirdclefError(f"{self.path}: no finished fold (fold*/done.json with best.pt); train it first or "
                                "point --run at a best.pt file")
        return done

    @property
    def config_file(self) -> Path | None:
        """``RUN/config.yaml`` when there is one."""
        candidate = self.root / RUN_CONFIG if self.root is not None else None
        return candidate if candidate is not None and candidate.is_file() else None

    @cached_property
    def config(self) -> dict | None:
        """The stored resolved config (``config.yaml``) as a dict, or None when the run has none.

        Raises:
            ConfigError: the file exists but is not a YAML mapping.
        """
        path = self.config_file
        if path is None:
            return None
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the run's config ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
        return data

    def _config_or_empty(self) -> dict:
        try:
            return self.config or {}
        except ConfigError:
            return {}

    @cached_property
    def kind(self) -> str:
        """The run's kind (:data:`RUN_KINDS`), as recorded, else as read before kinds were recorded."""
        if self.root is not None:
            for done in sorted(self.root.glob(f"fold*/{DONE}")):
                recorded = _read_json(done).get("kind")
                if recorded in RUN_KINDS:
                    return recorded
            model = self._config_or_empty().get("model")
            if self.config_file is not None or not self.is_checkpoint:
                frozen = isinstance(model, dict) and model.get("backbone") in ("birdnet", "foundation") \
                    and model.get("freeze_backbone")
                return HEAD_RUN if frozen else TORCH_RUN
        return _checkpoint_kind(self.path)

    @cached_property
    def classes(self) -> list[str]:
        """The classes the run scores, in its output order (read from its first finished checkpoint).

        Raises:
            BirdclefError: no finished fold, or a checkpoint that cannot be read or names no classes.
        """
        import torch  # a checkpoint's class list: every kind stores it under "classes"

        path = self.checkpoints[0]
        try:
            state = _load_lazily(path)
        except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle: the file is unusable either way
            raise BirdclefError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
        classes = state.get("classes") if isinstance(state, dict) else None
        if not isinstance(classes, list) or not classes:
            raise BirdclefError(f"{path}: not a birdclef checkpoint (no class list)")
        return [str(c) for c in classes]

    @cached_property
    def subset(self) -> dict | None:
        """A taxon specialist's ``RUN/classes.json`` (its classes, the groups and labels it was asked for, the data's
        full class list: :mod:`birdclef.data.subset`); None for a run on every class."""
        if self.root is None or not (self.root / "classes.json").is_file():
            return None
        return _read_json(self.root / "classes.json") or None

    @property
    def foundation_model(self) -> str | None:
        """The BirdNET file a head run's embeddings come from (``model.birdnet_path``; None: the bundled BirdNET).
        None for torch runs too. :attr:`foundations` names every model of any head run."""
        model = self._config_or_empty().get("model")
        return model.get("birdnet_path") if isinstance(model, dict) else None

    @property
    def foundations(self) -> list[str]:
        """The foundation models (``KIND[:FILE]``) a head run hears: ``model.foundation``, else BirdNET
        (``birdnet[:model.birdnet_path]``)."""
        model = self._config_or_empty().get("model")
        model = model if isinstance(model, dict) else {}
        named = model.get("foundation") or []
        named = [named] if isinstance(named, str) else list(named)
        if named:
            return [str(n) for n in named]
        return ["birdnet" + (f":{model['birdnet_path']}" if model.get("birdnet_path") else "")]

    @cached_property
    def data_root(self) -> Path | None:
        """The dataset folder the run trained on (``RUN/data.json``), if recorded."""
        if self.root is None:
            return None
        root = _read_json(self.root / RUN_DATA).get("data_root")
        return Path(root) if root else None

    @property
    def taxonomy(self) -> Path | None:
        """``taxonomy.csv`` of :attr:`data_root` when it exists."""
        path = self.data_root / "taxonomy.csv" if self.data_root is not None else None
        return path if path is not None and path.is_file() else None

    def fold_settings(self) -> dict:
        """The ``data`` section of the stored config (n_folds, fold_seed, ...), {} when there is none."""
        data = self._config_or_empty().get("data")
        return data if isinstance(data, dict) else {}


def _load_lazily(path: Path):
    """The checkpoint dict, memory-mapped where the format allows (the class list is read, the weights are not)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file torch cannot map (the legacy format): read it whole
        return torch.load(path, map_location="cpu", weights_only=True)


def _checkpoint_kind(path: Path) -> str:
    """The ``kind`` a lone checkpoint file records (torch checkpoints written before kinds: "torch")."""
    import torch  # a lone checkpoint is read only to be loaded next; runs in folders never get here

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: the kind's own loader names the file and the problem
        return TORCH_RUN
    kind = state.get("kind") if isinstance(state, dict) else None
    return kind if kind in RUN_KINDS else TORCH_RUN


def run_folder(path: str | Path) -> Path:
    """The run folder of `path` (itself for a folder or a lone checkpoint file)."""
    run = Run.open(path) if Path(path).exists() else None
    return run.root if run is not None and run.root is not None else Path(path)
