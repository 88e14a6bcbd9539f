"""The competition metric (macro ROC-AUC), a per-class report, and submission-vs-solution scoring.

Kaggle's BirdCLEF 2024/2025 metric averages one-vs-rest ROC-AUC over the classes that have at
least one positive window in the solution. A class whose windows are *all* positive has no
negatives, so its AUC is undefined (scikit-learn raises); it is skipped as well and reported as
such. Nothing here needs torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from birdclef.errors import SubmissionError
from birdclef.utils.io import read_csv_checked

NO_POSITIVES = "no positives"
NO_NEGATIVES = "no negatives"
IGNORED_SOLUTION_COLUMNS = ("usage", "Usage")
"""Kaggle solution files carry a public/private split column; it is never a class."""
_EXAMPLES = 5
"""How many offending row_ids or cells an error message lists."""


def _check_arrays(target: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate (rows, classes) arrays and return them as int8 / float64."""
    target, probs = np.asarray(target), np.asarray(probs)
    if target.shape != probs.shape:
        raise ValueError(f"shape mismatch: target {target.shape} vs probs {probs.shape}")
    if target.ndim != 2:
        raise ValueError(f"target and probs must be 2-D (rows, classes), got shape {target.shape}")
    if not np.issubdtype(probs.dtype, np.number) and probs.dtype != bool:
        raise ValueError(f"probs must be numeric, got dtype {probs.dtype}")
    probs = probs.astype(np.float64)
    if not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).sum())
        raise ValueError(f"probs hold {bad} NaN or infinite value(s)")
    if target.dtype == bool:
        return target.astype(np.int8), probs
    if not np.issubdtype(target.dtype, np.number) or not np.isin(target, (0, 1)).all():
        values = pd.unique(target.ravel())[:_EXAMPLES].tolist()
        raise ValueError(f"target must hold only 0 and 1, found values such as {values}")
    return target.astype(np.int8), probs


def _skip_reasons(target: np.ndarray) -> list[str]:
    """Per class: '' when scored, else why not ('no positives' or 'no negatives')."""
    positives = target.sum(axis=0)
    reasons = np.where(positives == 0, NO_POSITIVES, np.where(positives == len(target), NO_NEGATIVES, ""))
    return reasons.tolist()


