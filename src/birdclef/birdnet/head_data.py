"""What both halves of embedding-head training share (:mod:`~birdclef.birdnet.head_train` for the clips,
:mod:`~birdclef.birdnet.head_pseudo` for pseudo-labelled soundscape windows): 5 s rows embedded in batches, and
the examples table the head fits on."""

from __future__ import annotations

import numpy as np
import torch

from birdclef.birdnet.head_inputs import HeadInputs
from birdclef.data.pseudo import pseudo_mass_factors

ROW_BATCH = 64
"""Rows embedded per call (bounds memory: 64 x 5 s at 48 kHz)."""



def embed_rows(inputs: HeadInputs, waves: list[np.ndarray]) -> np.ndarray:
    """(len(waves), C, D) float16 embeddings of 5 s rows at ``inputs.sample_rate`` (:meth:`HeadInputs.embed`)."""
    return inputs.embed(waves)


class HeadData:
    """Training examples (clean rows + mixed copies) with their row, weight and fold; validation = clean rows."""

    def __init__(self, copies: list[tuple[np.ndarray, np.ndarray]], clip_of_row: np.ndarray, targets: np.ndarray,
                 weights: np.ndarray, folds: np.ndarray):
        n_rows = len(clip_of_row)
        multiplicity = np.ones(n_rows, np.float32) + len(copies) - 1
        for rows, _ in copies[1:]:
            multiplicity[rows] -= 1.0  # a copy that left a row clean counts as weight of the clean row
        self.rows = np.concatenate([np.arange(n_rows)] + [rows for rows, _ in copies[1:]])
        self.emb = torch.from_numpy(np.concatenate([emb for _, emb in copies]).astype(np.float32))
        self.weight = torch.from_numpy(weights[clip_of_row[self.rows]] * np.concatenate(
            [multiplicity, np.ones(len(self.rows) - n_rows, np.float32)]))
        self.target = torch.from_numpy(targets[clip_of_row[self.rows]])
        self.fold = folds[clip_of_row[self.rows]]
        self.clean = np.arange(len(self.rows)) < n_rows
        self.pseudo = np.zeros(len(self.rows), bool)
        self.mask: torch.Tensor | None = None
        """(N, K) bool, True where the target is known; None without pseudo rows (all known)."""

    def keep(self, examples: np.ndarray) -> None:
        """Keep only the examples where `examples` (N,) bool is True (a specialist's dropped clips go); before
        :meth:`add_pseudo`."""
        if examples.all():
            return
        where = np.flatnonzero(examples)
        self.rows, self.emb, self.weight = self.rows[where], self.emb[where], self.weight[where]
        self.target, self.fold, self.clean = self.target[where], self.fold[where], self.clean[where]
        self.pseudo = self.pseudo[where]
        if self.mask is not None:
            self.mask = self.mask[where]

    def add_pseudo(self, emb: np.ndarray, targets: np.ndarray, mask: np.ndarray, folds: np.ndarray,
                   weight: float) -> None:
        """Append pseudo-labelled windows (row -1): soft `targets`, `mask` (False: unknown), soundscape `folds`."""
        n, known = len(emb), self.mask if self.mask is not None else torch.ones(self.target.shape, dtype=torch.bool)
        self.emb = torch.cat([self.emb, torch.from_numpy(emb.astype(np.float32))])
        self.target = torch.cat([self.target, torch.from_numpy(targets.astype(np.float32))])
        self.mask = torch.cat([known, torch.from_numpy(mask.astype(bool))])
        self.weight = torch.cat([self.weight, torch.full((n,), float(weight))])
        self.rows = np.concatenate([self.rows, np.full(n, -1, np.int64)])
        self.fold = np.concatenate([self.fold, np.asarray(folds, self.fold.dtype)])
        self.clean = np.concatenate([self.clean, np.zeros(n, bool)])
        self.pseudo = np.concatenate([self.pseudo, np.ones(n, bool)])

    def fold_mask(self, fold: int, ratio: float, cap: float | None) -> tuple[torch.Tensor | None, np.ndarray | None]:
        """(mask of every example for fold `fold`, (K,) factors) under ``train.pseudo_mass_cap`` `cap`
        (:func:`~birdclef.data.pseudo.pseudo_mass_factors`: the pseudo rows' masks scaled per class, float 0-1);
        (the bool mask, None) without a cap or pseudo rows."""
        pool = np.flatnonzero(self.pseudo & (self.fold != fold))
        if cap is None or self.mask is None or len(pool) == 0:
            return self.mask, None
        fit = self.split(fold)[0]
        n = min(len(pool), int(round(ratio * np.count_nonzero(self.clean[fit]))))
        mask = self.mask.numpy()
        factors = pseudo_mass_factors(self.target.numpy()[fit] * mask[fit], self.weight.numpy()[fit],
                                      self.target.numpy()[pool], mask[pool], self.weight.numpy()[pool], n, cap)
        scaled = self.mask.float()
        scaled[torch.from_numpy(self.pseudo)] *= torch.from_numpy(factors)
        return scaled, factors

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(training clip example positions, validation example positions: the fold's clean rows)."""
        return np.flatnonzero((self.fold != fold) & ~self.pseudo), np.flatnonzero((self.fold == fold) & self.clean)

    def epoch_examples(self, fold: int, epoch: int, seed: int, ratio: float) -> np.ndarray:
        """Fold `fold`'s training positions in `epoch`: its clip examples plus a seeded draw of ``ratio`` x its
        clean clip rows from the pseudo rows of the other soundscape folds (no repeats; capped by their number)."""
        fit = self.split(fold)[0]
        pool = np.flatnonzero(self.pseudo & (self.fold != fold))
        n = min(len(pool), int(round(ratio * np.count_nonzero(self.clean[fit]))))
        if n == 0:
            return fit
        return np.concatenate([fit, np.random.default_rng([seed, fold, epoch]).permutation(pool)[:n]])
