"""Fitting predictions to a sample_submission: exactly its rows, in its order, with its columns.

Kaggle scores a submission whose rows are the sample's; anything else is either left out (predicted
windows the sample lacks: counted and listed) or filled (sample rows without a prediction: each
class's mean over the predicted rows, a neutral value for the ranking metric, reported per soundscape
with the reason). A sample that names none of the soundscapes being predicted is an error, not a
submission of constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from birdclef.errors import SubmissionError
from birdclef.infer.postprocess import parse_row_id
from birdclef.utils.io import read_csv_checked

FALLBACK_COLUMNS = ["soundscape", "file", "sample_rows", "predicted_rows", "fallback_rows", "reason"]
EXTRA_COLUMNS = ["row_id", "soundscape"]
_EXAMPLES = 3


def _examples(values: Sequence) -> str:
    values = list(values)
    return ", ".join(repr(v) for v in values[:_EXAMPLES]) + (", ..." if len(values) > _EXAMPLES else "")


def read_sample(path: Path) -> pd.DataFrame:
    """A sample_submission with text row_ids, checked: rows, a row_id column, class columns, unique
    and well-formed row_ids. Adds nothing; the caller takes ``row_id`` and the class columns from it.

    Raises:
        SubmissionError: naming the file and the offending column or row_ids.
    """
    path = Path(path)
    sample = read_csv_checked(path, "sample submission", SubmissionError, dtype={"row_id": str})
    if "row_id" not in sample.columns:
        raise SubmissionError(f"{path}: sample submission has no row_id column (columns: {_examples(sample.columns)})")
    if len(sample.columns) < 2 or sample.empty:
        raise SubmissionError(f"{path}: sample submission needs rows and class columns besides row_id")
    ids = sample["row_id"]
    if ids.isna().any():
        first_line = int(ids.isna().argmax()) + 2  # 1-based, after the header
        raise SubmissionError(f"{path}: {int(ids.isna().sum())} empty row_id(s), first at line {first_line}")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise SubmissionError(f"{path}: {len(duplicated)} duplicated row_id(s), e.g. {_examples(duplicated)}")
    try:
        sample_stems(sample)
    except ValueError as exc:
        raise SubmissionError(f"{path}: {exc}") from None
    return sample


def sample_stems(sample: pd.DataFrame) -> pd.Series:
    """The soundscape stem of each sample row (ValueError on a malformed row_id)."""
    return pd.Series([parse_row_id(r)[0] for r in sample["row_id"]], index=sample.index, dtype=object)


def check_sample_matches(sample: pd.DataFrame, sample_name: str, paths: Sequence[Path], source: object) -> None:
    """Raise before any prediction when none of the sample's soundscapes is among `paths`."""
    wanted = list(dict.fromkeys(sample_stems(sample)))
    have = {Path(p).stem for p in paths}
    if not have.intersection(wanted):
        raise SubmissionError(
            f"{sample_name}: none of its {len(wanted)} soundscape(s) ({_examples(wanted)}) is among the "
            f"{len(have)} in {source} ({_examples(sorted(have))}); wrong soundscape folder or wrong sample submission?")


@dataclass
class SampleAlignment:
    """Predictions fitted to a sample, and what did not fit."""

    frame: pd.DataFrame
    """Exactly the sample's rows (order) and columns."""
    fallback: pd.DataFrame
    """One row per soundscape with sample rows that got the fallback (:data:`FALLBACK_COLUMNS`)."""
    extra: pd.DataFrame
    """Predicted windows the sample does not list, left out (:data:`EXTRA_COLUMNS`)."""

    @property
    def n_fallback_rows(self) -> int:
        return int(self.fallback["fallback_rows"].sum())


def _reason(stem: str, files: Mapping[str, str], skipped: Mapping[str, str], predicted: pd.Series) -> str:
    if stem not in files:
        return "no such soundscape in the folder"
    if stem in skipped:
        return f"could not be decoded: {skipped[stem]}"
    ends = predicted.get(stem)
    if ends is None:
        return "no prediction"
    return (f"the file gave {len(ends)} row(s) ending at {max(ends)} s; the sample lists rows it does not "
            "have (a short or truncated file?)")


def _fallback_table(sample: pd.DataFrame, matched: pd.Series, pred_ids: pd.Index, files: Mapping[str, str],
                    skipped: Mapping[str, str]) -> pd.DataFrame:
    stems = sample_stems(sample)
    per_file = pd.DataFrame({"soundscape": stems, "matched": matched}).groupby("soundscape", sort=False)["matched"]
    counts = pd.DataFrame({"sample_rows": per_file.size(), "predicted_rows": per_file.sum()})
    counts = counts[counts["predicted_rows"] < counts["sample_rows"]]
    parsed = pd.DataFrame([parse_row_id(r) for r in pred_ids], columns=["stem", "end"])
    predicted = parsed.groupby("stem")["end"].apply(list)
    rows = [(stem, files.get(stem, ""), int(n), int(k), int(n - k), _reason(stem, files, skipped, predicted))
            for stem, n, k in counts.itertuples()]
    return pd.DataFrame(rows, columns=FALLBACK_COLUMNS)


def align_to_sample(pred: pd.DataFrame, sample: pd.DataFrame, sample_name: str, files: Mapping[str, str],
                    skipped: Mapping[str, str]) -> SampleAlignment:
    """Fit a prediction table (row_id + classes) to `sample` (module docstring).

    Args:
        pred: predicted rows of every decoded soundscape.
        sample: a table from :func:`read_sample`.
        sample_name: for messages.
        files: stem -> path of every soundscape listed for prediction.
        skipped: stem -> reason of those that could not be decoded.

    Raises:
        SubmissionError: the models do not score a class of the sample, or not one sample row got a
            prediction.
    """
    columns = [c for c in sample.columns if c != "row_id"]
    missing = [c for c in columns if c not in pred.columns]
    if missing:
        raise SubmissionError(f"the models do not score {len(missing)} class(es) of {sample_name}: "
                              f"{_examples(missing)}")
    pred = pred.set_index("row_id")[columns]
    wanted = pd.Index(sample["row_id"])
    matched = pd.Series(wanted.isin(pred.index), index=sample.index)
    if not matched.any():
        raise SubmissionError(f"{sample_name}: not one of its {len(wanted)} rows got a prediction "
                              f"(e.g. {_examples(wanted)}; predicted e.g. {_examples(pred.index)})")
    fallback = pred.mean()
    frame = pred.reindex(wanted)
    frame.loc[~matched.to_numpy()] = fallback.to_numpy()
    extra_ids = pred.index[~pred.index.isin(wanted)]
    extra = pd.DataFrame({"row_id": extra_ids, "soundscape": [parse_row_id(r)[0] for r in extra_ids]},
                         columns=EXTRA_COLUMNS)
    return SampleAlignment(frame.rename_axis("row_id").reset_index(),
                           _fallback_table(sample, matched, pred.index, files, skipped), extra)
