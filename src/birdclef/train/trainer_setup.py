"""What every Lightning fit of a fold sets up the same way (the k-fold trainer, :mod:`birdclef.train.kfold`, and
embedding distillation, :mod:`birdclef.train.embedding_distill`): name checks before slow steps, the precision, the
checkpoint to resume from, and a Trainer without start-up chatter."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from birdclef.config import Config
from birdclef.errors import ConfigError
from birdclef.models import list_heads
from birdclef.models.classifier import check_backbone_name
from birdclef.train.lifecycle import readable_checkpoint
from birdclef.train.losses import loss_from_config
from birdclef.utils.device import resolve_device
from birdclef.utils.state import set_aside


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's start-up chatter (device lines, adverts) and warnings that are expected here."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own use of a torch API
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")  # resume
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # num_workers is the user's choice
        try:
            yield
        finally:
            log.setLevel(level)


def trainer_precision(config: Config) -> str:
    """``train.precision``, with auto: bf16-mixed on a GPU, 32-true on a CPU."""
    if config.train.precision != "auto":
        return config.train.precision
    on_gpu = config.train.accelerator != "cpu" and resolve_device("auto").type != "cpu"
    return "bf16-mixed" if on_gpu else "32-true"


def check_names(config: Config) -> None:
    """ConfigError on a misspelt loss, head or backbone before the (slow) cache step, not after it."""
    try:
        loss_from_config(config.train)
    except ConfigError as exc:
        raise ConfigError(f"train.loss: {exc}") from None
    if config.model.head not in list_heads():
        raise ConfigError(f"model.head {config.model.head!r} is not a registered head; choose from {list_heads()}")
    check_backbone_name(config.model.backbone, config.model.birdnet_path)


def resume_checkpoint(fold_dir: Path, resume: bool) -> Path | None:
    """The fold's last.ckpt to resume from; an unreadable one is moved aside and the fold restarts."""
    ckpt = fold_dir / "last.ckpt"
    if not resume or not ckpt.is_file():
        return None
    reason = readable_checkpoint(ckpt)
    if reason is None:
        return ckpt
    set_aside(ckpt, reason, f"fold {fold_dir.name.removeprefix('fold')} restarts from epoch 0 (finished folds "
              "are kept)")
    return None


def launched_checkpoint(path: Path, resume: bool) -> Path | None:
    """A launched DDP rank resumes from what rank 0 chose (rank 0 has moved an unreadable file aside)."""
    return path if resume and path.is_file() else None
