"""Ensembling: soft voting of folds and a weighted blend of models' prediction tables (DESIGN §6).

A prediction table is ``row_id`` plus one probability column per class. Tables from different
models are aligned on ``row_id`` (any row order) and on class names (any column order) before
they are averaged; anything that does not line up is a :class:`SubmissionError` naming the input.
A blend is the weighted mean of the probabilities, or of their per-class ranks or quantiles over
all rows (``how``: :mod:`birdclef.infer.rank`).

Example:
    >>> blended = blend([effnet_df, nfnet_df], weights=[0.75, 0.25], names=["effnet", "nfnet"])
    >>> blend_csvs([Path("a.csv"), Path("b.csv")], [3, 1], Path("submission.csv"))  # = 0.75 / 0.25
    >>> blend_csvs([Path("own.csv"), Path("perch.csv")], [0.8, 0.2], Path("sub.csv"), how="rank")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.config import InferConfig
from birdclef.errors import SubmissionError
from birdclef.infer.postprocess import apply_steps
from birdclef.infer.rank import MEAN, check_blend, transform_members
from birdclef.utils.io import read_csv_checked, write_csv_atomic

_EXAMPLES = 3
"""How many offending row_ids / columns an error message shows."""


def average_folds(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Soft voting: the element-wise mean of the folds' probability arrays.

    Args:
        probs: one array per fold, all of the same shape, e.g. (N, K) windows x classes.

    Returns:
        The mean over folds, of that same shape.

    Raises:
        ValueError: `probs` is empty or the shapes differ (the message names the fold).
    """
    arrays = [np.asarray(fold_probs) for fold_probs in probs]
    if not arrays:
        raise ValueError("average_folds needs at least one fold's probabilities, got none")
    for index, array in enumerate(arrays[1:], start=1):
        if array.shape != arrays[0].shape:
            raise ValueError(f"fold {index} probabilities have shape {array.shape}, "
                             f"but fold 0 has {arrays[0].shape}")
    return np.mean(np.stack(arrays), axis=0)


def _examples(values: set | list) -> str:
    shown = sorted(values, key=str)[:_EXAMPLES]
    return f"{len(values)} (e.g. {shown})"


def _check_own_columns(frame: pd.DataFrame, name: str) -> None:
    """Checks of one table on its own: a row_id column, unique column names and row_ids."""
    if "row_id" not in frame.columns:
        raise SubmissionError(f"{name}: no 'row_id' column; columns start {list(frame.columns)[:5]}")
    duplicated_cols = frame.columns[frame.columns.duplicated()]
    if len(duplicated_cols):
        raise SubmissionError(f"{name}: duplicated columns {_examples(list(duplicated_cols))}")
    duplicated_ids = frame["row_id"][frame["row_id"].duplicated()]
    if len(duplicated_ids):
        raise SubmissionError(f"{name}: duplicated row_ids {_examples(set(duplicated_ids))}")


def _check_against(frame: pd.DataFrame, name: str, ref: pd.DataFrame, ref_name: str, partial: bool = False) -> None:
    """Raise if `frame`'s row_id set differs from the reference table's, or (unless `partial`) its class columns."""
    cols, ref_cols = set(frame.columns), set(ref.columns)
    if cols != ref_cols and not partial:
        raise SubmissionError(f"{name}: class columns differ from {ref_name}: "
                              f"missing {_examples(ref_cols - cols)}, extra {_examples(cols - ref_cols)} "
                              "(a CSV that scores a subset of the classes, a taxon specialist's: blend with --partial)")
    ids, ref_ids = set(frame["row_id"]), set(ref["row_id"])
    if ids != ref_ids:
        raise SubmissionError(f"{name}: row_ids differ from {ref_name}: "
                              f"missing {_examples(ref_ids - ids)}, extra {_examples(ids - ref_ids)}")


def _resolve_names(count: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"prediction table {index}" for index in range(count)]
    if len(names) != count:
        raise SubmissionError(f"got {len(names)} names for {count} prediction tables")
    return [str(name) for name in names]


