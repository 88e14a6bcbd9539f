"""Per-file post-processing of soundscape predictions (DESIGN §6), registered by name.

Both steps work on one file's windows at a time, ``probs`` of shape (W, K): W 5 s windows in
time order, K classes.

- ``smooth``: temporal smoothing of each class over neighbouring windows; a call that spans a
  window boundary lifts its neighbours, an isolated one-window spike is damped.
- ``power_adjust``: classes ranked by their max over the file keep their scores at the top and
  are pushed down (``p ** exponent`` with ``p`` in [0, 1]) further down the ranking, so species
  unlikely to be anywhere in the file stop competing with the likely ones.

``postprocess`` applies the steps enabled in an :class:`InferConfig` to a whole prediction table,
file by file, and keeps the table's row order.

Example:
    >>> cfg = InferConfig(power_adjust=False)
    >>> smoothed = postprocess(predictions, cfg)       # same rows, same columns
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from birdclef.audio.segments import parse_row_id
from birdclef.config import InferConfig
from birdclef.errors import SubmissionError
from birdclef.registry import Registry

POSTPROCESSORS: Registry[np.ndarray] = Registry("post-processor")
"""Steps ``(probs (W, K), cfg) -> probs (W, K)`` applied to one file's windows."""

STEP_ORDER: tuple[str, ...] = ("smoothing", "power_adjust")
"""The order in which enabled steps run; each is switched on by the InferConfig field of its name."""



def _check_probs(probs: np.ndarray, what: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"{what} expects one file's probabilities of shape (windows, classes), "
                         f"got shape {probs.shape}")
    return probs


def smooth(probs: np.ndarray, middle: Sequence[float] = (0.2, 0.6, 0.2),
           edge: Sequence[float] = (0.9, 0.1)) -> np.ndarray:
    """Temporal smoothing of one file's windows, independently for each class.

    Args:
        probs: (W, K) probabilities of one file's W windows, in time order.
        middle: weights of (previous, own, next) window for windows 1..W-2.
        edge: weights of (own, neighbour) for the first and the last window.

    Returns:
        (W, K) float64 smoothed probabilities; a copy, `probs` is not modified. A single window
        (W == 1) is returned unchanged; with W == 2 both windows are edges.

    Raises:
        ValueError: `probs` is not 2-D, or the weights are not of length 3 and 2.
    """
    probs = _check_probs(probs, "smooth")
    if len(middle) != 3 or len(edge) != 2:
        raise ValueError(f"smooth needs 3 middle and 2 edge weights, got {tuple(middle)} and {tuple(edge)}")
    out = probs.copy()
    if probs.shape[0] < 2:
        return out
    prev_w, own_w, next_w = middle
    out[1:-1] = prev_w * probs[:-2] + own_w * probs[1:-1] + next_w * probs[2:]
    out[0] = edge[0] * probs[0] + edge[1] * probs[1]
    out[-1] = edge[0] * probs[-1] + edge[1] * probs[-2]
    return out


def _check_tiers(keep_top: int, tiers: Sequence[tuple[int, float]]) -> None:
    if keep_top < 0:
        raise ValueError(f"power_adjust keep_top must be >= 0, got {keep_top}")
    limits = [int(limit) for limit, _ in tiers]
    if any(limit <= keep_top for limit in limits):
        raise ValueError(f"power_adjust tiers must end above keep_top={keep_top}, got limits {limits}")
    if any(b <= a for a, b in zip(limits, limits[1:])):
        raise ValueError(f"power_adjust tier limits must be strictly ascending, got {limits}")


def class_ranks(probs: np.ndarray) -> np.ndarray:
    """Rank of each class by its max over the windows (1 = highest); ties go to the lower class index.

    Args:
        probs: (W, K) probabilities of one file.

    Returns:
        (K,) int64 ranks, a permutation of 1..K.
    """
    peaks = _check_probs(probs, "class_ranks").max(axis=0)  # (K,)
    order = np.argsort(-peaks, kind="stable")  # stable: equal peaks keep class order
    ranks = np.empty(peaks.shape[0], dtype=np.int64)
    ranks[order] = np.arange(1, peaks.shape[0] + 1)
    return ranks


