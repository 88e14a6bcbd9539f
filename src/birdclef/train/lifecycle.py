"""Process and checkpoint safety of a training run: atomic ``last.ckpt``, readable-checkpoint check,
and whether this process is a launched DDP rank.

A ``kill -9`` of ``birdclef train`` leaves neither a half-written ``last.ckpt`` (it is written to a
temporary file and renamed) nor orphaned DataLoader workers or DDP ranks
(:func:`birdclef.utils.process.die_with_parent`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from birdclef.utils.io import write_atomic


def is_launched_rank() -> bool:
    """True in a process a DDP launcher started for a rank other than 0 (Lightning re-runs the command
    with ``LOCAL_RANK`` / ``NODE_RANK`` set; torchrun and SLURM set ``RANK``)."""
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: a kill never truncates them."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def readable_checkpoint(path: Path) -> str | None:
    """None when `path` is a Lightning checkpoint that loads, else why it does not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated zip, unpickling error, ...: all mean "unusable"
        first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else "unreadable"
        return f"{type(exc).__name__}: {first[:160]}"
    if not isinstance(state, dict) or not {"state_dict", "loops", "epoch"} <= set(state):
        return "not a Lightning checkpoint (no state_dict / loops / epoch)"
    return None
