"""The rows an embedding-distillation fold trains and validates on, as a LightningDataModule.

An item is one 5 s row of a teacher source (:mod:`birdclef.train.teacher`): ``(source, row)``, source 0 the clips.
A training item draws, seeded by (seed, epoch, source, row), one of the source's mixed copies
``1..train.embed_copies`` (the clean row when that copy's draw left it clean, or when there are no copies), so a
row is mixed with probability ``train.background_prob`` each epoch, as on-the-fly background mixing would, but with
the very audio whose teacher embedding is cached. Validation items are the held-out clips' clean rows.

Which rows an epoch trains on depends on its stage, so the training loader is rebuilt every epoch (the Trainer runs
with ``reload_dataloaders_every_n_epochs=1``):

- distillation epochs (``epoch < train.distill_epochs``): the training folds' clip rows and every row of the
  unlabelled audio (the held-out fold's clips are never heard, so its validation stays honest);
- label epochs: the training folds' clip rows.
"""

from __future__ import annotations

import numpy as np
import torch
import lightning as L
from torch.utils.data import DataLoader, Dataset

from birdclef.config import Config
from birdclef.data.augment import BackgroundBank
from birdclef.data.dataset import EpochSampler
from birdclef.train.teacher import Teacher
from birdclef.utils.process import worker_dies_with_parent


class DistillRows(Dataset):
    """``(wave (T,), target (K,), mask (K,), weight (), teacher (D,))`` of `items` (module docstring).

    Args:
        teacher: the sources and their cached targets.
        items: (M, 2) int64 (source, row).
        labels: (N, K) float32 targets of the clip cache's recordings (rows of source 0 take their clip's).
        weights: (N,) float32 loss weights of the clips.
        config: run config (seed, background draws).
        bank: the background bank the copies were mixed from.
        train: draw a copy per (epoch, item) from the sampler's key; False: the clean rows.
        seed: base seed of the copy draws.
    """

    def __init__(self, teacher: Teacher, items: np.ndarray, labels: np.ndarray, weights: np.ndarray, config: Config,
                 bank: BackgroundBank | None, train: bool, seed: int):
        self.teacher, self.items = teacher, np.asarray(items, np.int64).reshape(-1, 2)
        self.labels, self.weights, self.config, self.bank = labels, weights, config, bank
        self.train, self.seed = train, seed
        self._unknown = (np.zeros(labels.shape[1], np.float32), np.zeros(labels.shape[1], bool))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, ...]:
        epoch, i = divmod(int(key), len(self.items))
        s, row = (int(v) for v in self.items[i])
        source = self.teacher.sources[s]
        copy = 0
        if self.train and source.n_copies:
            copy = int(np.random.default_rng([self.seed, epoch, s, row]).integers(1, source.n_copies + 1))
        wave, target_emb = source.row(row, copy, self.config, self.bank)
        if s == 0:
            clip = int(source.clips[row])
            target, mask, weight = self.labels[clip], np.ones(self.labels.shape[1], bool), self.weights[clip]
        else:  # unlabelled: nothing known, trains the cosine term only
            (target, mask), weight = self._unknown, 1.0
        return (torch.from_numpy(wave), torch.from_numpy(target), torch.from_numpy(mask),
                torch.tensor(weight, dtype=torch.float32), torch.from_numpy(target_emb))


class DistillData(L.LightningDataModule):
    """Fold `fold`'s distillation and label items, and its validation rows (module docstring).

    Args:
        config: run config (batch size, workers, seed, ``train.distill_epochs``).
        teacher: sources and targets (source 0: the clips of the wave cache).
        labels: (N, K) targets of the cached clips; weights: (N,) their loss weights; folds: (N,) their folds.
        fold: the held-out fold.
        bank: background bank of the copies.
    """

    def __init__(self, config: Config, teacher: Teacher, labels: np.ndarray, weights: np.ndarray, folds: np.ndarray,
                 fold: int, bank: BackgroundBank | None):
        super().__init__()
        train = config.train
        self.config, self.teacher, self.bank = config, teacher, bank
        self.labels, self.weights = labels, weights
        self.seed, self.batch_size, self.num_workers = train.seed + fold, train.batch_size, train.num_workers
        clips = teacher.sources[0]
        held_out = folds[clips.clips] == fold
        self.label_items = _items(0, np.flatnonzero(~held_out))
        self.distill_items = np.concatenate([self.label_items] + [_items(s, np.arange(len(source)))
                                                                   for s, source in enumerate(teacher.sources) if s])
        self.val_items = _items(0, np.flatnonzero(held_out))

    def _loader(self, items: np.ndarray, train: bool, **kwargs) -> DataLoader:
        dataset = DistillRows(self.teacher, items, self.labels, self.weights, self.config, self.bank, train, self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          worker_init_fn=worker_dies_with_parent, generator=torch.Generator().manual_seed(self.seed),
                          **kwargs)

    def stage_items(self, epoch: int) -> np.ndarray:
        """The training items of `epoch`: every row in a distillation epoch, the labelled ones after."""
        return self.distill_items if epoch < self.config.train.distill_epochs else self.label_items

    def train_dataloader(self) -> DataLoader:
        # The epoch Lightning is about to run (its restored progress on resume, as in FoldData).
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
        items = self.stage_items(epoch)
        sampler = EpochSampler(len(items), self.seed)
        sampler.set_epoch(epoch)
        # A last batch of one example would break BatchNorm in train mode; drop it, keep every other.
        return self._loader(items, True, sampler=sampler, drop_last=len(sampler) % self.batch_size == 1)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_items, False, shuffle=False)


def _items(source: int, rows: np.ndarray) -> np.ndarray:
    return np.stack([np.full(len(rows), source, np.int64), np.asarray(rows, np.int64)], axis=1).reshape(-1, 2)
