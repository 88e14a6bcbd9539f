"""What every predictor shares, in numpy only: the predictor protocol, 5 s rows, context windows, decoding.

**The protocol.** A prediction is made of *parts*, each one model that hears spans of audio of its own length
at its own rate (:class:`Part`): a torch run trained on 10 s windows hears 2.5 s either side of each 5 s row,
BirdNET and its heads only the row, an exported graph the span it was exported with. A :class:`Predictor`
holds its parts, one blend weight per run of them, the post-processing settings, and the value (if any) that
fills the classes no part scores. Everything downstream -- the ``predict`` batch job, ``analyze``'s window
scorer, blends, pseudo-label provenance -- uses only these members, never the kind of model behind them
(the kinds live in :mod:`birdclef.zoo`).

:class:`PartsPredictor` turns parts into file predictions: each 5 s row's span is cut from the decoded wave
(:func:`context_windows`; zeros outside the file), every part scores its spans, and the runs are blended and
post-processed by :func:`~birdclef.infer.ensemble.combine_runs`. The batch job in :mod:`birdclef.infer.job`
works with any predictor, so running an exported model needs no torch.

**Blends over all rows.** A predictor's :attr:`~Predictor.blend` is ``mean`` (each file blended on its own:
:meth:`~Predictor.predict_file`) or ``rank`` / ``quantile`` (:mod:`birdclef.infer.rank`), which rank each run's
scores of a class over every row of the prediction. Such a predictor has no per-file prediction: the job keeps
each file's :meth:`~Predictor.run_outputs` and blends them all at the end with :meth:`~Predictor.blend_rows`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import soxr

from birdclef.audio.io import load_audio
from birdclef.audio.segments import row_ids, soundscape_windows
from birdclef.config import InferConfig
from birdclef.errors import AudioError, BirdclefError
from birdclef.infer.rank import MEAN

ROW_WINDOW_S = 5.0
"""The competition scores 5 s rows."""


class Part(Protocol):
    """One model of a prediction: it scores spans of `length` samples at `sample_rate`, each starting `lead`
    samples before a 5 s window's start, into one (N, K) array of raw probabilities per run it holds."""

    classes: list[str]
    """Output columns (the predictor's order)."""
    sample_rate: int
    """Rate (Hz) of the spans it hears."""
    lead: int
    """Samples of context before a window's start (0: the span starts with the window)."""
    length: int
    """Samples per span."""
    n_runs: int
    """How many (N, K) arrays :meth:`score` returns (fold-averaged runs; one blend weight each)."""
    can_embed: bool
    """Whether :meth:`embed` gives embeddings (a foundation model's)."""
    unscored: list[str]
    """Classes this part leaves NaN (a zero-shot model's unknown classes)."""
    checkpoints: list[str]
    """Resolved weight files behind it (fold checkpoints, an exported graph; [] for a foundation model alone)."""
    model_file: str | None
    """The resolved foundation-model file it runs, if any."""

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        """(N, length) float32 spans -> `n_runs` arrays of (N, K) raw probabilities (NaN: unscored)."""

    def embed(self, spans: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """:meth:`score` and the spans' (N, D) float32 embeddings from the same pass (when `can_embed`)."""

    def settings(self) -> dict:
        """JSON-able identity of the part."""


class Predictor(Protocol):
    """Turns one decoded soundscape into the final probabilities of its 5 s rows, from its :meth:`parts`."""

    classes: list[str]
    """Output column order."""
    sample_rate: int
    """Rate (Hz) the waveform passed to :meth:`predict_file` must have (the lowest of the parts')."""
    config: InferConfig
    """Batch and post-processing settings."""
    weights: np.ndarray
    """One blend weight per run over all parts, in order; sums to 1."""
    fill: float | None
    """Value written where no part scores a class (None: NaN stays)."""
    class_weights: np.ndarray | None
    """(K,) multipliers of the final scores (the location filter, :mod:`birdclef.birdnet.geo`), or None."""
    blend: str
    """How the runs are blended: ``mean`` per file, or ``rank`` / ``quantile`` over all rows (module docstring)."""

    def parts(self) -> list[Part]:
        """The models, in the order of :attr:`weights`' runs."""

    @property
    def unscored(self) -> list[str]:
        """Classes no part scores (NaN before :attr:`fill`)."""

    @property
    def checkpoints(self) -> list[str]:
        """Every resolved weight file the parts loaded, without repeats."""

    @property
    def model_files(self) -> list[str]:
        """The resolved foundation-model files the parts run, without repeats."""

    def predict_file(self, wave: np.ndarray) -> np.ndarray:
        """(W, K) post-processed, blended probabilities; W = :func:`row_count` of the wave (``mean`` blends only)."""

    def run_outputs(self, wave: np.ndarray) -> list[np.ndarray]:
        """One (W, K) array per run: its probabilities of the file, post-processed when that is per model."""

    def blend_rows(self, per_run: Sequence[np.ndarray], file_rows: Sequence[int]) -> np.ndarray:
        """(N, K) final probabilities from each run's :meth:`run_outputs` of all files, stacked in file order
        (`file_rows`: each file's row count, summing to N): the blend, then per-file post-processing, fill and
        class weights. For a ``mean`` blend this is :meth:`predict_file` of each file, stacked."""

    def settings(self) -> dict:
        """JSON-able identity (models, weights, post-processing) that partial results are keyed by."""


def class_positions(own: Sequence[str], classes: Sequence[str], who: str) -> np.ndarray | None:
    """Where each of the predictor's `classes` is among a model's `own` outputs (-1: the model does not score it,
    a taxon specialist's other classes); None when the two lists are the same in the same order.

    Raises:
        BirdclefError: `own` scores classes that `classes` lacks (naming a few).
    """
    own, classes = [str(c) for c in own], [str(c) for c in classes]
    if own == classes:
        return None
    extra = sorted(set(own) - set(classes))
    if extra:
        raise BirdclefError(f"{who}: scores {len(extra)} classes the prediction does not have "
                            f"({', '.join(extra[:3])}); blended models must score a subset of its classes")
    where = {c: k for k, c in enumerate(own)}
    return np.asarray([where.get(c, -1) for c in classes], np.int64)


def scatter_columns(probs: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    """(N, K_own) scores -> (N, K) in the predictor's order (:func:`class_positions`), NaN where unscored."""
    if positions is None:
        return probs
    out = np.full((len(probs), len(positions)), np.nan, dtype=np.float64)
    scored = positions >= 0
    out[:, scored] = np.asarray(probs)[:, positions[scored]]
    return out


def unscored_classes(classes: Sequence[str], positions: np.ndarray | None) -> list[str]:
    """The `classes` a model of :func:`class_positions` `positions` leaves NaN."""
    return [] if positions is None else [c for c, k in zip(classes, positions) if k < 0]


def union_classes(lists: Sequence[Sequence[str]]) -> list[str]:
    """The classes of a blend of models scoring `lists`: the first list with the most classes, in its order, then
    the others' remaining classes in the order given (one shared list: the first one's order)."""
    return list(dict.fromkeys(str(c) for own in [max(lists, key=len), *lists] for c in own))


class ScatteredPart:
    """A :class:`Part` whose scores are placed into a blend's `classes`: reordered, and NaN for the classes it does
    not score (a taxon specialist among full runs). Everything else is the wrapped part's.

    Raises:
        BirdclefError: the part scores classes `classes` lacks.
    """

    def __init__(self, part: Part, classes: Sequence[str]):
        self.part, self.classes = part, list(classes)
        self.positions = class_positions(part.classes, self.classes, type(part).__name__)
        missing = set(unscored_classes(self.classes, self.positions)) | set(part.unscored)
        self.unscored = [c for c in self.classes if c in missing]
        self.sample_rate, self.lead, self.length, self.n_runs = part.sample_rate, part.lead, part.length, part.n_runs
        self.can_embed, self.checkpoints, self.model_file = part.can_embed, part.checkpoints, part.model_file

    def __getattr__(self, name: str):
        # What is not a Part member (a head's `inputs`, a zero-shot model's `model`, which provenance reads) is
        # the wrapped part's. `part` itself missing (while unpickling) must not recurse.
        if name == "part":
            raise AttributeError(name)
        return getattr(self.part, name)

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        return [scatter_columns(probs, self.positions) for probs in self.part.score(spans)]

    def embed(self, spans: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        scores, embeddings = self.part.embed(spans)
        return [scatter_columns(probs, self.positions) for probs in scores], embeddings

    def settings(self) -> dict:
        extra = sorted(set(self.unscored) - set(self.part.unscored))
        return {**self.part.settings(), **({"unscored": extra} if extra else {})}


def place_parts(parts: Sequence[Part], classes: Sequence[str]) -> list[Part]:
    """`parts`, each scoring `classes` in that order: a part of other columns is wrapped (:class:`ScatteredPart`)."""
    return [part if list(part.classes) == list(classes) else ScatteredPart(part, classes) for part in parts]


def span(sample_rate: int, window_s: float) -> tuple[int, int]:
    """(lead, length) of a model hearing `window_s` seconds centred on each 5 s row (as :func:`context_windows`)."""
    row_len, win_len = int(round(ROW_WINDOW_S * sample_rate)), int(round(window_s * sample_rate))
    return (win_len - row_len) // 2, win_len


class PartsPredictor:
    """The file-level predictions of any :class:`Predictor` from its parts (module docstring).

    Subclasses set ``classes``, ``sample_rate``, ``config`` and ``weights`` and implement :meth:`parts`;
    ``fill`` and ``class_weights`` default to None, ``blend`` to ``mean``.
    """

    classes: list[str]
    sample_rate: int
    config: InferConfig
    weights: np.ndarray
    fill: float | None = None
    class_weights: np.ndarray | None = None
    blend: str = MEAN

    def parts(self) -> list[Part]:
        raise NotImplementedError

    @property
    def unscored(self) -> list[str]:
        left = set(self.classes)
        for part in self.parts():
            left &= set(part.unscored)
        return [c for c in self.classes if c in left]

    @property
    def checkpoints(self) -> list[str]:
        return list(dict.fromkeys(c for part in self.parts() for c in part.checkpoints))

    @property
    def model_files(self) -> list[str]:
        """The foundation-model files the parts run, without repeats."""
        return list(dict.fromkeys(p.model_file for p in self.parts() if p.model_file is not None))

    def predict_runs(self, wave: np.ndarray) -> list[np.ndarray]:
        """Each run's raw (W, K) probabilities of one file at :attr:`sample_rate` (no post-processing)."""
        n_rows = row_count(len(wave), self.sample_rate)
        waves = {self.sample_rate: wave}
        runs: list[np.ndarray] = []
        for part in self.parts():
            rate = int(part.sample_rate)
            if rate not in waves:
                waves[rate] = soxr.resample(wave, self.sample_rate, rate, quality="HQ").astype(np.float32)
            spans = context_windows(waves[rate], rate, n_rows, part.length / rate)
            scored = part.score(spans)
            if len(scored) != part.n_runs:
                raise BirdclefError(f"{type(part).__name__} gave {len(scored)} runs where it holds {part.n_runs}")
            runs += scored
        return runs

    def predict_file(self, wave: np.ndarray) -> np.ndarray:
        from birdclef.infer.ensemble import combine_runs  # ensemble imports postprocess; keep base light

        if self.blend != MEAN:
            raise BirdclefError(f"a {self.blend} blend ranks each model's scores over all files of a prediction; "
                                "one file has no prediction of its own (birdclef predict blends them at the end)")
        return self._finish(combine_runs(self.predict_runs(wave), self.weights, self.config))

    def run_outputs(self, wave: np.ndarray) -> list[np.ndarray]:
        """Each run's (W, K) probabilities of one file, post-processed when ``postprocess_stage`` is per_model."""
        from birdclef.infer.postprocess import apply_steps

        per_run = self.predict_runs(wave)
        if self.config.postprocess_stage == "per_model":
            per_run = [apply_steps(p, self.config) for p in per_run]
        return per_run

    def blend_rows(self, per_run: Sequence[np.ndarray], file_rows: Sequence[int]) -> np.ndarray:
        """The final (N, K) probabilities of all files from each run's stacked :meth:`run_outputs` (protocol)."""
        from birdclef.infer.ensemble import blend_runs
        from birdclef.infer.postprocess import apply_steps

        if sum(file_rows) != len(per_run[0]):
            raise BirdclefError(f"blend_rows: the files' {sum(file_rows)} rows are not the runs' {len(per_run[0])}")
        blended = blend_runs(per_run, self.weights, self.blend)  # (N, K)
        if self.config.postprocess_stage == "blend":
            files = np.split(blended, np.cumsum(file_rows)[:-1])
            blended = np.concatenate([apply_steps(rows, self.config) for rows in files])
        return self._finish(blended)

    def _finish(self, probs: np.ndarray) -> np.ndarray:
        """`probs` with :attr:`fill` where no run scores and times :attr:`class_weights`."""
        if self.fill is not None:
            probs = np.asarray(probs, dtype=np.float64)
            probs = np.where(np.isnan(probs), self.fill, probs)
        return probs if self.class_weights is None else probs * self.class_weights[None, :]


class SinglePart(PartsPredictor):
    """A part that is a whole predictor too (its own only part): zero-shot BirdNET, a head run, an exported
    graph. Subclasses set the :class:`Part` members and ``weights`` (one per run); these defaults say: one
    run, no embeddings, every class scored, no weight file, no foundation model."""

    n_runs: int = 1
    can_embed: bool = False
    unscored: Sequence[str] = ()
    checkpoints: Sequence[str] = ()
    model_file: str | None = None

    def parts(self) -> list[Part]:
        return [self]

    def embed(self, spans: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        raise BirdclefError(f"{type(self).__name__} gives no embeddings; they come from a foundation model "
                            "(--birdnet)")


def row_count(n_samples: int, sample_rate: int) -> int:
    """Number of 5 s rows of a file of `n_samples` samples (a short tail gets its own, padded row)."""
    return len(soundscape_windows(n_samples / sample_rate, ROW_WINDOW_S))


def context_windows(wave: np.ndarray, sample_rate: int, n_rows: int, window_s: float) -> np.ndarray:
    """(n_rows, window_s * sample_rate) inputs: for each 5 s row, the `window_s` span centred on it.

    Samples outside the file are zeros (the padded tail of the last row, and the context of edge rows).
    A model trained on 10 s windows thus scores the same 5 s rows as a 5 s model.
    """
    row_len, win_len = int(round(ROW_WINDOW_S * sample_rate)), int(round(window_s * sample_rate))
    margin = (win_len - row_len) // 2
    total = n_rows * row_len
    offset = max(margin, 0)
    padded = np.zeros(total + 2 * offset + max(win_len - row_len, 0), dtype=np.float32)
    padded[offset : offset + min(len(wave), total)] = wave[:total]
    starts = offset + np.arange(n_rows) * row_len - margin
    return np.stack([padded[s : s + win_len] for s in starts])


def _decode(path: Path, sample_rate: int) -> tuple[Path, np.ndarray | None, str | None]:
    try:
        return path, load_audio(path, sample_rate), None
    except AudioError as exc:
        return path, None, exc.reason


def iter_decoded(paths: Sequence[Path], sample_rate: int, num_workers: int = 2,
                 ahead: int = 4) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """Yield (path, wave, None) or (path, None, reason) in order, decoding up to `ahead` files early.

    Threads suffice: libsndfile and soxr release the GIL, so decoding overlaps the model's compute.
    `num_workers` 0 decodes in the caller's thread.
    """
    if num_workers <= 0:
        yield from (_decode(Path(p), sample_rate) for p in paths)
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending: deque = deque()
        queue = iter(paths)
        for path in queue:
            pending.append(pool.submit(_decode, Path(path), sample_rate))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def iter_run_outputs(paths: Sequence[Path], predictor: Predictor,
                     num_workers: int = 2) -> Iterator[tuple[Path, pd.DataFrame | None, str | None]]:
    """As :func:`iter_predictions`, with each run's :meth:`~Predictor.run_outputs` instead of the blend.

    `rows` stacks the runs: a ``run`` column (0, 1, ... in :attr:`~Predictor.weights` order), ``row_id``, then
    one float32 column per class; run r's rows are the file's rows in order.
    """
    for path, wave, error in iter_decoded(paths, predictor.sample_rate, num_workers):
        if wave is None:
            yield path, None, error
            continue
        ids = row_ids(path.stem, soundscape_windows(len(wave) / predictor.sample_rate, ROW_WINDOW_S))
        frames = []
        for run, probs in enumerate(predictor.run_outputs(wave)):
            frame = pd.DataFrame(np.asarray(probs, dtype=np.float32), columns=predictor.classes)
            frame.insert(0, "row_id", ids)
            frame.insert(0, "run", run)
            frames.append(frame)
        yield path, pd.concat(frames, ignore_index=True), None


def iter_predictions(paths: Sequence[Path], predictor: Predictor,
                     num_workers: int = 2) -> Iterator[tuple[Path, pd.DataFrame | None, str | None]]:
    """Yield (path, rows, None) per decodable file and (path, None, reason) per broken one.

    `rows` is a DataFrame of row_id plus one float32 column per class in ``predictor.classes`` order.
    """
    for path, wave, error in iter_decoded(paths, predictor.sample_rate, num_workers):
        if wave is None:
            yield path, None, error
            continue
        probs = predictor.predict_file(wave)
        ids = row_ids(path.stem, soundscape_windows(len(wave) / predictor.sample_rate, ROW_WINDOW_S))
        frame = pd.DataFrame(np.asarray(probs, dtype=np.float32), columns=predictor.classes)
        frame.insert(0, "row_id", ids)
        yield path, frame, None
