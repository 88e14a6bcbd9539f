"""Training examples as one table: labelled clips and pseudo-labelled soundscape windows side by side.

An :class:`Examples` holds one row per example, whatever its source::

    source    "clip" (a cache row of train.csv, weak labels), "review" (a reviewed soundscape window: hard
              labels of the answered classes, the rest masked; :mod:`birdclef.data.reviewed`) or "pseudo"
              (a soundscape window, soft labels)
    audio     the clip's filename (relative to train_audio) or the soundscape file (resolved)
    start_s   the clip's stored span, or the pseudo window's 5 s row
    end_s
    fold      the clip's stratified fold, or the soundscape's fold (:func:`birdclef.data.pseudo.soundscape_folds`
              under the student's data.n_folds / data.fold_seed); -1 for reviewed windows (every fold trains on them)
    weight    loss weight: the clip's rating weight, train.review_weight, or train.pseudo_weight
    cache_row the clip's position in the wave cache (-1 for pseudo windows)
    file      the pseudo window's soundscape in :class:`PseudoAudio` (-1 for clips)

with ``targets`` (N, K) float32 and ``mask`` (N, K) bool (False: nobody knows that target; clips know all).
Clips come first, so a clip's example index is its cache position and clip-only runs draw what they always drew;
then reviewed windows, then pseudo windows. Reviewed and pseudo windows share one decoded store.

A taxon specialist (``data.classes``: :mod:`birdclef.data.subset`) has the subset's target columns; with
``data.class_negatives: false`` its clips without a positive of the subset stay in the table (positions keep
matching the cache) but are inactive: :meth:`Examples.rows` never returns them, for training or validation.

Pseudo windows are cut from soundscapes decoded once (:func:`prepare_pseudo_audio`) into
``RUN/pseudo_cache/<sha256[:16]>-<rate>hz-<window>s/``: one float16 ``.npy`` per recording, written
atomically (an interrupted decode keeps the finished files), and ``store.json`` written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from birdclef.audio.io import load_audio
from birdclef.config import Config
from birdclef.data.cache import WaveCache
from birdclef.data.folds import assign_folds
from birdclef.data.metadata import label_matrix, parse_secondary_labels
from birdclef.data.pseudo import PseudoLabels
from birdclef.data.subset import ClassSubset
from birdclef.errors import AudioError, DatasetError
from birdclef.utils.io import read_json, write_atomic, write_json_atomic

SOURCES = ("clip", "review", "pseudo")
STORE_FORMAT = 1


def build_targets(index: pd.DataFrame, classes: list[str], secondary_weight: float, rating_weight: bool):
    """(targets (N, K) float32, weights (N,) float32) of the cache rows.

    Secondary labels that are not classes are ignored (real train.csv files name species outside the
    scored set); a primary label outside the class list is an error.
    """
    unknown = sorted(set(index["primary_label"].astype(str)) - set(classes))
    if unknown:
        raise DatasetError(f"{len(unknown)} primary labels are not in the class list "
                           f"(sample_submission.csv / taxonomy.csv): {unknown[:5]}")
    column = index["secondary_labels"] if "secondary_labels" in index else [None] * len(index)
    secondary = [parse_secondary_labels(v) for v in column]
    targets = label_matrix(index["primary_label"].astype(str).tolist(), secondary, classes, secondary_weight,
                           ignore_unknown=True)
    weights = np.ones(len(index), dtype=np.float32)
    if rating_weight and "rating" in index:
        rating = pd.to_numeric(index["rating"], errors="coerce").fillna(0.0).to_numpy(np.float32)
        weights = np.where(rating > 0, np.clip(rating, 0.0, 5.0) / 5.0, 1.0).astype(np.float32)
    return targets.astype(np.float32), weights


def centred_window(wave: np.ndarray, sample_rate: int, start_s: float, end_s: float, window_s: float) -> np.ndarray:
    """(window_s * sample_rate,) float32: the span centred on the row [start_s, end_s), zeros outside the file.

    The windows :func:`birdclef.infer.base.context_windows` gives a model of that window length at inference.
    """
    length = int(round(window_s * sample_rate))
    row_start, row_len = int(round(start_s * sample_rate)), int(round((end_s - start_s) * sample_rate))
    first = row_start - (length - row_len) // 2
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(first, 0), min(first + length, len(wave))
    if hi > lo:
        out[lo - first : hi - first] = wave[lo:hi]
    return out


class PseudoAudio:
    """Decoded soundscapes of a pseudo table, read through memory maps (reopened lazily after pickling).

    Args:
        path: the store folder (``store.json`` and one ``NNNNN.npy`` per recording).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = read_json(self.path / "store.json")
        self.files: list[str] = list(meta["files"])
        self.sample_rate, self.window_s = int(meta["sample_rate"]), float(meta["window_s"])
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    def wave(self, file: int) -> np.ndarray:
        """The (samples,) float16 memory map of recording `file`."""
        if file not in self._maps:
            where = self.path / f"{file:05d}.npy"
            try:
                self._maps[file] = np.load(where, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{where}: unreadable decoded audio of {self.files[file]} ({exc}); "
                                   f"delete {self.path} to decode the pseudo table's recordings again") from None
        return self._maps[file]

    def window(self, file: int, start_s: float, end_s: float) -> np.ndarray:
        """(window_s * sample_rate,) float32 window centred on the row [start_s, end_s) of recording `file`."""
        return centred_window(self.wave(file), self.sample_rate, start_s, end_s, self.window_s)


