"""The rows an embedding-distillation fold trains and validates on, as a LightningDataModule.

An item is one 5 s row of a teacher source (:mod:`birdclef.train.teacher`) and, for a labelled window, which one:
``(source, row, window)``, source 0 the clips, ``window`` a position in the run's
:class:`~birdclef.train.distill_pseudo.LabelledWindows` (pseudo-labelled or reviewed soundscape windows) or -1.
A training item draws, seeded by (seed, epoch, source, row), one of the source's mixed copies
``1..train.embed_copies`` (the clean row when that copy's draw left it clean, or when there are no copies), so a
row is mixed with probability ``train.background_prob`` each epoch, as on-the-fly background mixing would, but with
the very audio whose teacher embedding is cached. Validation items are the held-out clips' clean rows.

Which rows an epoch trains on depends on its stage, so the training loader is rebuilt every epoch (the Trainer runs
with ``reload_dataloaders_every_n_epochs=1``):

- distillation epochs (``epoch < train.distill_epochs``): the training folds' clip rows and every row of the
  unlabelled audio (the held-out fold's clips are never heard, so its validation stays honest);
- label epochs: the training folds' clip rows and every reviewed window; with a pseudo table, a seeded draw of
  ``train.pseudo_ratio`` x those labelled rows from the pseudo windows of soundscapes outside the fold (the fold
  rule of :mod:`birdclef.data.pseudo`: never the held-out fold's soundscapes), weighted ``train.pseudo_weight``,
  their masks scaled per class by ``train.pseudo_mass_cap``; and a seeded draw of ``train.distill_label_unlabelled``
  x the labelled rows from the unlabelled rows, every label masked (the cosine term alone: BCE divides by the
  mask sum, so they add nothing to it and dilute nothing), so BatchNorm keeps hearing soundscapes.

Every item carries its teacher target: the cosine term covers every row of a batch. Masks are float32 (1 known,
0 unknown, between for a capped class of a pseudo window). The draws are seeded by (seed, epoch), so a resumed
epoch trains on the same rows.
"""

from __future__ import annotations

import numpy as np
import torch
import lightning as L
from torch.utils.data import DataLoader, Dataset

from birdclef.config import Config
from birdclef.data.augment import BackgroundBank
from birdclef.data.dataset import EpochSampler
from birdclef.data.pseudo import pseudo_mass_factors
from birdclef.train.distill_pseudo import LabelledWindows
from birdclef.train.teacher import Teacher
from birdclef.utils.process import worker_dies_with_parent


