"""Rank and quantile blends: each member's scores of a class put on one scale before the weighted sum.

Members of a blend score on scales of their own (a trained head's 0.9 is BirdNET's 0.3), and macro ROC-AUC only
sees each class's order of rows. The BirdCLEF+ 2026 winner therefore blended after a per-class rank transform
(0.8 own models + 0.2 native Perch). :data:`BLENDS` names the three ways a blend combines its members:

- ``mean``: the weighted mean of the probabilities (the default; each file can be blended on its own).
- ``rank``: each member's column of each class becomes ``(rank - 0.5) / n`` over the column's ``n`` scored rows
  (:func:`scipy.stats.rankdata`, ties averaged): the Hazen plotting position, in (0, 1) and symmetric, so a
  constant column (an ``--unknown-fill``) becomes 0.5 everywhere, the value of a tie, whatever its constant.
- ``quantile``: each member's column is quantile-normalised onto the pooled scores of that class of all members
  that score it (Bolstad et al. 2003): the row of rank ``r`` gets the pooled sample's ``(r - 0.5) / n`` quantile
  (numpy's ``hazen`` method, which gives a column back unchanged when every member equals it). The order within
  a column is the rank transform's, but the spacing is the pooled probabilities': a rare class's many
  near-silent rows stay near 0 and its few loud rows keep their lead, where ``rank`` spreads all rows evenly over
  (0, 1), so that a member's shuffling of the silent rows moves the blend as much as its order of the loud ones.
  The result reads as a probability, on the members' common scale.

Both rank over *every* row given: over all files of a prediction, never one file at a time (a file's 12 rows
ranked alone would make every file's loudest row 1). NaN cells (a zero-shot model's unknown classes) take no
part: they stay NaN, ``n`` counts a column's other cells, and the blend renormalises the weights over the members
that score a cell (:func:`~birdclef.infer.ensemble.blend_ignoring_nan`).

Example:
    >>> ranked = rank_columns(np.array([[0.1, 0.7], [0.1, np.nan], [0.9, 0.2]]))
    >>> ranked   # [[0.333, 0.75], [0.333, nan], [0.833, 0.25]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from birdclef.errors import BirdclefError

MEAN = "mean"
BLENDS: tuple[str, ...] = (MEAN, "rank", "quantile")
"""How a blend combines its members (module docstring); ``mean`` is the default."""


def check_blend(how: str) -> str:
    """`how` if it names a blend of :data:`BLENDS`.

    Raises:
        BirdclefError: an unknown name (the message lists the known ones).
    """
    if how not in BLENDS:
        raise BirdclefError(f"unknown blend {how!r}; choose from {', '.join(BLENDS)}")
    return how


def rank_columns(values: np.ndarray) -> np.ndarray:
    """Each column's ``(rank - 0.5) / n`` over its non-NaN cells, ties averaged (module docstring).

    Args:
        values: (N, K) scores of one member, N rows (all files) by K classes; NaN where it does not score.

    Returns:
        (N, K) float64 in (0, 1), NaN where `values` is NaN.
    """
    from scipy.stats import rankdata  # scipy (a scikit-learn dependency) costs a CLI start nothing until used

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"rank_columns expects (rows, classes) scores, got shape {values.shape}")
    ranks = rankdata(values, axis=0, nan_policy="omit")  # (N, K); NaN stays NaN
    scored = (~np.isnan(values)).sum(axis=0)  # (K,)
    return (ranks - 0.5) / np.maximum(scored, 1)


def quantile_columns(members: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each member's columns quantile-normalised onto the pooled scores of that class (module docstring).

    Args:
        members: one (N, K) array per member, the same rows and classes; NaN where a member does not score.

    Returns:
        One (N, K) float64 array per member, NaN where its input is NaN.
    """
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in members])  # (M, N, K)
    quantiles = np.stack([rank_columns(m) for m in stack])  # (M, N, K): the (r - 0.5) / n of each cell
    out = np.full_like(stack, np.nan)
    for k in range(stack.shape[2]):
        column = stack[:, :, k]  # (M, N)
        scored = ~np.isnan(column)
        if scored.any():
            out[:, :, k][scored] = np.quantile(column[scored], quantiles[:, :, k][scored], method="hazen")
    return list(out)


def transform_members(members: Sequence[np.ndarray], how: str) -> list[np.ndarray]:
    """The members' (N, K) scores as the blend `how` sums them: unchanged for ``mean``, else ranked over all N rows.

    Raises:
        BirdclefError: an unknown `how`.
    """
    check_blend(how)
    if how == "rank":
        return [rank_columns(m) for m in members]
    if how == "quantile":
        return quantile_columns(members)
    return list(members)
