"""Torch datasets over the run's examples: training windows (random crops, background) and fixed ones.

Randomness is keyed on (seed, epoch, example), never on worker state, so a resumed run draws the same
crops as an uninterrupted one. The epoch reaches worker processes through the sampler: it yields
``epoch * n + i`` and the dataset splits the key back.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from birdclef.data.augment import BackgroundBank, add_background, max_targets
from birdclef.data.examples import Examples


class WindowDataset(Dataset):
    """(wave (T,), target (K,), mask (K,), weight ()) for the examples `rows` (clips and pseudo windows).

    Args:
        examples: the run's examples (:class:`birdclef.data.examples.Examples`).
        rows: example indices this split uses.
        train: random crops, background and soundscape mixing (keyed by the sampler's epoch); False gives
            the deterministic window of each example (validation, out-of-fold predictions).
        seed: base seed of all draws.
        background: soundscape bank to mix under examples with probability `background_prob`.
        background_gain: range of the background (and mixed pseudo window) RMS relative to the clip RMS.
        mix_rows: pseudo windows that may be added to a training clip ("soundscape mixup"), with
            probability `mix_prob`; the targets combine by max (:func:`~birdclef.data.augment.max_targets`).
        pseudo_scale: (K,) factor per class on the mask of pseudo windows (``train.pseudo_mass_cap``,
            :func:`~birdclef.data.pseudo.pseudo_mass_factors`); masks are then float32 0-1 for every example
            (1 where a clip's target is known). None: bool masks as the examples hold them.
    """

    def __init__(
        self,
        examples: Examples,
        rows: np.ndarray,
        train: bool,
        seed: int = 42,
        background: BackgroundBank | None = None,
        background_prob: float = 0.0,
        background_gain: tuple[float, float] = (0.1, 0.5),
        mix_rows: np.ndarray | None = None,
        mix_prob: float = 0.0,
        pseudo_scale: np.ndarray | None = None,
    ):
        self.examples, self.rows = examples, np.asarray(rows, dtype=np.int64)
        self.pseudo_scale = None if pseudo_scale is None else np.asarray(pseudo_scale, np.float32)
        self.train, self.seed = train, seed
        self.background = background if background is not None and len(background) else None
        self.background_prob, self.background_gain = background_prob, background_gain
        self.mix_rows = np.asarray(mix_rows if mix_rows is not None else [], dtype=np.int64)
        self.mix_prob = mix_prob if len(self.mix_rows) else 0.0

    def __len__(self) -> int:
        return len(self.rows)

    def mask(self, row: int) -> torch.Tensor:
        """(K,) mask of example `row`: bool, or float32 scaled by `pseudo_scale` for a pseudo window."""
        known = self.examples.mask[row]
        if self.pseudo_scale is None:
            return torch.from_numpy(known)
        scale = self.pseudo_scale if self.examples.is_pseudo(row) else np.float32(1.0)
        return torch.from_numpy(known.astype(np.float32) * scale)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(key), len(self.rows))
        row = int(self.rows[i])
        ex = self.examples
        rng = np.random.default_rng([self.seed, epoch, row]) if self.train else None
        wave = ex.wave(row, rng)  # (T,)
        if rng is not None and self.background is not None and rng.random() < self.background_prob:
            excerpt = self.background.excerpt(len(wave), rng)
            wave = add_background(wave, excerpt, float(rng.uniform(*self.background_gain)))
        target, mask = torch.from_numpy(ex.targets[row]), self.mask(row)
        if rng is not None and self.mix_prob > 0 and ex.is_clip(row) and rng.random() < self.mix_prob:
            other = int(self.mix_rows[rng.integers(len(self.mix_rows))])
            wave = add_background(wave, ex.wave(other), float(rng.uniform(*self.background_gain)))
            target, mask = max_targets(target, mask, torch.from_numpy(ex.targets[other]), self.mask(other))
        return torch.from_numpy(wave), target, mask, torch.tensor(ex.weights[row])


class EpochSampler(Sampler[int]):
    """Shuffles with (seed, epoch) and yields ``epoch * n + i`` keys for :class:`WindowDataset`.

    Positions ``0 .. always - 1`` (the training clips) are in every epoch; `draw` more are drawn each
    epoch, without replacement, from positions ``always .. n - 1`` (the fold's pseudo windows), seeded by
    (seed, epoch) so a resumed epoch draws the same ones. By default every position is in every epoch.

    Under torch.distributed each rank takes every world_size-th key of the same permutation
    (padded by wrapping so ranks get equal counts), so Lightning's own sampler replacement is
    not needed (``use_distributed_sampler=False``).
    """

    def __init__(self, n: int, seed: int = 42, shuffle: bool = True, always: int | None = None, draw: int = 0):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.always = n if always is None else always
        if not 0 <= draw <= n - self.always:
            raise ValueError(f"cannot draw {draw} of the {n - self.always} optional positions")
        self.draw = draw

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _positions(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.draw and self.always == self.n:
            return rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        drawn = self.always + rng.choice(self.n - self.always, self.draw, replace=False)
        positions = np.concatenate([np.arange(self.always), np.sort(drawn)])
        return rng.permutation(positions) if self.shuffle else positions

    def __iter__(self):
        order = self._positions()
        rank, world = self._shard()
        if world > 1:
            order = np.resize(order, -(-len(order) // world) * world)[rank::world]
        return iter((self.epoch * self.n + order).tolist())

    def __len__(self) -> int:
        rank, world = self._shard()
        return -(-(self.always + self.draw) // world)
