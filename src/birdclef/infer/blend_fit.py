"""Blend weights fitted on labelled soundscapes, with an honest estimate of what they are worth.

A blend weight picked on the rows it is then scored on flatters the blend: with 30 soundscapes, the best of 21
weights beats the strongest member by a few thousandths by chance alone. :func:`fit_blend` picks the weights on a
grid over the simplex (``step`` apart; every member's weight a multiple of it, summing to 1) by macro ROC-AUC, and
estimates the gain by **cross-validation over files**: the files are dealt into ``folds`` groups (seeded), each
group's rows are blended with the weights picked on the other groups' rows, and the pooled out-of-fold blend is
scored, with a paired bootstrap over files (:mod:`birdclef.eval.intervals`) against the strongest member alone.
The weights it returns are those picked on all rows: use them on a test set the fit never saw.

Members are transformed as the blend will sum them (``how``: :mod:`birdclef.infer.rank`, over all the given rows;
the transform reads no label). Ties between weights go to the grid's first: the first member's largest weight.

Example:
    >>> fit = fit_blend([head, cnn], target, row_ids, classes, how="rank", names=["head.csv", "cnn.csv"])
    >>> fit.weights, fit.cv_score, fit.comparison.difference   # e.g. [0.9, 0.1], 0.976, +0.001 [-0.001, +0.003]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdclef.errors import BirdclefError
from birdclef.eval.intervals import (DEFAULT_RESAMPLES, BootstrapReport, bootstrap_report, file_codes, nan_macro,
                                     weighted_class_aucs)
from birdclef.infer.rank import MEAN, transform_members
from birdclef.utils.io import write_json_atomic

DEFAULT_STEP = 0.05
DEFAULT_FOLDS = 5
MAX_MEMBERS = 4
"""A 4-member grid at step 0.05 holds 1771 weightings; more members would need a search, not a grid."""
MAX_WEIGHTINGS = 5000
"""A finer grid than this is refused: each weighting is scored on every fold (seconds per thousand)."""
_TIE = 1e-12


def weight_grid(members: int, step: float = DEFAULT_STEP) -> np.ndarray:
    """(C, members) float64 weightings, each a multiple of `step` summing to 1; the first member's weight descending.

    Raises:
        BirdclefError: fewer than 2 or more than :data:`MAX_MEMBERS` members, or a step that does not divide 1.
    """
    if not 2 <= members <= MAX_MEMBERS:
        raise BirdclefError(f"fitting blend weights needs 2 to {MAX_MEMBERS} prediction tables, got {members}")
    parts = round(1.0 / step) if step > 0 else 0
    if parts < 1 or abs(parts * step - 1.0) > 1e-9:
        raise BirdclefError(f"--fit-step must divide 1 into whole parts (0.05, 0.1, 0.25), got {step}")
    size = math.comb(parts + members - 1, members - 1)
    if size > MAX_WEIGHTINGS:
        raise BirdclefError(f"--fit-step {step} gives {size} weightings of {members} tables, more than "
                            f"{MAX_WEIGHTINGS}: take a coarser step")

    def compositions(total: int, n: int):
        if n == 1:
            yield (total,)
            return
        for first in range(total, -1, -1):
            for rest in compositions(total - first, n - 1):
                yield (first, *rest)

    return np.array(list(compositions(parts, members)), dtype=np.float64) / parts


def deal_files(n_files: int, folds: int, seed: int = 0) -> np.ndarray:
    """(n_files,) fold index of each file: the files shuffled (numpy's default_rng(seed)) and dealt round-robin."""
    order = np.random.default_rng(seed).permutation(n_files)
    fold = np.empty(n_files, dtype=np.int64)
    fold[order] = np.arange(n_files) % folds
    return fold


def _scores(target: np.ndarray, blended: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) macro ROC-AUC of `blended` (N, K) under B row weightings (0/1 masks), each over its scorable classes."""
    return nan_macro(weighted_class_aucs(target, blended, weights))


def _pick(scores: np.ndarray, rows: str) -> int:
    """Index of the best score; a tie (within rounding) goes to the first.

    Raises:
        BirdclefError: no weighting scores (no class has a positive and a negative among `rows`).
    """
    if np.isnan(scores).all():
        raise BirdclefError(f"no class has both a positive and a negative window in {rows}: nothing to fit on")
    return int(np.flatnonzero(scores >= np.nanmax(scores) - _TIE)[0])


@dataclass(frozen=True)
class BlendFit:
    """Weights picked on all rows, and the file-grouped cross-validated score of picking them that way."""

    names: list[str]
    how: str
    step: float
    weights: np.ndarray
    """(members,) picked on all rows: what to blend a test set with."""
    fit_score: float
    """The blend's macro ROC-AUC on the rows its weights were picked on (optimistic)."""
    member_scores: list[float]
    cv_score: float
    """The pooled out-of-fold blend's macro ROC-AUC: each fold's files blended with weights picked on the others."""
    fold_weights: np.ndarray
    """(folds, members) the weights each fold's rows were blended with."""
    n_files: int
    comparison: BootstrapReport
    """The out-of-fold blend's interval, and its paired difference to the strongest member alone."""

    def lines(self) -> list[str]:
        """Human-readable lines for ``birdclef blend --fit``."""
        folds = len(self.fold_weights)
        width = max(len(n) for n in self.names)
        out = [f"blend weights fitted on {self.n_files} files ({self.how} blend, grid step {self.step:g}):"]
        out += [f"  {name:{width}}  weight {w:.2f}   alone {s:.4f}"
                for name, w, s in zip(self.names, self.weights, self.member_scores)]
        out.append(f"  blend on the rows it was fitted on: {self.fit_score:.4f} (optimistic)")
        per_fold = "; ".join("/".join(f"{w:.2f}" for w in row) for row in self.fold_weights)
        report, versus = self.comparison, self.comparison.comparison
        out.append(f"cross-validated over files ({folds} folds; weights per fold {per_fold}):")
        out.append(f"  out-of-fold blend {report.macro.format(4)} ({report.macro.level:.0%} bootstrap interval, "
                   f"{report.macro.n_resamples} resamples of the files)")
        out += [f"    {name:12} {iv.format(4)}" for name, iv in report.groups.items()]
        out.append(f"  minus {versus.other}: {versus.difference.format(4, signed=True)} (paired); "
                   f"<= 0 in {versus.share_not_better:.1%} of the resamples")
        out += [f"    {name:12} {iv.format(4, signed=True)}" for name, iv in versus.groups.items()]
        return out

    def to_dict(self) -> dict:
        return {"names": self.names, "how": self.how, "step": self.step, "weights": self.weights.tolist(),
                "fit_score": self.fit_score, "member_scores": self.member_scores, "cv_score": self.cv_score,
                "fold_weights": self.fold_weights.tolist(), "n_files": self.n_files,
                "cross_validated": self.comparison.to_dict()}

    def write(self, path: Path) -> Path:
        """The fit as JSON at `path`, atomically."""
        return write_json_atomic(self.to_dict(), path)


def fit_blend(members: Sequence[np.ndarray], target: np.ndarray, row_ids: Sequence[str], classes: Sequence[str],
              how: str = MEAN, step: float = DEFAULT_STEP, folds: int = DEFAULT_FOLDS, seed: int = 0,
              names: Sequence[str] | None = None, groups: dict[str, str] | None = None,
              n_resamples: int = DEFAULT_RESAMPLES) -> BlendFit:
    """Pick blend weights on labelled rows and cross-validate that choice over files (module docstring).

    Args:
        members: (N, K) scores of each prediction table, rows and classes aligned with `target`, finite.
        target: (N, K) 0/1 labels.
        row_ids: (N,) ``<soundscape_stem>_<end_s>``: rows of one stem stay in one fold.
        classes: the K class names (for per-group intervals).
        how: the blend (``mean``, ``rank``, ``quantile``).
        step: the grid's spacing; 1 / step must be whole.
        folds: file groups of the cross-validation, at most the number of files.
        seed: deals the files into folds and draws the bootstrap.
        names: labels of the members in the report (default ``member 1`` ...).
        groups: class -> taxon group, for per-group intervals.

    Raises:
        BirdclefError: fewer than 2 or more than 4 members, a bad step, fewer than 2 files, or `folds` outside
            2 .. files. ValueError: a malformed row_id.
    """
    grid = weight_grid(len(members), step)
    names = list(names) if names is not None else [f"member {i + 1}" for i in range(len(members))]
    target = np.asarray(target)
    codes, stems = file_codes(row_ids)
    if len(stems) < 2:
        raise BirdclefError(f"cross-validating blend weights needs at least 2 soundscape files, got {len(stems)}")
    if not 2 <= folds <= len(stems):
        raise BirdclefError(f"--fit-folds must be 2 to {len(stems)} (the files), got {folds}")
    row_fold = deal_files(len(stems), folds, seed)[codes]  # (N,)
    masks = np.vstack([np.ones(len(codes))] + [(row_fold != f).astype(np.float64) for f in range(folds)])
    transformed = np.stack(transform_members([np.asarray(m, dtype=np.float64) for m in members], how))  # (M, N, K)
    table = np.stack([_scores(target, np.tensordot(w, transformed, axes=1), masks) for w in grid])  # (C, 1 + folds)
    best = _pick(table[:, 0], "the solution")
    fold_picks = [_pick(table[:, 1 + f], f"the files outside cross-validation fold {f}") for f in range(folds)]
    out_of_fold = np.empty(transformed.shape[1:])
    for f, pick in enumerate(fold_picks):
        rows = row_fold == f
        out_of_fold[rows] = np.tensordot(grid[pick], transformed[:, rows], axes=1)
    everything = np.ones((1, len(codes)))
    member_scores = [float(_scores(target, m, everything)[0]) for m in transformed]
    strongest = int(np.argmax(member_scores))
    report = bootstrap_report(target, out_of_fold, row_ids, classes, n_resamples, seed, groups,
                              other=transformed[strongest], other_name=f"{names[strongest]} alone")
    return BlendFit(names, how, step, grid[best], float(table[best, 0]), member_scores,
                    float(_scores(target, out_of_fold, everything)[0]), grid[fold_picks], len(stems), report)
