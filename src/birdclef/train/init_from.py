"""``train.init_from``: start each fold from a trained torch run's weights instead of the backbone's pretrained ones.

This is how a noisy-student round starts from the distilled model (the BirdCLEF+ 2026 winners: distil, then
fine-tune with labels and pseudo-labels from that start, at a lower learning rate) instead of re-learning from
ImageNet each round. ``birdclef selftrain --student-init start|best`` sets it per round.

**The fold rule.** With a run folder, fold ``k`` starts from that run's ``fold{k}/best.pt``: the model that never
saw fold ``k``'s clips, so fold ``k``'s validation and out-of-fold predictions stay honest. That holds only when
both runs split the clips alike, so the run's ``data.n_folds`` and ``data.fold_seed`` must be this config's. A
single ``best.pt`` starts every fold (its own held-out fold is then the only honest one: the caller's choice).

What is loaded is the classifier (backbone and head); an embedding-distillation run's projection head is never in
``best.pt`` and starts fresh. The classes must be this run's, or include them: a taxon specialist (``data.classes``)
starts from a full run, each class-sized layer (the head's rows, e.g. ``fc.weight`` (K, C) and ``fc.bias``) cut to
the specialist's classes by name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from birdclef.config import Config
from birdclef.errors import BirdclefError, ConfigError


def fold_checkpoint(source: str | Path, key: str, config: Config, fold: int, kind: str | None = None,
                    kind_name: str | None = None) -> Path:
    """The ``best.pt`` fold `fold` of `config` starts from, by the fold rule (module docstring): `source`'s own file,
    or the ``fold{fold}/best.pt`` of a run that split its clips as `config` does. Shared by ``train.init_from`` and
    ``train.distill_head_init`` (`key`, named in every error).

    Args:
        kind: the run kind `source` must be (:data:`birdclef.zoo.runs.RUN_KINDS`), or None for any.
        kind_name: how an error names that kind (default ``a KIND run``).

    Raises:
        ConfigError: no such run or file, another kind, another fold split, fold `fold` unfinished.
    """
    from birdclef.zoo.runs import Run

    try:
        run = Run.open(source)
    except BirdclefError:
        raise ConfigError(f"{key} {source}: no such run folder or checkpoint") from None
    if kind is not None and run.kind != kind:
        raise ConfigError(f"{key} {source}: a {run.kind} run, not {kind_name or f'a {kind} run'}")
    if run.is_checkpoint:
        return run.path
    stored = run.fold_settings()
    for name, mine in (("n_folds", config.data.n_folds), ("fold_seed", config.data.fold_seed)):
        if name in stored and stored[name] != mine:
            raise ConfigError(f"{key} {source}: that run split its clips with data.{name}={stored[name]}, this "
                              f"config with {mine}; fold {fold} would start from a model that saw its clips")
    best = run.path / f"fold{fold}" / "best.pt"
    if not (run.path / f"fold{fold}" / "done.json").is_file() or not best.is_file():
        raise ConfigError(f"{key} {source}: fold {fold} is not finished there (no fold{fold}/done.json); "
                          f"train it, or give one best.pt to start every fold from")
    return best


def init_checkpoint(config: Config, fold: int) -> Path | None:
    """The ``best.pt`` fold `fold` starts from (:func:`fold_checkpoint`), or None without ``train.init_from``.

    Raises:
        ConfigError: see :func:`fold_checkpoint`.
    """
    if config.train.init_from is None:
        return None
    return fold_checkpoint(config.train.init_from, "train.init_from", config, fold)


def check_init_from(config: Config) -> None:
    """Every fold of ``train.folds`` has its start (before any slow step)."""
    for fold in config.train.folds:
        init_checkpoint(config, fold)


def load_init(model: torch.nn.Module, config: Config, classes: list[str], fold: int) -> Path | None:
    """Load fold `fold`'s start (:func:`init_checkpoint`) into `model`, a freshly built classifier; the path loaded.

    Raises:
        ConfigError: the checkpoint cannot be read, holds other classes, or its weights do not fit `model` (another
            backbone or head).
    """
    path = init_checkpoint(config, fold)
    if path is None:
        return None
    from birdclef.models import CheckpointError
    from birdclef.models.factory import _read_checkpoint

    try:
        checkpoint = _read_checkpoint(path, "cpu")
    except CheckpointError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    if checkpoint.get("kind", "torch") != "torch" or "model" not in checkpoint:
        raise ConfigError(f"train.init_from {path}: not a torch classifier checkpoint (kind "
                          f"{checkpoint.get('kind')!r}); a head on frozen embeddings cannot start a CNN")
    theirs = list(checkpoint.get("classes", []))
    state = checkpoint["model"]
    if theirs != list(classes):
        missing = [c for c in classes if c not in theirs]
        if missing or len(set(classes)) != len(classes):
            only = sorted(set(theirs) ^ set(classes))
            what = (f"{len(only)} differ (e.g. {', '.join(only[:3])})" if only
                    else "the same classes in another order")
            raise ConfigError(f"train.init_from {path}: trained on {len(theirs)} classes, this run has "
                              f"{len(classes)}: {what}")
        state = _cut_to_classes(state, model.state_dict(), [theirs.index(c) for c in classes], len(theirs))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        stored = checkpoint.get("config", {}).get("model", {})
        raise ConfigError(f"train.init_from {path}: its model (backbone {stored.get('backbone')}, head "
                          f"{stored.get('head')}) does not fit this config's (backbone {config.model.backbone}, head "
                          f"{config.model.head}): {str(exc).splitlines()[0]}") from None
    return path


def _cut_to_classes(state: dict[str, torch.Tensor], mine: dict[str, torch.Tensor], rows: list[int],
                    n_theirs: int) -> dict[str, torch.Tensor]:
    """`state` (a model of `n_theirs` classes) with each class-sized tensor cut to `rows`: a tensor whose first
    dimension is `n_theirs` and whose shape differs from this model's (only the class-sized layers differ)."""
    index = torch.as_tensor(rows, dtype=torch.long)
    out = {}
    for key, value in state.items():
        if (key in mine and value.shape != mine[key].shape and value.ndim >= 1 and value.shape[0] == n_theirs
                and (len(rows),) + tuple(value.shape[1:]) == tuple(mine[key].shape)):
            value = value.index_select(0, index)
        out[key] = value
    return out
