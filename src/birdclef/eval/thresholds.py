"""Per-class decision thresholds fitted on a labelled submission (``birdclef thresholds``).

For each class of the solution, from :func:`sklearn.metrics.precision_recall_curve` of its labelled rows:

- ``precision=P``: the lowest threshold whose precision reaches ``P`` (the most recall at that precision);
- ``f1``: the threshold maximising F1 (the lowest of tied ones).

A window is a detection when its score is at least the threshold. Classes without positive rows, or that
never reach the precision, get no threshold (empty) and a ``note`` saying why; ``analyze --thresholds`` then
detects nothing for them.

Output columns: ``class, threshold, precision, recall, f1, n_positive, note`` (precision/recall/f1 at the
threshold, on the fitting rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve

from birdclef.errors import BirdclefError
from birdclef.eval.metrics import _read_table, align_submission
from birdclef.utils.io import read_csv_checked

THRESHOLD_COLUMNS = ["class", "threshold", "precision", "recall", "f1", "n_positive", "note"]
NO_POSITIVES = "no positive rows"


@dataclass
class ThresholdFit:
    """The fitted table plus the classes that got no threshold, by reason."""

    table: pd.DataFrame
    never_reached: list[str]
    no_positives: list[str]


def _class_threshold(target: np.ndarray, scores: np.ndarray, precision: float | None) -> tuple:
    """(threshold, precision, recall, f1, note) of one class; precision None: maximise F1."""
    if not target.any():
        return np.nan, np.nan, np.nan, np.nan, NO_POSITIVES
    prec, rec, thr = precision_recall_curve(target, scores)
    prec, rec = prec[:-1], rec[:-1]  # the last point (precision 1, recall 0) has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    if precision is None:
        best = int(np.argmax(f1))  # thresholds ascend: the first maximum is the lowest threshold
    else:
        reach = np.flatnonzero(prec >= precision - 1e-12)
        if not len(reach):
            return np.nan, np.nan, np.nan, np.nan, f"never reaches precision {precision:g} (best {prec.max():.3f})"
        best = int(reach[0])
    return float(thr[best]), float(prec[best]), float(rec[best]), float(f1[best]), ""


def fit_thresholds(target: np.ndarray, probs: np.ndarray, classes: list[str],
                   precision: float | None = None) -> ThresholdFit:
    """Per-class thresholds (module docstring) of aligned (rows, classes) labels and probabilities in [0, 1]."""
    if precision is not None and not 0.0 < precision <= 1.0:
        raise BirdclefError(f"--precision must be in (0, 1], got {precision}")
    check_probabilities(probs, classes)
    rows = []
    for j, name in enumerate(classes):
        rows.append((name, *_class_threshold(target[:, j], probs[:, j], precision)))
    table = pd.DataFrame(rows, columns=["class", "threshold", "precision", "recall", "f1", "note"])
    table.insert(5, "n_positive", target.sum(axis=0).astype(int))
    no_pos = table.loc[table["note"] == NO_POSITIVES, "class"].tolist()
    never = table.loc[table["threshold"].isna() & (table["note"] != NO_POSITIVES), "class"].tolist()
    return ThresholdFit(table[THRESHOLD_COLUMNS], never, no_pos)


def thresholds_from_csv(submission: Path, solution: Path, precision: float | None = None) -> ThresholdFit:
    """Fit thresholds on a Kaggle-style submission CSV and its 0/1 solution CSV (same row_ids and classes).

    Raises:
        SubmissionError: a file is missing or unreadable, or the tables do not line up (one line naming the file).
    """
    sub, sol = _read_table(submission, "submission"), _read_table(solution, "solution")
    target, probs, classes = align_submission(sub, sol, str(submission), str(solution))
    check_probabilities(probs, classes, str(submission))
    return fit_thresholds(target, probs, classes, precision)


def check_probabilities(probs: np.ndarray, classes: list[str], source: str = "the scores") -> None:
    """Refuse scores outside [0, 1] (logits, ranks): thresholds are used on probabilities (``analyze``,
    ``pseudo``), so a threshold fitted on another scale would be meaningless there.

    Raises:
        BirdclefError: naming the first class with such a score, its range and the way out.
    """
    outside = (probs < 0.0) | (probs > 1.0)
    if outside.any():
        j = int(np.flatnonzero(outside.any(axis=0))[0])
        raise BirdclefError(f"{source}: scores must be probabilities in [0, 1] (thresholds are applied to "
                            f"probabilities by analyze and pseudo), but class {classes[j]!r} ranges "
                            f"{np.nanmin(probs[:, j]):.4g} .. {np.nanmax(probs[:, j]):.4g} (logits?); "
                            "apply a sigmoid first, or fit on a `birdclef predict` CSV")


def read_thresholds(path: Path) -> dict[str, float]:
    """A thresholds CSV (``class, threshold``; empty threshold = not detected) as {class: threshold}.

    Raises:
        BirdclefError: the file is missing or unreadable, lacks the columns, repeats a class, or holds a
            threshold that is not a number in [0, 1].
    """
    path = Path(path)
    frame = read_csv_checked(path, "thresholds file", unreadable="cannot read thresholds CSV", dtype={"class": str})
    missing = [c for c in ("class", "threshold") if c not in frame.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise BirdclefError(f"{path}: no {names} column (birdclef thresholds writes them)")
    repeated = frame.loc[frame["class"].duplicated(), "class"].unique()
    if len(repeated):
        raise BirdclefError(f"{path}: class(es) listed twice: {', '.join(map(str, repeated[:5]))}")
    values = pd.to_numeric(frame["threshold"], errors="coerce")
    bad = frame["threshold"].notna() & ~values.between(0.0, 1.0)
    if bad.any():
        row = frame[bad].iloc[0]
        raise BirdclefError(f"{path}: threshold of class {row['class']!r} must be a number in [0, 1], "
                              f"got {row['threshold']!r}")
    return {c: float(t) for c, t in zip(frame["class"], values) if not np.isnan(t)}
