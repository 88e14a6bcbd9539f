"""Fold assignment: StratifiedKFold on primary_label (DESIGN §5), written to folds.csv."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from birdclef.errors import ConfigError


def assign_folds(primary_labels: Sequence[str], n_folds: int = 5, seed: int = 42) -> np.ndarray:
    """Fold number (0..n_folds-1) of each row, stratified by primary label, shuffled with `seed`.

    Classes with fewer clips than folds (common in BirdCLEF) are spread over as many folds as they
    have clips; sklearn's warning about them is silenced because it is expected here.

    Returns:
        (N,) int64 fold ids.
    """
    labels = np.asarray(primary_labels)
    if len(labels) < n_folds:
        raise ConfigError(f"data.n_folds={n_folds} needs at least {n_folds} clips, got {len(labels)}")
    largest = int(np.unique(labels, return_counts=True)[1].max())
    if largest < n_folds:
        raise ConfigError(f"data.n_folds={n_folds} is more than the clips of every class (the largest has "
                          f"{largest}); stratified folds need data.n_folds <= {largest}")
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            folds[val_idx] = fold
    return folds