def align_frames(frames: Sequence[pd.DataFrame], names: Sequence[str] | None = None,
                 partial: bool = False) -> list[pd.DataFrame]:
    """Check that prediction tables describe the same rows and classes, and line them up.

    Args:
        frames: tables with a ``row_id`` column and one column per class.
        names: one label per table for error messages (model names, file paths); defaults to
            ``"prediction table <i>"``.
        partial: tables may have different class columns (a taxon specialist's scores a subset): every
            table gets the union of the columns (the first table's order, then the others' new ones in
            their order), NaN where it has no column.

    Returns:
        New tables with the first table's column order and row order and a fresh RangeIndex, so
        their rows and columns correspond one to one.

    Raises:
        SubmissionError: no tables; a table lacks ``row_id``, repeats a column or a row_id; its
            class columns (unless `partial`) or row_id set differ from the first's (missing / extra ones
            are counted and a few shown); or `names` has the wrong length.
    """
    if not frames:
        raise SubmissionError("no prediction tables to align")
    labels = _resolve_names(len(frames), names)
    for frame, label in zip(frames, labels):
        _check_own_columns(frame, label)
    ref = frames[0]
    for frame, label in zip(frames[1:], labels[1:]):
        _check_against(frame, label, ref, labels[0], partial)
    columns = list(dict.fromkeys(col for frame in frames for col in frame.columns))  # the union, first seen first
    row_ids = pd.Index(ref["row_id"])
    return [frame.set_index("row_id").reindex(row_ids).reset_index().reindex(columns=columns) for frame in frames]


def normalise_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """Blend weights scaled to sum 1: 0.75 / 0.25 stays 0.75 / 0.25, 3 / 1 becomes 0.75 / 0.25.

    Args:
        weights: one non-negative weight per table, or None for equal weights.
        count: number of tables.

    Returns:
        (count,) float64 weights summing to 1.

    Raises:
        SubmissionError: wrong number of weights, a negative or non-finite one, or a zero sum.
    """
    if weights is None:
        return np.full(count, 1.0 / count)
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (count,):
        raise SubmissionError(f"got {array.size} blend weights for {count} prediction tables")
    if not np.isfinite(array).all() or (array < 0).any():
        raise SubmissionError(f"blend weights must be finite and non-negative, got {array.tolist()}")
    if array.sum() <= 0:
        raise SubmissionError(f"blend weights must have a positive sum, got {array.tolist()}")
    return array / array.sum()


def _check_finite(values: np.ndarray, row_ids: pd.Series, class_cols: list, label: str) -> None:
    """Raise naming the first NaN / infinite cell: a blend would spread it silently."""
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise SubmissionError(f"{label}: {int(bad.sum())} NaN or infinite probabilities, e.g. column "
                              f"{class_cols[col]!r} at row_id {row_ids.iloc[row]!r}")


def blend(frames: Sequence[pd.DataFrame], weights: Sequence[float] | None = None,
          names: Sequence[str] | None = None, how: str = MEAN, partial: bool = False) -> pd.DataFrame:
    """Weighted blend of prediction tables, aligned on ``row_id`` and on class names.

    Weights are normalised to sum 1 (see :func:`normalise_weights`), so ``[3, 1]`` and
    ``[0.75, 0.25]`` give the same blend; None means equal weights.

    Args:
        frames: prediction tables of the same rows and classes, in any row / column order.
        weights: one non-negative weight per table.
        names: labels for error messages (see :func:`align_frames`).
        how: ``mean`` sums the probabilities; ``rank`` / ``quantile`` first replace each table's
            column of each class by its rank / quantile over all the tables' rows (:mod:`birdclef.infer.rank`).
        partial: tables may score different classes (a full model's CSV and a taxon specialist's): each class
            is the blend of the tables that have its column, their weights renormalised over them
            (:func:`blend_ignoring_nan`, as ``predict`` blends runs of different class lists); a class only
            weight-0 tables have gets their plain mean.

    Returns:
        Table with the first table's row order and columns (``row_id`` first if it was first; with `partial`,
        then the other tables' new columns), class columns float64, and a RangeIndex.

    Raises:
        SubmissionError: the tables do not line up (see :func:`align_frames`), a class column is
            not numeric or holds NaN / infinite values (in every blend: a CSV member must score
            every cell; ``predict --unknown-fill`` writes one), or the weights are invalid.
        BirdclefError: an unknown `how`.
    """
    if not frames:
        raise SubmissionError("no prediction tables to blend")
    check_blend(how)
    scale = normalise_weights(weights, len(frames))
    aligned = align_frames(frames, names, partial)
    labels = _resolve_names(len(frames), names)
    class_cols = [col for col in aligned[0].columns if col != "row_id"]
    members = []
    for frame, own, label in zip(aligned, frames, labels):
        has = np.array([col in own.columns for col in class_cols])  # (K,): all True without `partial`
        non_numeric = [col for col, h in zip(class_cols, has) if h and not pd.api.types.is_numeric_dtype(frame[col])]
        if non_numeric:
            raise SubmissionError(f"{label}: non-numeric class columns {_examples(non_numeric)}")
        values = frame[class_cols].to_numpy(dtype=np.float64)  # (N, K), NaN in the columns it lacks
        _check_finite(values[:, has], frame["row_id"], [c for c, h in zip(class_cols, has) if h], label)
        members.append(values)
    out = aligned[0].copy()
    out[class_cols] = blend_ignoring_nan(transform_members(members, how), scale)  # plain sum(w * p) without NaN
    return out


