"""Review queues of one class: which windows to ask about, in which order.

- ``top``: the highest scores first (what a detector finds best);
- ``stratified``: the class's windows scoring at least ``bins.low`` are cut into score bins
  (:class:`Bins`, equal width up to 1); a seeded random draw of ``size / n_bins`` windows per bin, dealt
  round-robin from the highest bin down so a half-done queue is still balanced. Each bin is a simple random
  sample of its population, which is what makes the precision estimate unbiased (:mod:`birdclef.review.precision`);
- ``margin``: nearest the class's threshold first (active learning: the answers that move a model most).

Queues are deterministic (same scores, bins, seed -> same items), so a restarted server shows the same
queue, and the reviewer resumes at its first unanswered item. Windows without a score (NaN) never queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from birdclef.errors import BirdclefError

KINDS = ("top", "stratified", "margin")


@dataclass(frozen=True)
class Bins:
    """Score bins of the stratified queue and the precision estimate: ``n`` equal bins over [low, 1]."""

    n: int = 10
    """Number of bins."""
    low: float = 0.1
    """Lowest score considered; windows below it are never detections at any threshold the estimate offers."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise BirdclefError(f"--bins must be at least 1, got {self.n}")
        if not 0.0 <= self.low < 1.0:
            raise BirdclefError(f"--min-score must be in [0, 1), got {self.low}")

    @property
    def edges(self) -> np.ndarray:
        """(n + 1,) bin edges, ascending; bin h is [edges[h], edges[h + 1]) and the last includes 1."""
        return np.round(np.linspace(self.low, 1.0, self.n + 1), 6)

    def of(self, scores: np.ndarray) -> np.ndarray:
        """(W,) bin index of each score; -1 below ``low`` or NaN."""
        scores = np.asarray(scores, np.float64)
        index = np.clip(np.searchsorted(self.edges, scores, side="right") - 1, 0, self.n - 1)
        return np.where(np.isnan(scores) | (scores < self.low), -1, index)


def top_queue(scores: np.ndarray, size: int) -> np.ndarray:
    """Window positions of the `size` highest scores, highest first (ties in table order)."""
    valid = np.flatnonzero(~np.isnan(scores))
    order = valid[np.argsort(-scores[valid], kind="stable")]
    return order[:size]


def margin_queue(scores: np.ndarray, threshold: float, size: int) -> np.ndarray:
    """Window positions of the `size` scores nearest `threshold`, nearest first."""
    valid = np.flatnonzero(~np.isnan(scores))
    order = valid[np.argsort(np.abs(scores[valid] - threshold), kind="stable")]
    return order[:size]


def stratified_queue(scores: np.ndarray, bins: Bins, size: int, seed: int, cls: str) -> np.ndarray:
    """Window positions: a seeded random draw of ceil(size / n) per bin, dealt round-robin from the top bin."""
    which = bins.of(scores)
    per_bin = int(np.ceil(size / bins.n))
    draws = []
    for h in range(bins.n - 1, -1, -1):
        members = np.flatnonzero(which == h)
        rng = np.random.default_rng([seed, h, *cls.encode()])  # one stream per (seed, bin, class)
        draws.append(rng.permutation(members)[:per_bin])
    dealt = [d[i] for i in range(per_bin) for d in draws if i < len(d)]
    return np.asarray(dealt[:size], np.int64)


def build_queue(table: pd.DataFrame, cls: str, kind: str, size: int, bins: Bins, threshold: float,
                seed: int = 0) -> np.ndarray:
    """Positions in `table` of the queue `kind` of class `cls` (module docstring)."""
    if kind not in KINDS:
        raise BirdclefError(f"queue {kind!r}: choose one of {', '.join(KINDS)}")
    if cls not in table.columns:
        raise BirdclefError(f"class {cls!r} is not a column of the results")
    scores = pd.to_numeric(table[cls], errors="coerce").to_numpy(np.float64)
    if kind == "top":
        return top_queue(scores, size)
    if kind == "margin":
        return margin_queue(scores, threshold, size)
    return stratified_queue(scores, bins, size, seed, cls)
