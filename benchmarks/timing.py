"""Timing helper shared by the benchmark scripts (they import it as ``timing``: a script's own
folder is first on ``sys.path``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