def power_adjust(probs: np.ndarray, keep_top: int = 30,
                 tiers: Sequence[tuple[int, float]] = ((100, 2.0), (150, 3.0)),
                 rest: float = 4.0) -> np.ndarray:
    """Raise each class's scores to a power that grows with its rank in the file.

    Classes are ranked by their max over the file's windows (see :func:`class_ranks`). Ranks
    1..keep_top are unchanged; a tier ``(last_rank, exponent)`` covers the ranks after the
    previous tier up to ``last_rank``; ranks after the last tier get ``rest``. With the defaults:
    31-100 -> p**2, 101-150 -> p**3, 151+ -> p**4. Scores in [0, 1] can only go down.

    Args:
        probs: (W, K) probabilities of one file's windows.
        keep_top: number of top-ranked classes left unchanged.
        tiers: (last rank, exponent) pairs, last ranks strictly ascending and above `keep_top`.
        rest: exponent for the ranks after the last tier.

    Returns:
        (W, K) float64 adjusted probabilities; a copy.

    Raises:
        ValueError: `probs` is not 2-D, `keep_top` is negative, or the tiers are not ascending
            and above `keep_top`.
    """
    _check_tiers(keep_top, tiers)
    probs = _check_probs(probs, "power_adjust")
    limits = np.array([keep_top, *(int(limit) for limit, _ in tiers)])
    exponents = np.array([1.0, *(float(exp) for _, exp in tiers), float(rest)])
    # searchsorted 'left': rank r falls in the first band whose last rank is >= r.
    class_exponent = exponents[np.searchsorted(limits, class_ranks(probs), side="left")]  # (K,)
    return probs ** class_exponent[None, :]


@POSTPROCESSORS.register("smoothing")
def smoothing_step(probs: np.ndarray, cfg: InferConfig) -> np.ndarray:
    """:func:`smooth` with the weights of `cfg` (``smoothing_middle``, ``smoothing_edge``)."""
    return smooth(probs, cfg.smoothing_middle, cfg.smoothing_edge)


@POSTPROCESSORS.register("power_adjust")
def power_adjust_step(probs: np.ndarray, cfg: InferConfig) -> np.ndarray:
    """:func:`power_adjust` with the tiers of `cfg` (``power_keep_top``, ``power_tiers``, ``power_rest``)."""
    return power_adjust(probs, cfg.power_keep_top, cfg.power_tiers, cfg.power_rest)


def enabled_steps(cfg: InferConfig) -> list[str]:
    """Names of the steps `cfg` switches on, in the order they run (smoothing, then power_adjust)."""
    return [name for name in STEP_ORDER if getattr(cfg, name)]


def _file_groups(row_ids: pd.Series) -> list[np.ndarray]:
    """Positions of each file's rows, every group sorted by end second."""
    parsed = [parse_row_id(row_id) for row_id in row_ids]
    codes, _ = pd.factorize(pd.Series([stem for stem, _ in parsed], dtype=object))
    ends = np.array([end for _, end in parsed], dtype=np.int64)
    order = np.lexsort((ends, codes))  # by file, then by end second within a file
    starts = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, starts)


def postprocess(df: pd.DataFrame, cfg: InferConfig) -> pd.DataFrame:
    """Apply the enabled post-processing steps to each file of a prediction table.

    Rows are grouped by soundscape (the stem of ``row_id``) and ordered by end second
    (numerically, so ``_5 < _10 < _60``) before the steps see them.

    Args:
        df: prediction table, ``row_id`` plus one probability column per class.
        cfg: which steps run (``smoothing``, ``power_adjust``) and their parameters.

    Returns:
        A new table with the same index, row order and columns as `df`; class columns float64.

    Raises:
        SubmissionError: `df` has no ``row_id`` column or a duplicated row_id.
        ValueError: a row_id is malformed (see :func:`parse_row_id`).
    """
    if "row_id" not in df.columns:
        raise SubmissionError(f"prediction table has no 'row_id' column; columns: {list(df.columns)[:5]}...")
    duplicated = df["row_id"][df["row_id"].duplicated()]
    if len(duplicated):
        raise SubmissionError(f"prediction table has {len(duplicated)} duplicated row_id(s), "
                              f"e.g. {duplicated.head(3).tolist()}")
    steps = [POSTPROCESSORS.get(name) for name in enabled_steps(cfg)]
    out = df.copy()
    class_cols = [col for col in df.columns if col != "row_id"]
    if not steps or not class_cols or df.empty:
        return out
    probs = df[class_cols].to_numpy(dtype=np.float64, copy=True)  # (N, K), writable
    for rows in _file_groups(df["row_id"]):
        file_probs = probs[rows]  # (W, K), time order
        for step in steps:
            file_probs = step(file_probs, cfg)
        probs[rows] = file_probs
    out[class_cols] = probs
    return out


def apply_steps(probs: np.ndarray, cfg: InferConfig) -> np.ndarray:
    """Apply the enabled steps (smoothing, then power adjustment) to one file's (W, K) rows."""
    for name in enabled_steps(cfg):
        probs = POSTPROCESSORS.get(name)(probs, cfg)
    return probs