def read_predictions(path: Path) -> pd.DataFrame:
    """Read one prediction CSV, turning a missing or unreadable file into a SubmissionError naming it."""
    return read_csv_checked(path, "prediction file", SubmissionError, "cannot be read as a CSV prediction table",
                            dtype={"row_id": str})


def blend_csvs(paths: Sequence[Path], weights: Sequence[float] | None, out: Path, how: str = MEAN,
               partial: bool = False) -> pd.DataFrame:
    """Blend prediction CSVs and write the result to `out` atomically.

    Args:
        paths: prediction CSVs (``row_id`` plus class columns); error messages name them.
        weights: one non-negative weight per file, normalised to sum 1; None for equal weights.
        out: where the blended CSV goes; parent folders are created.
        how: ``mean``, ``rank`` or ``quantile`` (see :func:`blend`; ranks are taken over all rows of the files).
        partial: files may score different classes (see :func:`blend`).

    Returns:
        The blended table, as written (first file's row and column order).

    Raises:
        SubmissionError: a file is missing or unreadable, the files do not line up, or the
            weights are invalid. `out` is not touched then.
    """
    check_blend(how)
    frames = [read_predictions(Path(path)) for path in paths]
    blended = blend(frames, weights, names=[str(path) for path in paths], how=how, partial=partial)
    write_csv_atomic(blended, out)
    return blended


def combine_runs(per_run: Sequence[np.ndarray], weights: Sequence[float] | None, cfg: InferConfig) -> np.ndarray:
    """One file's final (W, K) probabilities from each run's fold-averaged (W, K) probabilities.

    ``cfg.postprocess_stage == "per_model"`` post-processes each run before the weighted blend (the
    reference); ``"blend"`` post-processes the blend once.
    """
    w = normalise_weights(weights, len(per_run))
    if cfg.postprocess_stage == "per_model":
        per_run = [apply_steps(p, cfg) for p in per_run]
    blended = blend_ignoring_nan(per_run, w)
    return apply_steps(blended, cfg) if cfg.postprocess_stage == "blend" else blended


def blend_runs(per_run: Sequence[np.ndarray], weights: Sequence[float] | None, how: str = MEAN) -> np.ndarray:
    """Weighted blend of runs' (N, K) rows after the transform `how` (:mod:`birdclef.infer.rank`), NaN ignored.

    ``mean`` is :func:`blend_ignoring_nan` of the probabilities; ``rank`` and ``quantile`` rank each run's
    column of each class over all N rows first, so N must be every row of the prediction (all its files).
    """
    w = normalise_weights(weights, len(per_run))
    return blend_ignoring_nan(transform_members(per_run, how), w)


def blend_ignoring_nan(per_run: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Weighted mean of (W, K) arrays per cell over the runs that score it (not NaN), weights renormalised.

    A class only some runs score (BirdNET's unknown classes are NaN) gets those runs' blend. Runs of
    weight 0 are fallbacks: a cell that no weighted run scores takes their plain mean (``--weights 0 1``
    with ``--birdnet``: BirdNET where it knows the class, the run elsewhere); a cell no run scores stays
    NaN. Without NaN this is the plain ``sum(w * p)``.
    """
    if not any(np.isnan(p).any() for p in per_run):
        return sum(wk * p for wk, p in zip(weights, per_run))
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in per_run])  # (R, W, K)
    scored = ~np.isnan(stack)
    w = np.asarray(weights, dtype=np.float64)[:, None, None] * scored
    total = w.sum(axis=0)
    values = np.where(scored, stack, 0.0)
    summed = (values * w).sum(axis=0)
    count = scored.sum(axis=0)
    fallback = np.where(count > 0, values.sum(axis=0) / np.maximum(count, 1), np.nan)
    return np.where(total > 0, summed / np.where(total > 0, total, 1.0), fallback)
