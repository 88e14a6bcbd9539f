"""The DataLoaders of one fold, as a LightningDataModule so that a resumed fit draws the right epoch.

Lightning creates the first training iterator (whose workers prefetch batches at once) before it
calls ``sampler.set_epoch`` of the epoch it resumes at, so a resumed epoch would replay epoch 0's
order and crops. :meth:`FoldData.train_dataloader` runs after the checkpoint's loop state is
restored, and sets the sampler's epoch there first (to the restored epoch progress).
"""

from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from birdclef.config import Config, mil_hop_s
from birdclef.data.bags import BagDataset
from birdclef.data.augment import BackgroundBank
from birdclef.data.dataset import EpochSampler, WindowDataset
from birdclef.data.examples import Examples
from birdclef.data.pseudo import pseudo_mass_factors
from birdclef.utils.process import worker_dies_with_parent


class FoldData(L.LightningDataModule):
    """Fold `fold`'s training examples (other folds' clips, and a per-epoch draw of the other soundscape folds'
    pseudo windows) and its validation clips (fixed windows, hard labels).

    Args:
        config: run config (seed, batch size, workers, background and soundscape mixing, pseudo_ratio).
        examples: the run's examples (clips first, then pseudo windows).
        fold: the held-out fold.
        background: soundscape bank for background mixing, or None.
    """

    def __init__(self, config: Config, examples: Examples, fold: int, background: BackgroundBank | None):
        super().__init__()
        train = config.train
        self.seed, self.batch_size, self.num_workers = train.seed + fold, train.batch_size, train.num_workers
        clips, pseudo = examples.rows("clip", fold, held_out=False), examples.rows("pseudo", fold, held_out=False)
        clips = np.concatenate([clips, examples.rows("review", fold, held_out=False)])  # in every epoch, as clips
        self.n_clips = len(clips)
        self.n_pseudo = min(int(round(train.pseudo_ratio * len(clips))), len(pseudo))
        """Pseudo windows drawn per epoch (train.pseudo_ratio of the clips, at most the fold's pool)."""
        self.pseudo_factors = None
        """(K,) loss factor per class on the pseudo windows (train.pseudo_mass_cap), or None: no cap."""
        if train.pseudo_mass_cap is not None and len(pseudo):
            self.pseudo_factors = pseudo_mass_factors(
                examples.targets[clips] * examples.mask[clips], examples.weights[clips], examples.targets[pseudo],
                examples.mask[pseudo], examples.weights[pseudo], self.n_pseudo, train.pseudo_mass_cap)
        # Under data.strategy=mil every example is a bag of windows (birdclef.data.bags), else one window.
        kind = (partial(BagDataset, k=train.mil_windows, hop_s=mil_hop_s(config))
                if config.data.strategy == "mil" else WindowDataset)
        self.train_set = kind(examples, np.concatenate([clips, pseudo]), train=True, seed=self.seed,
                              background=background, background_prob=train.background_prob,
                              background_gain=train.background_gain, mix_rows=pseudo, mix_prob=train.pseudo_mix_prob,
                              pseudo_scale=self.pseudo_factors)
        self.val_set = kind(examples, examples.rows("clip", fold, held_out=True), train=False, seed=self.seed)

    def _loader(self, dataset: WindowDataset | BagDataset, **kwargs) -> DataLoader:
        # An explicit generator keeps worker base seeds off the global torch RNG; the data itself is
        # keyed on (seed, epoch, clip) and does not depend on them.
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          worker_init_fn=worker_dies_with_parent, generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.train_set), self.seed, always=self.n_clips, draw=self.n_pseudo)
        # The epoch Lightning will pass to set_epoch (its restored progress, as in FitLoop.on_advance_start).
        sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0)
        # A last batch of one example would break BatchNorm in train mode; drop it, keep every other.
        return self._loader(self.train_set, sampler=sampler, drop_last=len(sampler) % self.batch_size == 1)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
