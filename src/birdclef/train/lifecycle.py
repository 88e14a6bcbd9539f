"""Process and checkpoint safety of a training run: atomic ``last.ckpt``, readable-checkpoint check,
children that die with their parent, and whether this process is a launched DDP rank.

A ``kill -9`` of ``birdclef train`` leaves neither a half-written ``last.ckpt`` (it is written to a
temporary file and renamed) nor orphaned DataLoader workers or DDP ranks (on Linux they ask the
kernel for SIGKILL when their parent dies, ``prctl(PR_SET_PDEATHSIG)``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from birdclef.utils.io import write_atomic

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(_worker_id: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux; a no-op elsewhere).

    Usable as a DataLoader ``worker_init_fn``. If the parent is already gone (we were re-parented
    before the request took effect), exit at once.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: workers fall back to torch's own watchdog
        return
    if parent == 1 or os.getppid() != parent:
        os._exit(1)


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
