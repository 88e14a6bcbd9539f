"""Precision per class from the stratified reviews, with 95 % intervals, and thresholds for a target precision.

The estimator. A class's windows scoring at least ``bins.low`` fall into score bins h (:class:`Bins`) of
``N_h`` windows each (the population, from the scores the reviews were drawn on). The stratified queue draws a
simple random sample of each bin; of its ``n_h`` answered items (``unsure`` left out), ``y_h`` were confirmed,
so ``p_h = y_h / n_h``. The precision of the detections at threshold ``edges[b]`` (every window of bins >= b)
is the population-weighted mean of the bins' precisions (the stratified estimator; unbiased because each bin
is a random sample and bins are weighted by their size, not by how many items were reviewed)::

    P_b = sum_{h>=b} W_h p_h,    W_h = N_h / sum_{h>=b} N_h
    Var(P_b) = sum_{h>=b} W_h^2 (1 - n_h / N_h) p_h (1 - p_h) / n_h

(the finite-population correction makes a fully reviewed bin exact). The 95 % interval is Wilson's score
interval with the effective sample size ``n_eff = P_b (1 - P_b) / Var(P_b)`` (Korn & Graubard 1998, the
design-effect Wilson interval; it stays inside [0, 1] and is sensible near 1, where the normal interval is
not). When the variance is 0 because every answer agrees, ``n_eff`` is the number of answers; when every
window of the bins was answered (a census), the interval is the estimate itself. A threshold
whose bins include a populated bin with no answer has no estimate (NaN): review more of that bin.

The threshold for a target precision is the lowest bin edge whose estimate reaches the target (the most
detections at that precision, as ``birdclef thresholds`` picks), or whose interval's lower end does
(``conservative``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.archive.raven import EVENT_COLUMNS, raven_table
from birdclef.errors import BirdclefError
from birdclef.eval.thresholds import THRESHOLD_COLUMNS
from birdclef.review.queue import Bins
from birdclef.utils.io import write_atomic, write_csv_atomic

Z95 = 1.959963984540054
PRECISION_COLUMNS = ["class", "bin", "threshold", "population", "reviewed", "confirmed", "precision", "low",
                     "high", "expected_true"]


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion `p` from `n` (effective) observations."""
    if not n > 0 or np.isnan(p):
        return float("nan"), float("nan")
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclass(frozen=True)
class Estimate:
    precision: float
    low: float
    high: float
    expected_true: float
    """Estimated confirmed windows among the detections (sum N_h p_h)."""


def stratified_precision(population: np.ndarray, reviewed: np.ndarray, confirmed: np.ndarray) -> Estimate:
    """The stratified precision of a set of bins (module docstring) and its 95 % design-effect Wilson interval.

    Args:
        population: (H,) windows per bin (N_h).
        reviewed: (H,) answered items per bin (n_h, yes + no).
        confirmed: (H,) of those, answered yes (y_h).
    """
    population, reviewed = np.asarray(population, np.float64), np.asarray(reviewed, np.float64)
    confirmed = np.asarray(confirmed, np.float64)
    used = population > 0
    if not used.any() or (reviewed[used] == 0).any():
        return Estimate(float("nan"), float("nan"), float("nan"), float("nan"))
    big_n, n, y = population[used], reviewed[used], confirmed[used]
    w, p = big_n / big_n.sum(), y / n
    estimate = float(np.sum(w * p))
    var = float(np.sum(w**2 * (1 - np.minimum(n / big_n, 1.0)) * p * (1 - p) / n))
    if (n >= big_n).all():  # a census: every window was answered, nothing is left to chance
        return Estimate(estimate, estimate, estimate, float(np.sum(big_n * p)))
    n_eff = estimate * (1 - estimate) / var if var > 0 else float(n.sum())
    low, high = wilson(estimate, n_eff)
    return Estimate(estimate, low, high, float(np.sum(big_n * p)))


