"""Bags of windows for multiple-instance learning (``data.strategy=mil``).

A clip's stored span (the first ``data.max_clip_s`` seconds, as ``random`` stores them) is cut into windows
of ``data.window_s`` every ``mil_hop_s`` seconds, plus one window ending at the span's end when the hop
does not reach it; a span no longer than a window is one window (tiled, as :class:`WaveCache` does). A
training bag holds all of a clip's windows when it has at most ``mil_windows`` of them, otherwise a subset of
``mil_windows`` drawn per (seed, epoch, example) (so resume is exact); a validation bag takes evenly
spaced windows. Bags are padded with silent windows to ``mil_windows`` and carry a (K,) ``valid`` mask.
A pseudo-labelled soundscape window is a bag of one.
"""

from __future__ import annotations

import numpy as np
import torch

from birdclef.audio.io import tile_to_length
from birdclef.data.augment import BackgroundBank, add_background, max_targets
from birdclef.data.dataset import WindowDataset
from birdclef.data.examples import Examples


def window_starts(n_samples: int, length: int, hop: int) -> np.ndarray:
    """Start samples of the windows of a span of `n_samples`: every `hop`, plus one ending at the span's end.

    Example:
        >>> window_starts(7, 4, 2).tolist(), window_starts(3, 4, 2).tolist()
        ([0, 2, 3], [0])
    """
    if n_samples <= length:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_samples - length + 1, hop, dtype=np.int64)
    return starts if starts[-1] == n_samples - length else np.append(starts, n_samples - length)


def pick_windows(n_windows: int, k: int, rng: np.random.Generator | None) -> np.ndarray:
    """Sorted indices of the windows a bag holds: all when ``n_windows <= k``, else `k` drawn with `rng`
    without replacement, or (`rng` None) `k` evenly spaced ones."""
    if n_windows <= k:
        return np.arange(n_windows)
    if rng is None:
        return np.round(np.linspace(0, n_windows - 1, k)).astype(np.int64)
    return np.sort(rng.choice(n_windows, k, replace=False))


def clip_windows(segment: np.ndarray, length: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """((n, length) float32 windows, (n,) start samples) of a stored span."""
    starts = window_starts(len(segment), length, hop)
    if len(segment) <= length:
        return tile_to_length(segment, length)[None].astype(np.float32), starts
    return np.stack([segment[s : s + length] for s in starts]).astype(np.float32), starts


class BagDataset(WindowDataset):
    """(bag (K, T), target (C,), mask (C,), weight (), valid (K,) bool) for the examples `rows`.

    Args:
        examples: the run's examples (clips and pseudo windows).
        rows: example indices this split uses.
        train: random window subsets, background and soundscape mixing; False: evenly spaced windows.
        k: windows per bag (``train.mil_windows``).
        hop_s: step between a clip's windows in seconds.
        seed, background, background_prob, background_gain, mix_rows, mix_prob, pseudo_scale: as
            :class:`~birdclef.data.dataset.WindowDataset`; background is drawn for each window, a mixed
            pseudo window is added to every window of the bag (the targets combine by max).
    """

    def __init__(self, examples: Examples, rows: np.ndarray, train: bool, k: int, hop_s: float, seed: int = 42,
                 background: BackgroundBank | None = None, background_prob: float = 0.0,
                 background_gain: tuple[float, float] = (0.1, 0.5), mix_rows: np.ndarray | None = None,
                 mix_prob: float = 0.0, pseudo_scale: np.ndarray | None = None):
        super().__init__(examples, rows, train, seed, background, background_prob, background_gain, mix_rows,
                         mix_prob, pseudo_scale)
        self.k = int(k)
        self.length = examples.cache.window_length
        self.hop = max(1, int(round(hop_s * examples.cache.sample_rate)))
        self.cache_rows = examples.table["cache_row"].to_numpy(np.int64)

    def windows(self, row: int, rng: np.random.Generator | None) -> np.ndarray:
        """(n <= K, T) float32 windows of example `row` (a pseudo window: one)."""
        cache_row = int(self.cache_rows[row])
        if cache_row < 0:
            return self.examples.wave(row)[None]
        wins, _ = clip_windows(self.examples.cache.segment(cache_row), self.length, self.hop)
        return wins[pick_windows(len(wins), self.k, rng)]

    def __getitem__(self, key: int) -> tuple[torch.Tensor, ...]:
        epoch, i = divmod(int(key), len(self.rows))
        row, ex = int(self.rows[i]), self.examples
        rng = np.random.default_rng([self.seed, epoch, row]) if self.train else None
        wins = self.windows(row, rng)
        if rng is not None and self.background is not None:
            for j in range(len(wins)):
                if rng.random() < self.background_prob:
                    excerpt = self.background.excerpt(self.length, rng)
                    wins[j] = add_background(wins[j], excerpt, float(rng.uniform(*self.background_gain)))
        target, mask = torch.from_numpy(ex.targets[row]), self.mask(row)
        if rng is not None and self.mix_prob > 0 and ex.is_clip(row) and rng.random() < self.mix_prob:
            other = int(self.mix_rows[rng.integers(len(self.mix_rows))])
            gain, extra = float(rng.uniform(*self.background_gain)), ex.wave(other)
            wins = np.stack([add_background(w, extra, gain) for w in wins])
            target, mask = max_targets(target, mask, torch.from_numpy(ex.targets[other]), self.mask(other))
        bag = np.zeros((self.k, self.length), dtype=np.float32)
        bag[: len(wins)] = wins
        valid = torch.zeros(self.k, dtype=torch.bool)
        valid[: len(wins)] = True
        return torch.from_numpy(bag), target, mask, torch.tensor(ex.weights[row]), valid
