"""Reviewed windows as training examples (``train --reviews RESULTS/reviews.parquet``).

``birdclef review`` saves a reviewer's answers to ``reviews.parquet`` (class, file, start_s, end_s, answer,
...; :mod:`birdclef.review.reviews`). Here the latest answer per (class, window) becomes a hard label of that
class only: ``yes`` a positive (target 1), ``no`` an explicit negative (target 0); every other class of the
window is masked (unknown, not absent: the reviewer was asked about one class), and ``unsure`` answers are left
out. A window answered for several classes becomes one example with several known targets.

The windows are read as a :class:`~birdclef.data.pseudo.PseudoLabels` (hard targets, masks, fold -1), so the
pseudo windows' machinery embeds (BirdNET heads) or decodes (CNNs) them. Fold -1 is no fold: every fold trains
on every reviewed window (human answers about soundscapes, not the clips the folds validate on). The audio is
found through ``archive.json`` beside the table (``analyze`` and ``review`` write it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.data.pseudo import PseudoLabels, _sha256, attach_audio, check_resumed_table
from birdclef.errors import DatasetError
from birdclef.utils.io import read_json, write_json_atomic

ARCHIVE_RECORD = "archive.json"
RUN_RECORD = "reviews.json"
"""Per run trained on reviews: the table's path, sha256 and counts."""
WINDOW_S = 5.0


def _read(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise DatasetError(f"{path}: unreadable reviews table ({type(exc).__name__})") from None
    missing = [c for c in ("class", "file", "start_s", "end_s", "answer") if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: not a reviews table (no {', '.join(missing)} column; `birdclef review` writes it)")
    if "time" in frame.columns:  # the latest answer per item (the table is compacted so already; be safe)
        frame = frame.sort_values("time", kind="stable")
    frame = frame.assign(start_s=frame["start_s"].astype(float).round(3), end_s=frame["end_s"].astype(float).round(3))
    return frame.drop_duplicates(["class", "file", "start_s", "end_s"], keep="last")


def read_reviewed(path: str | Path, classes: list[str], check_audio: bool = True) -> PseudoLabels:
    """The yes/no answers of `path` (reviews.parquet, or the results folder holding it) as masked hard labels.

    Raises:
        DatasetError: the table is missing or unreadable, has no yes/no answer, names a class that is not one
            of `classes`, a window that is not 5 s long, or recordings not on disk; no ``archive.json`` beside it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "reviews.parquet"
    if not path.is_file():
        raise DatasetError(f"{path}: no such reviews table (birdclef review writes RESULTS/reviews.parquet)")
    frame = _read(path)
    frame = frame[frame["answer"].isin(("yes", "no"))]
    if frame.empty:
        raise DatasetError(f"{path}: no yes/no answers to train on")
    unknown = sorted(set(frame["class"].astype(str)) - set(classes))
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} reviewed classes are not classes of this dataset: {unknown[:5]}")
    length = (frame["end_s"] - frame["start_s"]).to_numpy()
    if (np.abs(length - WINDOW_S) > 1e-3).any():
        row = frame.iloc[int(np.argmax(np.abs(length - WINDOW_S) > 1e-3))]
        raise DatasetError(f"{path}: {row['file']} at {row['start_s']} s spans {row['end_s'] - row['start_s']:g} s; "
                           f"training takes {WINDOW_S:g} s windows")
    record = path.with_name(ARCHIVE_RECORD)
    if not record.is_file():
        raise DatasetError(f"{record}: not found; it names the folder the reviewed recordings are in")
    root = Path(read_json(record)["archive"])
    windows = frame[["file", "start_s", "end_s"]].drop_duplicates().sort_values(["file", "start_s"])
    windows = windows.reset_index(drop=True)
    position = {key: i for i, key in enumerate(zip(windows["file"], windows["start_s"], windows["end_s"]))}
    index = {c: k for k, c in enumerate(classes)}
    targets = np.zeros((len(windows), len(classes)), np.float32)
    mask = np.zeros((len(windows), len(classes)), bool)
    for cls, file, start_s, end_s, answer in zip(frame["class"], frame["file"], frame["start_s"], frame["end_s"],
                                                 frame["answer"]):
        i, k = position[(file, start_s, end_s)], index[cls]
        targets[i, k], mask[i, k] = float(answer == "yes"), True
    table = pd.DataFrame({"path": windows["file"].astype(str), "start_s": windows["start_s"].astype(np.float64),
                          "end_s": windows["end_s"].astype(np.float64), "fold": np.int64(-1)})
    attach_audio(table, root, path, check_audio)
    provenance = {"soundscapes": str(root), "classes": list(classes), "reviews": str(path.resolve())}
    return PseudoLabels(table, targets, mask, provenance, path, _sha256(path))


def record_reviewed(run: Path, labels: PseudoLabels | None, resume: bool) -> None:
    """Refuse to resume `run` with other reviews (or none, or some when its folds trained without them: the rule of
    :func:`~birdclef.data.pseudo.check_resumed_table`; a new answer makes a new table); then record them."""
    where = Path(run) / RUN_RECORD
    if resume:
        check_resumed_table(Path(run), where, None if labels is None else labels.source,
                            None if labels is None else labels.sha256, "reviews", "--reviews", "reviews")
    if labels is not None:
        write_json_atomic({"table": str(labels.source.resolve()), "sha256": labels.sha256, "windows": len(labels),
                           "positives": int((labels.targets * labels.mask).sum()),
                           "negatives": int(((1 - labels.targets) * labels.mask).sum())}, where)


def merge_labels(first: PseudoLabels, second: PseudoLabels) -> PseudoLabels:
    """One table of two (e.g. pseudo windows and reviewed ones) that share a class list, for one audio store."""
    table = pd.concat([first.table, second.table], ignore_index=True)
    sha = hashlib.sha256((first.sha256 + second.sha256).encode()).hexdigest()
    provenance = {"soundscapes": first.provenance["soundscapes"], "classes": first.provenance.get("classes"),
                  "merged": json.loads(json.dumps([str(first.source), str(second.source)]))}
    return PseudoLabels(table, np.concatenate([first.targets, second.targets]),
                        np.concatenate([first.mask, second.mask]), provenance, first.source, sha)