def bin_counts(scores: np.ndarray, bins: Bins, reviewed_scores: np.ndarray,
               answers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(population, reviewed, confirmed) per bin of one class: `scores` of every window, and of its
    stratified reviews their scores (the same table's) and answers (yes / no; unsure left out)."""
    which = bins.of(scores)
    population = np.bincount(which[which >= 0], minlength=bins.n)
    answers = np.asarray(answers)
    keep = np.isin(answers, ("yes", "no"))
    rbin = bins.of(np.asarray(reviewed_scores, np.float64)[keep])
    yes = answers[keep] == "yes"
    reviewed = np.bincount(rbin[rbin >= 0], minlength=bins.n)
    confirmed = np.bincount(rbin[rbin >= 0], weights=yes[rbin >= 0].astype(float), minlength=bins.n)
    return population, reviewed, confirmed.astype(np.int64)


def precision_curve(cls: str, scores: np.ndarray, bins: Bins, reviewed_scores: np.ndarray,
                    answers: np.ndarray) -> pd.DataFrame:
    """One row per bin b: precision of the detections at threshold edges[b] (:data:`PRECISION_COLUMNS`)."""
    population, reviewed, confirmed = bin_counts(scores, bins, reviewed_scores, answers)
    rows = []
    for b in range(bins.n):
        est = stratified_precision(population[b:], reviewed[b:], confirmed[b:])
        rows.append((cls, b, float(bins.edges[b]), int(population[b]), int(reviewed[b]), int(confirmed[b]),
                     est.precision, est.low, est.high, est.expected_true))
    return pd.DataFrame(rows, columns=PRECISION_COLUMNS)


def threshold_for(curve: pd.DataFrame, target: float, conservative: bool = False) -> tuple[float, str]:
    """(lowest threshold of `curve` whose precision (or interval low end) reaches `target`, note); NaN when none."""
    if not 0.0 < target <= 1.0:
        raise BirdclefError(f"--target must be in (0, 1], got {target}")
    column = "low" if conservative else "precision"
    reach = curve[curve[column] >= target - 1e-12]
    if reach.empty:
        best = curve[column].max()
        why = "no reviewed bins" if np.isnan(best) else f"best {best:.3f}"
        return float("nan"), f"never reaches precision {target:g} ({why})"
    row = reach.iloc[0]
    exact = row["low"] == row["high"]
    interval = ("exact: every window above it was answered" if exact else
                f"95% interval [{row['low']:.3f}, {row['high']:.3f}] (stratified, design-effect Wilson)")
    note = f"precision {row['precision']:.3f}, {interval}, ~{row['expected_true']:.0f} true detections"
    return float(row["threshold"]), note


def thresholds_table(curves: dict[str, pd.DataFrame], target: float, conservative: bool = False,
                     confirmed: dict[str, int] | None = None) -> pd.DataFrame:
    """The ``thresholds.csv`` of ``birdclef thresholds`` (:data:`THRESHOLD_COLUMNS`; analyze --thresholds reads it):
    recall and F1 are not estimable from reviews above a score floor and stay empty; ``n_positive`` counts the
    confirmed reviews."""
    rows = []
    for cls, curve in curves.items():
        threshold, note = threshold_for(curve, target, conservative)
        precision = float("nan") if np.isnan(threshold) else float(curve.loc[curve["threshold"] == threshold,
                                                                             "precision"].iloc[0])
        rows.append((cls, threshold, precision, float("nan"), float("nan"), (confirmed or {}).get(cls, 0), note))
    return pd.DataFrame(rows, columns=THRESHOLD_COLUMNS)


def write_confirmed_raven(reviews: pd.DataFrame, out: Path, high_hz: float) -> list[Path]:
    """Raven selection tables of the confirmed (yes) windows, one per recording: ``out/raven/<file>.selections.txt``."""
    yes = reviews[reviews["answer"] == "yes"]
    written = []
    for rel, group in yes.groupby("file", sort=True):
        events = pd.DataFrame({"path": group["file"], "species": group["class"], "start_s": group["start_s"],
                               "end_s": group["end_s"], "score": group["score"].fillna(float("nan"))},
                              columns=EVENT_COLUMNS).sort_values(["start_s", "species"], ignore_index=True)
        table = raven_table(events, high_hz)
        target = Path(out) / "raven" / f"{rel}.selections.txt"
        write_atomic(target, lambda tmp, t=table: t.to_csv(tmp, sep="\t", index=False))
        written.append(target)
    write_csv_atomic(yes.reset_index(drop=True), Path(out) / "confirmed.csv")
    return written
