"""Torch datasets over a prepared cache: training windows (random crops, background) and fixed ones.

Randomness is keyed on (seed, epoch, clip), never on worker state, so a resumed run draws the same
crops as an uninterrupted one. The epoch reaches worker processes through the sampler: it yields
``epoch * n + i`` and the dataset splits the key back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from birdclef.data.augment import BackgroundBank, add_background
from birdclef.data.cache import WaveCache


class WindowDataset(Dataset):
    """(wave (T,), target (K,), weight ()) for the cache rows `rows`.

    Args:
        cache: prepared training cache.
        rows: indices into `cache` that this split uses.
        targets: (len(cache), K) float32 targets of every cache row.
        weights: (len(cache),) float32 per-clip loss weights.
        train: random crops and background mixing (keyed by the sampler's epoch); False gives the
            deterministic window of each clip (validation, out-of-fold predictions).
        seed: base seed of all draws.
        background: soundscape bank to mix under clips with probability `background_prob`.
        background_gain: range of the background RMS relative to the clip RMS.
    """

    def __init__(
        self,
        cache: WaveCache,
        rows: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        train: bool,
        seed: int = 42,
        background: BackgroundBank | None = None,
        background_prob: float = 0.0,
        background_gain: tuple[float, float] = (0.1, 0.5),
    ):
        self.cache, self.rows, self.targets, self.weights = cache, np.asarray(rows), targets, weights
        self.train, self.seed = train, seed
        self.background = background if background is not None and len(background) else None
        self.background_prob, self.background_gain = background_prob, background_gain

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(key), len(self.rows))
        row = int(self.rows[i])
        rng = np.random.default_rng([self.seed, epoch, row]) if self.train else None
        wave = self.cache.window(row, rng)  # (T,)
        if rng is not None and self.background is not None and rng.random() < self.background_prob:
            excerpt = self.background.excerpt(len(wave), rng)
            wave = add_background(wave, excerpt, float(rng.uniform(*self.background_gain)))
        return torch.from_numpy(wave), torch.from_numpy(self.targets[row]), torch.tensor(self.weights[row])


class EpochSampler(Sampler[int]):
    """Shuffles with (seed, epoch) and yields ``epoch * n + i`` keys for :class:`WindowDataset`.

    Under torch.distributed each rank takes every world_size-th key of the same permutation
    (padded by wrapping so ranks get equal counts), so Lightning's own sampler replacement is
    not needed (``use_distributed_sampler=False``).
    """

    def __init__(self, n: int, seed: int = 42, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        rank, world = self._shard()
        if world > 1:
            order = np.resize(order, -(-self.n // world) * world)[rank::world]
        return iter((self.epoch * self.n + order).tolist())

    def __len__(self) -> int:
        rank, world = self._shard()
        return -(-self.n // world)
