"""The DataLoaders of one fold, as a LightningDataModule so that a resumed fit draws the right epoch.

Lightning creates the first training iterator (whose workers prefetch batches at once) before it
calls ``sampler.set_epoch`` of the epoch it resumes at, so a resumed epoch would replay epoch 0's
order and crops. :meth:`FoldData.train_dataloader` runs after the checkpoint's loop state is
restored, and sets the sampler's epoch there first (to the restored epoch progress).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from birdclef.config import Config
from birdclef.data.augment import BackgroundBank
from birdclef.data.cache import WaveCache
from birdclef.data.dataset import EpochSampler, WindowDataset
from birdclef.utils.process import worker_dies_with_parent


class FoldData(L.LightningDataModule):
    """Training windows of every fold but `fold` (random crops, background) and `fold`'s fixed windows.

    Args:
        config: run config (seed, batch size, workers, background mixing).
        cache: prepared cache.
        targets: (len(cache), K) float32 targets.
        weights: (len(cache),) float32 loss weights.
        folds: (len(cache),) fold id of each cache row.
        fold: the held-out fold.
        background: soundscape bank for background mixing, or None.
    """

    def __init__(self, config: Config, cache: WaveCache, targets: np.ndarray, weights: np.ndarray,
                 folds: np.ndarray, fold: int, background: BackgroundBank | None):
        super().__init__()
        train = config.train
        self.seed, self.batch_size, self.num_workers = train.seed + fold, train.batch_size, train.num_workers
        self.train_set = WindowDataset(cache, np.flatnonzero(folds != fold), targets, weights, train=True,
                                       seed=self.seed, background=background, background_prob=train.background_prob,
                                       background_gain=train.background_gain)
        self.val_set = WindowDataset(cache, np.flatnonzero(folds == fold), targets, weights, train=False, seed=self.seed)

    def _loader(self, dataset: WindowDataset, **kwargs) -> DataLoader:
        # An explicit generator keeps worker base seeds off the global torch RNG; the data itself is
        # keyed on (seed, epoch, clip) and does not depend on them.
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          worker_init_fn=worker_dies_with_parent, generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.train_set), self.seed)
        # The epoch Lightning will pass to set_epoch (its restored progress, as in FitLoop.on_advance_start).
        sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0)
        # A last batch of one example would break BatchNorm in train mode; drop it, keep every other.
        return self._loader(self.train_set, sampler=sampler, drop_last=len(sampler) % self.batch_size == 1)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