def _save_npy(path: Path, wave: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would add ".npy" to a temporary name
        np.save(fh, wave)


def prepare_pseudo_audio(labels: PseudoLabels, root: Path, sample_rate: int, window_s: float,
                         progress: bool = True) -> PseudoAudio:
    """Decode every recording of `labels` once at `sample_rate` into a store under `root` (reused when complete).

    Raises:
        DatasetError: a recording cannot be decoded (named, with the table).
    """
    files = sorted(set(labels.table["audio"].astype(str)))
    where = Path(root) / f"{labels.sha256[:16]}-{sample_rate}hz-{window_s:g}s"
    if (where / "store.json").is_file():
        return PseudoAudio(where)
    where.mkdir(parents=True, exist_ok=True)
    for i, audio in enumerate(tqdm(files, desc="pseudo audio", unit="file", disable=not progress)):
        target = where / f"{i:05d}.npy"
        if target.is_file():  # decoded before an interruption (each file is written atomically)
            continue
        try:
            wave = load_audio(audio, sample_rate).astype(np.float16)
        except AudioError as exc:
            raise DatasetError(f"{labels.source}: recording {audio} cannot be decoded ({exc.reason})") from None
        write_atomic(target, lambda tmp, w=wave: _save_npy(tmp, w))
    write_json_atomic({"format": STORE_FORMAT, "table": str(labels.source), "sha256": labels.sha256,
                       "sample_rate": sample_rate, "window_s": window_s, "files": files}, where / "store.json")
    return PseudoAudio(where)


@dataclass
class Examples:
    """Clips and pseudo windows as one table (module docstring), with their targets and masks."""

    table: pd.DataFrame
    targets: np.ndarray
    """(N, K) float32."""
    mask: np.ndarray
    """(N, K) bool: True where the target is known."""
    cache: WaveCache
    audio: PseudoAudio | None = None
    active: np.ndarray | None = None
    """(N,) bool: False for examples left out (a specialist's dropped clips); None: all take part."""
    weights: np.ndarray = field(init=False)
    """(N,) float32 loss weights (the table's ``weight``)."""

    def __post_init__(self) -> None:
        if self.active is None:
            self.active = np.ones(len(self.table), bool)
        self.weights = self.table["weight"].to_numpy(np.float32)
        self._source = self.table["source"].to_numpy()
        self._fold = self.table["fold"].to_numpy(np.int64)
        self._where = self.table[["cache_row", "file"]].to_numpy(np.int64)
        self._span = self.table[["start_s", "end_s"]].to_numpy(np.float64)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def n_clips(self) -> int:
        return int((self._source == "clip").sum())

    def rows(self, source: str, fold: int, held_out: bool) -> np.ndarray:
        """Active example indices of `source` in fold `fold` (`held_out`) or in every other fold."""
        in_fold = self._fold == fold
        return np.flatnonzero((self._source == source) & (in_fold if held_out else ~in_fold) & self.active)

    def is_clip(self, i: int) -> bool:
        return self._source[i] == "clip"

    def is_pseudo(self, i: int) -> bool:
        return self._source[i] == "pseudo"

    def wave(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """(T,) float32 window of example `i`: a clip's crop (random with `rng`) or a pseudo window's fixed span."""
        cache_row, file = (int(v) for v in self._where[i])
        if cache_row >= 0:
            return self.cache.window(cache_row, rng)
        return self.audio.window(file, *self._span[i])


def clip_table(cache: WaveCache, weights: np.ndarray, folds: np.ndarray) -> pd.DataFrame:
    index = cache.index
    return pd.DataFrame({"source": "clip", "audio": index["filename"].astype(str).to_numpy(),
                         "start_s": index["start_s"].to_numpy(np.float64), "end_s": index["end_s"].to_numpy(np.float64),
                         "fold": np.asarray(folds, np.int64), "weight": weights.astype(np.float32),
                         "cache_row": np.arange(len(index), dtype=np.int64), "file": -1})


def pseudo_table(labels: PseudoLabels, audio: PseudoAudio, weight: float, source: str = "pseudo") -> pd.DataFrame:
    table = labels.table
    file_of = {name: i for i, name in enumerate(audio.files)}
    return pd.DataFrame({"source": source, "audio": table["audio"].astype(str).to_numpy(),
                         "start_s": table["start_s"].to_numpy(np.float64), "end_s": table["end_s"].to_numpy(np.float64),
                         "fold": table["fold"].to_numpy(np.int64), "weight": np.float32(weight),
                         "cache_row": -1, "file": table["audio"].astype(str).map(file_of).to_numpy(np.int64)})


def build_examples(cache: WaveCache, classes: list[str], config: Config, pseudo: PseudoLabels | None = None,
                   audio: PseudoAudio | None = None, reviewed: PseudoLabels | None = None,
                   subset: ClassSubset | None = None) -> Examples:
    """The training examples of a run: every cache clip (stratified folds), every reviewed window, then every
    window of `pseudo`.

    `pseudo`'s folds must already follow the run's split (``read_pseudo(..., data.n_folds, data.fold_seed)``);
    `reviewed` comes from :func:`birdclef.data.reviewed.read_reviewed`; `audio` is the decoded store of both
    (:func:`prepare_pseudo_audio`, of :func:`~birdclef.data.reviewed.merge_labels` when both are given).
    `classes` is the data's class list; a specialist's `subset` (:mod:`birdclef.data.subset`) keeps its columns
    (`pseudo` and `reviewed` already cut to them: :func:`~birdclef.data.subset.cut_labels`), the folds of every
    clip, and marks the clips it drops inactive.

    Raises:
        DatasetError: a primary label outside `classes`; a subset none of whose classes has a clip.
    """
    data = config.data
    targets, weights = build_targets(cache.index, classes, data.secondary_label_weight, data.rating_weight)
    folds = assign_folds(cache.index["primary_label"].astype(str).tolist(), data.n_folds, data.fold_seed)
    active = None
    if subset is not None:  # folds above come from every clip: a specialist's split is the full run's
        targets = subset.select(targets)
        subset.check_clips(targets, cache.path)
        active = subset.kept_clips(targets)
    tables, all_targets, masks = [clip_table(cache, weights, folds)], [targets], [np.ones(targets.shape, bool)]
    if (pseudo is not None or reviewed is not None) and audio is None:
        raise ValueError("pseudo and reviewed windows need their decoded audio (prepare_pseudo_audio)")
    if reviewed is not None:
        tables.append(pseudo_table(reviewed, audio, config.train.review_weight, source="review"))
        all_targets.append(reviewed.targets.astype(np.float32))
        masks.append(reviewed.mask.astype(bool))
    if pseudo is not None:
        if audio is None:
            raise ValueError("pseudo windows need their decoded audio (prepare_pseudo_audio)")
        tables.append(pseudo_table(pseudo, audio, config.train.pseudo_weight))
        all_targets.append(pseudo.targets.astype(np.float32))
        masks.append(pseudo.mask.astype(bool))
    table = pd.concat(tables, ignore_index=True)
    if active is not None:
        active = np.concatenate([active, np.ones(len(table) - len(active), bool)])
    return Examples(table, np.concatenate(all_targets), np.concatenate(masks), cache, audio, active)
