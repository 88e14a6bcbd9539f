"""Argparse ``type=`` helpers for numeric flags: every number a verb takes is checked once, where it is parsed.

Each helper turns the text into a number and checks that it is finite and in range, or raises
``argparse.ArgumentTypeError``, which argparse reports in one line naming the flag
(``birdclef analyze: error: argument --hop: must be a finite number >= 0.1, got 'nan'``).

>>> p.add_argument("--hop", type=number(low=MIN_HOP_S), default=5.0)
>>> p.add_argument("--threads", type=count(low=1))
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] (``low_open``/``high_open``: the bound itself excluded)."""
    rule = _describe(low, high, low_open, high_open)
    wanted = "a finite number" + (f" {rule}" if rule else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value < low or (low_open and value == low))) or (
                high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = "number"  # argparse names the type in some messages
    return parse


def count(low: int = 0, high: int | None = None) -> Callable[[str], int]:
    """A whole number in [low, high]."""
    wanted = "a whole number " + _describe(low, high, False, False)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = "count"
    return parse


positive = number(low=0.0, low_open=True)
"""A finite number > 0."""
non_negative = number(low=0.0)
"""A finite number >= 0."""
probability = number(low=0.0, high=1.0)
"""A finite number in [0, 1] (a score, a fill value, a precision)."""


def weight(text: str) -> float:
    """A blend weight: a finite, non-negative number (the blend checks that they do not all vanish)."""
    try:
        return non_negative(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a blend weight must be a finite, non-negative number, got {text!r}") \
            from None


threads = count(low=1, high=1024)
"""Runtime threads (at least 1)."""
workers = count(low=0, high=1024)
"""Decoding processes / loader workers (0: none)."""

def hop(text: str) -> float:
    """Seconds between window starts: finite, at least :data:`birdclef.config.MIN_HOP_S`, at most an hour."""
    from birdclef.config import MIN_HOP_S

    return number(low=MIN_HOP_S, high=3600.0)(text)


class UsageError(Exception):
    """A flag argparse could not take; :func:`birdclef.cli.main` prints it in one line and exits with 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``birdclef VERB: error: argument --hop: ...``, not the
    usage block: :meth:`error` raises :class:`UsageError` for the caller to print (``--help`` still works)."""

    def error(self, message: str):  # argparse's hook; never returns
        raise UsageError(f"{self.prog}: error: {message} (see `{self.prog} --help`)")
