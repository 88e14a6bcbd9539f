"""Child processes that end with their parent: a ``kill -9`` of a birdclef command leaves no orphans.

A parent killed with SIGKILL never shuts its pools down: DataLoader workers wait up to torch's own
watchdog period, ProcessPoolExecutor workers wait on their queue forever (they hold its write end
themselves, so they never see end-of-file), and a DDP rank waits on its peers. On Linux a child asks
the kernel for SIGKILL when its parent exits (``prctl(PR_SET_PDEATHSIG)``, immediate); elsewhere a
daemon thread polls the parent pid.

:func:`cpu_seconds` counts what a process and the children it has waited for cost (training epochs, rounds).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 0.5


def _request_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no prctl in this libc
        return False


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def die_with_parent(parent_pid: int | None = None) -> None:
    """End this process as soon as its parent exits; call it first thing in a child.

    Args:
        parent_pid: the parent's pid as the parent saw it (a pool initializer's argument); default the
            current parent. If the parent is already gone, the process exits at once.

    PDEATHSIG fires when the thread that forked the child exits: birdclef starts its children
    (DataLoader workers, decoding pools, DDP ranks) from the main thread.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    if not _request_parent_death_signal():
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="parent-watchdog").start()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def worker_dies_with_parent(_worker_id: int) -> None:
    """:func:`die_with_parent` as a DataLoader ``worker_init_fn``."""
    die_with_parent()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
