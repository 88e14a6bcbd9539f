"""One review session: the results, their queues and answers, and precision from them (server and CLI share it).

``RESULTS/review.json`` records the settings that shape the stratified queue (bins, score floor, seed, queue
size). They are written on the first start; a later start with other ones is refused once answers exist,
because the stratified answers are only a random sample of the bins they were drawn from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.birdnet.geo import GeoSettings
from birdclef.errors import BirdclefError
from birdclef.eval.thresholds import read_thresholds
from birdclef.review.precision import precision_curve, thresholds_table
from birdclef.review.queue import Bins, build_queue
from birdclef.review.reviews import Answer, read_reviews, save_answer
from birdclef.review.source import KEYS, Results, open_results
from birdclef.utils.io import write_csv_atomic, write_json_atomic

SETTINGS = "review.json"
CACHE = ".review_cache"


@dataclass(frozen=True)
class ReviewSettings:
    """What shapes the queues (RESULTS/review.json)."""

    bins: int = 10
    """Score bins of the stratified queue and the precision estimate."""
    min_score: float = 0.1
    """Lowest score the stratified queue draws from."""
    size: int = 100
    """Items per queue and class."""
    seed: int = 0
    """Seed of the stratified draws."""

    @property
    def binning(self) -> Bins:
        return Bins(self.bins, self.min_score)


def _key_frame(frame: pd.DataFrame, file_col: str) -> pd.DataFrame:
    return pd.DataFrame({"file": frame[file_col].astype(str).to_numpy(),
                         "start_s": frame["start_s"].astype(np.float64).round(3).to_numpy(),
                         "end_s": frame["end_s"].astype(np.float64).round(3).to_numpy()})


class Session:
    """The review state of one results folder (thread-safe enough: every answer goes through the locked log)."""

    def __init__(self, results: str | Path, audio: str | Path | None = None, settings: dict | None = None,
                 reviewer: str = "", thresholds: str | Path | None = None,
                 geo: tuple[GeoSettings, Path] | None = None):
        """`settings`: :class:`ReviewSettings` fields to set (None values keep the stored or default ones); `geo`:
        the location filter (settings, taxonomy.csv) applied to every score table of the session, its per-class
        table written to ``RESULTS/geo_filter.csv``."""
        self.results: Results = open_results(results, audio)
        self.folder = self.results.folder
        self.geo_summary = None
        if geo is not None:
            from birdclef.birdnet.geo import filter_scores

            self.results.table, found = filter_scores(self.results.table, geo[0], geo[1], KEYS)
            self.results.class_weights = np.asarray(found.weights, np.float64)
            write_csv_atomic(found.table(), self.folder / "geo_filter.csv")
            self.geo_summary = f"{found.summary()}; see {self.folder / 'geo_filter.csv'}"
        self.settings = self._settings(settings or {})
        self.reviewer = reviewer
        self.thresholds = read_thresholds(thresholds) if thresholds is not None else {}
        self.cache = self.folder / CACHE
        record = self.folder / "archive.json"  # where `train --reviews` finds the reviewed recordings
        if not record.is_file():
            write_json_atomic({"archive": str(self.results.audio_root.resolve())}, record)

    def _settings(self, overrides: dict) -> ReviewSettings:
        path = self.folder / SETTINGS
        try:
            stored = ReviewSettings(**json.loads(path.read_text())) if path.is_file() else None
        except (ValueError, TypeError) as exc:
            raise BirdclefError(f"{path}: unreadable review settings ({exc}); delete it to start with defaults") \
                from None
        wanted = replace(stored or ReviewSettings(), **{k: v for k, v in overrides.items() if v is not None})
        if wanted.size < 1:
            raise BirdclefError(f"--queue-size must be at least 1, got {wanted.size}")
        if stored is not None and stored != wanted and len(read_reviews(self.folder)):
            raise BirdclefError(f"{path}: these results were reviewed with {asdict(stored)}; the stratified answers "
                                f"only fit those bins (start without --bins/--min-score/--queue-size/--seed)")
        wanted.binning  # validates
        write_json_atomic(asdict(wanted), path)
        return wanted

    # --- queues -------------------------------------------------------------------------------------------
    def threshold(self, cls: str) -> float:
        return float(self.thresholds.get(cls, 0.5))

    def queue(self, cls: str, kind: str) -> dict:
        """The queue's items (with each one's current answer) and where to resume (the first unanswered)."""
        if cls not in self.results.classes:
            raise BirdclefError(f"class {cls!r} is not in the results")
        original = kind == "stratified"  # the stratified queue and precision stay on the scores analyze wrote
        table, model = (self.results.table, self.results.model) if original else self.results.scores_now()
        rows = build_queue(table, cls, kind, self.settings.size, self.settings.binning, self.threshold(cls),
                           self.settings.seed)
        items = table.iloc[rows][KEYS + [cls]].rename(columns={"path": "file", cls: "score"})
        items = items.assign(start_s=items["start_s"].round(3), end_s=items["end_s"].round(3))
        reviews = read_reviews(self.folder)
        mine = reviews[reviews["class"] == cls][["file", "start_s", "end_s", "answer", "note", "reviewer"]]
        items = items.merge(mine, on=["file", "start_s", "end_s"], how="left").fillna({"answer": "", "note": ""})
        answered = items["answer"] != ""
        resume = int(np.argmax(~answered.to_numpy())) if (~answered).any() else len(items)
        return {"class": cls, "kind": kind, "model": model, "threshold": self.threshold(cls),
                "items": [{"file": r.file, "start_s": float(r.start_s), "end_s": float(r.end_s),
                           "score": float(r.score), "answer": r.answer, "note": r.note} for r in items.itertuples()],
                "answered": int(answered.sum()), "resume": resume}

    def answer(self, cls: str, file: str, start_s: float, end_s: float, answer: str, note: str = "",
               queue: str = "", score: float = float("nan"), model: str = "") -> dict:
        if cls not in self.results.classes:
            raise BirdclefError(f"class {cls!r} is not in the results")
        return save_answer(self.folder, Answer(cls, file, start_s, end_s, answer, self.reviewer, model, score, note,
                                               queue))

    def progress(self) -> dict[str, int]:
        """Answered items per class."""
        return read_reviews(self.folder)["class"].value_counts().to_dict()

    # --- precision ----------------------------------------------------------------------------------------
    def curves(self, classes: list[str] | None = None) -> dict[str, pd.DataFrame]:
        """Per class with answered members of its stratified draw: its precision per bin (:func:`precision_curve`).

        A window of the draw counts whichever queue it was answered from (its membership of the random sample
        is what matters); answers of windows outside the draw never enter the estimate.
        """
        reviews = read_reviews(self.folder)
        table = self.results.table
        out = {}
        for cls in classes or sorted(set(reviews["class"]) & set(self.results.classes)):
            if cls not in table.columns:
                continue
            rows = build_queue(table, cls, "stratified", self.settings.size, self.settings.binning, 0.5,
                               self.settings.seed)
            drawn = _key_frame(table.iloc[rows], "path").assign(row=rows)
            mine = reviews[reviews["class"] == cls]
            found = _key_frame(mine, "file").assign(answer=mine["answer"].to_numpy()).merge(drawn, how="inner")
            if found.empty:
                continue
            scores = pd.to_numeric(table[cls], errors="coerce").to_numpy(np.float64)
            out[cls] = precision_curve(cls, scores, self.settings.binning, scores[found["row"].to_numpy()],
                                       found["answer"].to_numpy())
        return out

    def thresholds_for(self, target: float, conservative: bool = False) -> pd.DataFrame:
        reviews = read_reviews(self.folder)
        confirmed = reviews[reviews["answer"] == "yes"]["class"].value_counts().to_dict()
        return thresholds_table(self.curves(), target, conservative, confirmed)

    def high_hz(self) -> float:
        """Upper frequency of Raven selections: the analysed rate's Nyquist (16 kHz when unknown)."""
        path = self.folder / "settings.json"
        try:
            return float(json.loads(path.read_text())["sample_rate"]) / 2
        except (OSError, KeyError, ValueError, TypeError):
            return 16_000.0