class DistillRows(Dataset):
    """``(wave (T,), target (K,), mask (K,) float32, weight (), teacher (D,))`` of `items` (module docstring).

    Args:
        teacher: the sources and their cached targets.
        items: (M, 3) int64 (source, row, window), or (M, 2) (source, row) without labelled windows.
        labels: (N, K) float32 targets of the clip cache's recordings (rows of source 0 take their clip's).
        weights: (N,) float32 loss weights of the clips.
        config: run config (seed, background draws).
        bank: the background bank the copies were mixed from.
        train: draw a copy per (epoch, item) from the sampler's key; False: the clean rows.
        seed: base seed of the copy draws.
        windows: the labelled windows items point to (window >= 0), or None.
        pseudo_scale: (K,) factor on the masks of pseudo windows (``train.pseudo_mass_cap``), or None.
    """

    def __init__(self, teacher: Teacher, items: np.ndarray, labels: np.ndarray, weights: np.ndarray, config: Config,
                 bank: BackgroundBank | None, train: bool, seed: int, windows: LabelledWindows | None = None,
                 pseudo_scale: np.ndarray | None = None):
        items = np.asarray(items, np.int64)
        if items.ndim == 2 and items.shape[1] == 2:
            items = np.concatenate([items, np.full((len(items), 1), -1, np.int64)], axis=1)
        self.teacher, self.items = teacher, items.reshape(-1, 3)
        self.labels, self.weights, self.config, self.bank = labels, weights, config, bank
        self.train, self.seed, self.windows = train, seed, windows
        self.pseudo_scale = None if pseudo_scale is None else np.asarray(pseudo_scale, np.float32)
        self._unknown = (np.zeros(labels.shape[1], np.float32), np.zeros(labels.shape[1], np.float32))
        self._known = np.ones(labels.shape[1], np.float32)

    def __len__(self) -> int:
        return len(self.items)

    def labels_of(self, s: int, row: int, w: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(target (K,), float32 mask (K,), weight) of item (s, row, w)."""
        if w >= 0:
            mask = self.windows.mask[w].astype(np.float32)
            if self.pseudo_scale is not None and self.windows.drawn[w]:
                mask = mask * self.pseudo_scale
            return self.windows.targets[w], mask, float(self.windows.weight[w])
        if s == 0:
            clip = int(self.teacher.sources[0].clips[row])
            return self.labels[clip], self._known, float(self.weights[clip])
        return (*self._unknown, 1.0)  # unlabelled: nothing known, trains the cosine term only

    def __getitem__(self, key: int) -> tuple[torch.Tensor, ...]:
        epoch, i = divmod(int(key), len(self.items))
        s, row, w = (int(v) for v in self.items[i])
        source = self.teacher.sources[s]
        copy = 0
        if self.train and source.n_copies:
            copy = int(np.random.default_rng([self.seed, epoch, s, row]).integers(1, source.n_copies + 1))
        wave, target_emb = source.row(row, copy, self.config, self.bank)
        target, mask, weight = self.labels_of(s, row, w)
        return (torch.from_numpy(wave), torch.from_numpy(target), torch.from_numpy(mask),
                torch.tensor(weight, dtype=torch.float32), torch.from_numpy(target_emb))


class DistillData(L.LightningDataModule):
    """Fold `fold`'s distillation and label items, and its validation rows (module docstring).

    Args:
        config: run config (batch size, workers, seed, ``train.distill_epochs``, the pseudo and unlabelled draws).
        teacher: sources and targets (source 0: the clips of the wave cache).
        labels: (N, K) targets of the cached clips; weights: (N,) their loss weights; folds: (N,) their folds.
        fold: the held-out fold.
        bank: background bank of the copies.
        windows: pseudo-labelled and reviewed windows (:mod:`birdclef.train.distill_pseudo`), or None.
    """

    def __init__(self, config: Config, teacher: Teacher, labels: np.ndarray, weights: np.ndarray, folds: np.ndarray,
                 fold: int, bank: BackgroundBank | None, windows: LabelledWindows | None = None):
        super().__init__()
        train = config.train
        self.config, self.teacher, self.bank, self.windows = config, teacher, bank, windows
        self.labels, self.weights = labels, weights
        self.seed, self.batch_size, self.num_workers = train.seed + fold, train.batch_size, train.num_workers
        clips = teacher.sources[0]
        held_out = folds[clips.clips] == fold
        self.label_items = _items(0, np.flatnonzero(~held_out))
        unlabelled = [_items(s, np.arange(len(source))) for s, source in enumerate(teacher.sources) if s]
        self.unlabelled_items = np.concatenate(unlabelled) if unlabelled else np.zeros((0, 3), np.int64)
        self.distill_items = np.concatenate([self.label_items, self.unlabelled_items])
        self.val_items = _items(0, np.flatnonzero(held_out))
        self.review_items = self.pseudo_pool = np.zeros((0, 3), np.int64)
        if windows is not None:
            self.review_items = _window_items(windows, np.flatnonzero(~windows.drawn))
            self.pseudo_pool = _window_items(windows, np.flatnonzero(windows.drawn & (windows.fold != fold)))
        n_labelled = len(self.label_items) + len(self.review_items)
        self.n_pseudo = min(int(round(train.pseudo_ratio * n_labelled)), len(self.pseudo_pool))
        """Pseudo windows drawn per label epoch (train.pseudo_ratio x the labelled rows, at most the fold's pool)."""
        self.n_unlabelled = min(int(round(train.distill_label_unlabelled * n_labelled)), len(self.unlabelled_items))
        """Unlabelled rows drawn per label epoch (train.distill_label_unlabelled x the labelled rows)."""
        self.pseudo_factors = self._mass_factors() if train.pseudo_mass_cap is not None else None
        """(K,) loss factor per class on the pseudo windows (train.pseudo_mass_cap), or None."""

    def _mass_factors(self) -> np.ndarray | None:
        if not len(self.pseudo_pool):
            return None
        clips = self.teacher.sources[0].clips[self.label_items[:, 1]]
        w, rev = self.windows, self.review_items[:, 2]
        pool = self.pseudo_pool[:, 2]
        return pseudo_mass_factors(np.concatenate([self.labels[clips], w.targets[rev] * w.mask[rev]]),
                                   np.concatenate([self.weights[clips], w.weight[rev]]), w.targets[pool],
                                   w.mask[pool], w.weight[pool], self.n_pseudo, self.config.train.pseudo_mass_cap)

    def _loader(self, items: np.ndarray, train: bool, **kwargs) -> DataLoader:
        dataset = DistillRows(self.teacher, items, self.labels, self.weights, self.config, self.bank, train, self.seed,
                              self.windows, self.pseudo_factors)
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          worker_init_fn=worker_dies_with_parent, generator=torch.Generator().manual_seed(self.seed),
                          **kwargs)

    def stage_items(self, epoch: int) -> np.ndarray:
        """The training items of `epoch`: every row in a distillation epoch; after, the labelled rows and the
        epoch's draws of pseudo windows and unlabelled rows (seeded by (seed, epoch))."""
        if epoch < self.config.train.distill_epochs:
            return self.distill_items
        rng = np.random.default_rng([self.seed, epoch])
        drawn = [pool[np.sort(rng.choice(len(pool), n, replace=False))]
                 for pool, n in ((self.pseudo_pool, self.n_pseudo), (self.unlabelled_items, self.n_unlabelled))]
        return np.concatenate([self.label_items, self.review_items, *drawn])

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
    """(n, 3) items (source, row, -1) of rows without a labelled window."""
    rows = np.asarray(rows, np.int64)
    return np.stack([np.full(len(rows), source, np.int64), rows, np.full(len(rows), -1, np.int64)],
                    axis=1).reshape(-1, 3)


def _window_items(windows: LabelledWindows, positions: np.ndarray) -> np.ndarray:
    """(n, 3) items (source, row, window) of the labelled windows at `positions`."""
    return np.stack([windows.source[positions], windows.row[positions], positions.astype(np.int64)],
                    axis=1).reshape(-1, 3)