def macro_roc_auc(target: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the classes with at least one positive (BirdCLEF rule).

    A class with no positive is skipped (Kaggle's rule). A class that is positive in every row
    has no negative, so its AUC is undefined; it is skipped too (Kaggle's scorer would fail).
    Ties between a positive and a negative count one half, as in scikit-learn.

    Args:
        target: (rows, classes) 0/1 labels (int or bool).
        probs: (rows, classes) scores; any finite values (AUC only uses their order).

    Returns:
        The mean AUC over the scored classes, in [0, 1].

    Raises:
        ValueError: shapes differ or are not 2-D, probs hold NaN/Inf, target is not 0/1, or no
            class has both a positive and a negative.
    """
    target, probs = _check_arrays(target, probs)
    scored = np.array([reason == "" for reason in _skip_reasons(target)], dtype=bool)
    if not scored.any():
        raise ValueError(
            f"no class has both a positive and a negative label among {target.shape[1]} class(es); "
            "macro ROC-AUC is undefined"
        )
    return float(roc_auc_score(target[:, scored], probs[:, scored], average="macro"))


def per_class_roc_auc(target: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """One row per class: class, auc (NaN when not scored), positives, negatives, scored, reason.

    `reason` is '' for a scored class, else 'no positives' or 'no negatives'.

    Raises:
        ValueError: as :func:`macro_roc_auc` (except that no scored class is allowed here), or
            `classes` does not have one name per column.
    """
    target, probs = _check_arrays(target, probs)
    if len(classes) != target.shape[1]:
        raise ValueError(f"got {len(classes)} class names for {target.shape[1]} columns")
    reasons = _skip_reasons(target)
    auc = [
        float(roc_auc_score(target[:, k], probs[:, k])) if reason == "" else math.nan
        for k, reason in enumerate(reasons)
    ]
    positives = target.sum(axis=0).astype(int)
    return pd.DataFrame({
        "class": [str(c) for c in classes],
        "auc": auc,
        "positives": positives,
        "negatives": len(target) - positives,
        "scored": [reason == "" for reason in reasons],
        "reason": reasons,
    })


def _examples(values: Sequence[Any] | pd.Index) -> str:
    """'a, b, c' for the first few values, with '…' when there are more."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:_EXAMPLES])
    return shown + (", …" if len(values) > _EXAMPLES else "")


def check_row_ids(frame: pd.DataFrame, name: str) -> pd.Index:
    """The table's row_ids as strings; raise when the column is absent or has duplicates."""
    if "row_id" not in frame.columns:
        raise SubmissionError(f"{name}: no 'row_id' column (columns: {_examples(frame.columns)})")
    row_ids = pd.Index(frame["row_id"].astype(str))
    duplicated = row_ids[row_ids.duplicated()].unique()
    if len(duplicated):
        raise SubmissionError(f"{name}: {len(duplicated)} duplicated row_id(s), e.g. {_examples(duplicated)}")
    return row_ids


def _check_columns(submission: pd.DataFrame, classes: list[str], name: str, solution_name: str) -> None:
    """Raise unless the submission has exactly row_id plus the solution's class columns."""
    columns = [str(c) for c in submission.columns if c != "row_id"]
    have, wanted = set(columns), set(classes)
    missing = [c for c in classes if c not in have]
    extra = [c for c in columns if c not in wanted]
    if missing:
        raise SubmissionError(
            f"{name}: {len(missing)} class column(s) of {solution_name} missing: {_examples(missing)}")
    if extra:
        raise SubmissionError(f"{name}: {len(extra)} column(s) not in {solution_name}: {_examples(extra)}")


def _check_rows(sub_ids: pd.Index, sol_ids: pd.Index, name: str, solution_name: str) -> None:
    """Raise unless both tables hold the same set of row_ids (naming missing and extra ones together)."""
    missing = sol_ids.difference(sub_ids, sort=False)
    extra = sub_ids.difference(sol_ids, sort=False)
    problems = []
    if len(missing):
        problems.append(f"{len(missing)} row_id(s) of {solution_name} missing, e.g. {_examples(missing)}")
    if len(extra):
        problems.append(f"{len(extra)} row_id(s) not in {solution_name}, e.g. {_examples(extra)}")
    if problems:
        raise SubmissionError(f"{name}: " + "; ".join(problems))


def numeric_values(frame: pd.DataFrame, name: str, what: str) -> np.ndarray:
    """The frame as float64; raise naming the columns/cells that are not finite numbers."""
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad_columns = [c for c in frame.columns if numeric[c].isna().any()]
    if bad_columns:
        rows = frame.index[numeric[bad_columns[0]].isna()]
        raise SubmissionError(
            f"{name}: {what} must be finite numbers; column(s) {_examples(bad_columns)} hold NaN or "
            f"non-numeric values (e.g. {bad_columns[0]!r} at row_id {_examples(rows)})"
        )
    values = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise SubmissionError(f"{name}: {what} hold {int((~np.isfinite(values)).sum())} infinite value(s)")
    return values


def align_submission(
    submission: pd.DataFrame,
    solution: pd.DataFrame,
    submission_name: str = "submission",
    solution_name: str = "solution",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Match a submission to a solution by row_id and return (target, probs, classes).

    The classes are the solution's columns minus `row_id` and a Kaggle `usage`/`Usage` column, in
    the solution's order; rows follow the solution's order (the submission's may differ).
    Probabilities may lie outside [0, 1] (AUC only uses their order) but must be finite numbers.

    Returns:
        target (rows, classes) int8 0/1, probs (rows, classes) float64, and the class names.

    Raises:
        SubmissionError: naming the table and listing examples, when `row_id` is absent or
            duplicated, row_ids are missing or extra, class columns are missing or extra,
            probabilities are non-numeric/NaN/Inf, or the solution holds values other than 0/1.
    """
    sol_ids = check_row_ids(solution, solution_name)
    sub_ids = check_row_ids(submission, submission_name)
    classes = [str(c) for c in solution.columns if c != "row_id" and c not in IGNORED_SOLUTION_COLUMNS]
    if not classes:
        raise SubmissionError(f"{solution_name}: no class columns besides row_id")
    _check_columns(submission.rename(columns=str), classes, submission_name, solution_name)
    _check_rows(sub_ids, sol_ids, submission_name, solution_name)
    sol = solution.rename(columns=str).set_axis(sol_ids)[classes]
    sub = submission.rename(columns=str).set_axis(sub_ids).loc[sol_ids, classes]
    target = numeric_values(sol, solution_name, "labels")
    if not np.isin(target, (0, 1)).all():
        raise SubmissionError(f"{solution_name}: labels must be 0 or 1, found {_examples(np.unique(target))}")
    return target.astype(np.int8), numeric_values(sub, submission_name, "probabilities"), classes


@dataclass
class EvalReport:
    """A scored submission: the macro score plus the per-class table it averages."""

    score: float
    """Macro ROC-AUC over the scored classes."""
    per_class: pd.DataFrame
    """Columns class, auc, positives, negatives, scored, reason (see :func:`per_class_roc_auc`)."""
    n_rows: int
    n_scored: int
    n_skipped: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN AUCs become None); :meth:`from_dict` reverses it."""
        records = [
            {key: (None if isinstance(v, float) and math.isnan(v) else _plain(v)) for key, v in row.items()}
            for row in self.per_class.to_dict(orient="records")
        ]
        return {"score": float(self.score), "n_rows": int(self.n_rows), "n_scored": int(self.n_scored),
                "n_skipped": int(self.n_skipped), "per_class": records}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Rebuild a report from :meth:`to_dict` output (for example after a JSON round trip)."""
        columns = ["class", "auc", "positives", "negatives", "scored", "reason"]
        per_class = pd.DataFrame(data["per_class"], columns=columns)
        per_class["auc"] = per_class["auc"].astype(float)
        return cls(float(data["score"]), per_class, int(data["n_rows"]), int(data["n_scored"]), int(data["n_skipped"]))

    def format_table(self) -> str:
        """Aligned per-class table, worst scored class first, skipped classes last, then the score."""
        scored = self.per_class[self.per_class["scored"]].sort_values(["auc", "class"], kind="stable")
        skipped = self.per_class[~self.per_class["scored"]].sort_values("class", kind="stable")
        width = max([len("class"), *(len(c) for c in self.per_class["class"])])
        lines = [f"{'class':<{width}}  {'auc':>6}  {'pos':>5}  {'neg':>5}  note", "-" * (width + 30)]
        for row in pd.concat([scored, skipped]).itertuples(index=False):
            auc = f"{row.auc:6.4f}" if row.scored else f"{'-':>6}"
            note = "" if row.scored else f"skipped: {row.reason}"
            lines.append(f"{row[0]:<{width}}  {auc}  {row.positives:>5}  {row.negatives:>5}  {note}".rstrip())
        lines.append("-" * (width + 30))
        lines.append(f"macro ROC-AUC {self.score:.4f} over {self.n_scored} class(es), "
                     f"{self.n_skipped} skipped, {self.n_rows} row(s)")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so json.dumps accepts them."""
    return value.item() if isinstance(value, np.generic) else value


def _read_table(path: Path, role: str) -> pd.DataFrame:
    """Read a CSV with row_id as text; raise SubmissionError naming the file when that fails."""
    return read_csv_checked(path, f"{role} file", SubmissionError, f"cannot read {role} CSV", dtype={"row_id": str})


def evaluate_submission(submission: Path, solution: Path) -> EvalReport:
    """Score a submission CSV against a solution CSV with the competition metric.

    Example:
        >>> report = evaluate_submission(Path("submission.csv"), Path("solution.csv"))  # doctest: +SKIP
        >>> print(report.format_table())  # doctest: +SKIP

    Raises:
        SubmissionError: a file is missing or unreadable, the tables do not line up (see
            :func:`align_submission`), or no class of the solution can be scored.
    """
    sub_frame, sol_frame = _read_table(submission, "submission"), _read_table(solution, "solution")
    target, probs, classes = align_submission(sub_frame, sol_frame, str(submission), str(solution))
    try:
        score = macro_roc_auc(target, probs)
    except ValueError as exc:
        raise SubmissionError(f"{solution}: {exc}") from None
    per_class = per_class_roc_auc(target, probs, classes)
    n_scored = int(per_class["scored"].sum())
    return EvalReport(score, per_class, len(target), n_scored, len(classes) - n_scored)


def group_scores(report: EvalReport, taxonomy: Path, column: str = "class_name") -> pd.DataFrame:
    """Macro ROC-AUC per taxon group (taxonomy.csv's `column`, e.g. Aves / Amphibia / Insecta).

    A group's score is the mean AUC of its scored classes (the macro score restricted to them); classes the
    taxonomy does not list form the group ``unknown``.

    Returns:
        Columns group, auc, n_scored, n_classes; one row per group, sorted by name.

    Raises:
        SubmissionError: the taxonomy is missing or unreadable, or lacks `column` or ``primary_label``.
    """
    groups = class_groups(taxonomy, column)
    per_class = report.per_class.assign(group=[groups.get(str(c), "unknown") for c in report.per_class["class"]])
    rows = []
    for name, part in per_class.groupby("group", sort=True):
        scored = part[part["scored"].astype(bool)]
        rows.append({"group": name, "auc": float(scored["auc"].mean()) if len(scored) else math.nan,
                     "n_scored": len(scored), "n_classes": len(part)})
    return pd.DataFrame(rows, columns=["group", "auc", "n_scored", "n_classes"])


def class_groups(taxonomy: Path, column: str = "class_name") -> dict[str, str]:
    """primary_label -> taxon group (taxonomy.csv's `column`; a blank cell reads ``unknown``).

    Raises:
        SubmissionError: the taxonomy is missing or unreadable, or lacks `column` or ``primary_label``.
    """
    table = _read_table(taxonomy, "taxonomy")
    missing = [c for c in ("primary_label", column) if c not in table.columns]
    if missing:
        raise SubmissionError(f"{taxonomy}: no column {missing[0]!r} (needed for per-group scores)")
    return dict(zip(table["primary_label"].astype(str), table[column].fillna("unknown").astype(str)))


def read_aligned(submission: Path, solution: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(target, probs, classes, row_ids) of a submission CSV matched to a solution CSV (see :func:`align_submission`;
    rows in the solution's order).

    Raises:
        SubmissionError: as :func:`evaluate_submission`.
    """
    sub_frame, sol_frame = _read_table(submission, "submission"), _read_table(solution, "solution")
    target, probs, classes = align_submission(sub_frame, sol_frame, str(submission), str(solution))
    return target, probs, classes, [str(r) for r in sol_frame["row_id"].astype(str)]
