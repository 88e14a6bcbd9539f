"""Pseudo-labelled and reviewed soundscape windows in embedding distillation (``train --pseudo / --reviews`` with
``train.distill_teacher``): each window is a row of a teacher source, so the student learns its labels *and* the
teacher's embedding of it.

A window ``[start_s, start_s + 5)`` of a recording that an unlabelled source already holds (``train.
distill_unlabelled``, the table's soundscape folder usually being ``train_soundscapes``) at a start that is a
multiple of 5 s is that source's row ``start_s / 5`` (:func:`~birdclef.birdnet.head_embed.clip_rows`: every full 5 s
window and a last partial one of at least 3 s, zero padded as the table's window is): the teacher embedded it
already, nothing is computed again. The other windows (another folder, a hop under 5 s: ``birdclef pseudo --hop``,
a start past ``train.distill_max_file_s``, a last window shorter than 3 s) are cut once (zero padded past the file's
end, as :func:`~birdclef.data.examples.centred_window` cuts them for the plain CNN) into a store of their own under
``ROOT/windows/<key>/`` (:func:`~birdclef.data.cache.write_window_store`; the key hashes the table and the rows),
which becomes one more teacher source: embedded once, cached like the others, heard in the distillation epochs
like any unlabelled audio.

:class:`LabelledWindows` holds, per window, its (source, row), targets, mask, fold, weight and whether it is
drawn (pseudo: ``train.pseudo_ratio`` per epoch, from the soundscapes outside the fold) or in every label epoch
(reviewed, fold -1); :class:`~birdclef.train.distill_data.DistillData` puts them into the label epochs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from birdclef.audio.io import load_audio
from birdclef.birdnet.head_embed import clip_rows
from birdclef.config import Config
from birdclef.data.cache import WaveCache, write_window_store
from birdclef.data.examples import centred_window
from birdclef.data.pseudo import PseudoLabels
from birdclef.errors import AudioError, DatasetError
from birdclef.infer.base import ROW_WINDOW_S

_TOLERANCE_S = 1e-3
"""Starts and lengths within a millisecond of a row's are that row (tables store float seconds)."""


@dataclass
class LabelledWindows:
    """Windows with labels beside the clips, each a row of a teacher source (module docstring)."""

    source: np.ndarray
    """(M,) int64 teacher source of each window."""
    row: np.ndarray
    """(M,) int64 its row in that source."""
    targets: np.ndarray
    """(M, K) float32 soft (pseudo) or hard (reviewed) targets, 0 where masked."""
    mask: np.ndarray
    """(M, K) bool: True where the target is known."""
    fold: np.ndarray
    """(M,) int64 soundscape fold (-1: a reviewed window, every fold trains on it)."""
    weight: np.ndarray
    """(M,) float32 loss weight (``train.pseudo_weight`` or ``train.review_weight``)."""
    drawn: np.ndarray
    """(M,) bool: True for pseudo windows (drawn per epoch), False for reviewed ones (in every label epoch)."""
    matched: int = 0
    """Windows found among the unlabelled sources' rows (no new teacher work)."""

    def __len__(self) -> int:
        return len(self.source)

    def record(self) -> dict:
        """What ``RUN/teacher.json`` says of them."""
        return {"windows": len(self), "pseudo": int(self.drawn.sum()), "reviewed": int((~self.drawn).sum()),
                "matched_to_unlabelled_rows": self.matched, "embedded_as_own_source": len(self) - self.matched}


def match_rows(stores: list[tuple[str, WaveCache]], table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """((M,) source, (M,) row) of each window of `table` (``audio``, ``start_s``, ``end_s``) that an unlabelled
    source (``stores[1:]``) holds as a row; -1 where none does."""
    where: dict[tuple[str, int], tuple[int, int]] = {}
    for s, (name, cache) in enumerate(stores):
        if s == 0:
            continue  # the clips
        folder = Path(name).resolve()
        files = [str(folder / f) for f in cache.index["filename"].astype(str)]
        clips, windows = clip_rows(cache)
        for r, (clip, window) in enumerate(zip(clips.tolist(), windows.tolist())):
            where.setdefault((files[clip], window), (s, r))
    resolved = {a: str(Path(a).resolve()) for a in set(table["audio"].astype(str))}
    source, row = np.full(len(table), -1, np.int64), np.full(len(table), -1, np.int64)
    starts, ends = table["start_s"].to_numpy(np.float64), table["end_s"].to_numpy(np.float64)
    for i, audio in enumerate(table["audio"].astype(str)):
        window = int(round(starts[i] / ROW_WINDOW_S))
        off_grid = abs(starts[i] - window * ROW_WINDOW_S) > _TOLERANCE_S
        if off_grid or abs(ends[i] - starts[i] - ROW_WINDOW_S) > _TOLERANCE_S:
            continue
        hit = where.get((resolved[audio], window))
        if hit is not None:
            source[i], row[i] = hit
    return source, row


def _window_store(labels: list[PseudoLabels], table: pd.DataFrame, todo: np.ndarray, root: Path, sample_rate: int,
                  progress: bool) -> WaveCache:
    """The store of the windows `todo` (positions in `table`): each recording decoded once, each window cut as the
    plain CNN cuts a pseudo window."""
    length = int(round(ROW_WINDOW_S * sample_rate))
    record = [[l.sha256 for l in labels], todo.tolist(), sample_rate]
    key = hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]
    names = [f"{table['path'].iloc[i]}@{table['start_s'].iloc[i]:.3f}" for i in todo]
    sources = ", ".join(str(l.source) for l in labels)

    def windows():
        cut = table.iloc[todo]
        bar = tqdm(total=len(todo), desc="pseudo windows", unit="window", disable=not progress)
        wave, current = None, None
        for audio, start_s, end_s in zip(cut["audio"].astype(str), cut["start_s"], cut["end_s"]):
            if audio != current:
                try:
                    wave, current = load_audio(audio, sample_rate), audio
                except AudioError as exc:
                    raise DatasetError(f"{sources}: recording {audio} cannot be decoded ({exc.reason})") from None
            bar.update(1)
            yield centred_window(wave, sample_rate, float(start_s), float(end_s), ROW_WINDOW_S)
        bar.close()

    return write_window_store(root / "windows" / key, names, windows(), length, sample_rate, f"windows of {sources}")


def labelled_windows(config: Config, stores: list[tuple[str, WaveCache]], pseudo: PseudoLabels | None,
                     reviewed: PseudoLabels | None, root: Path,
                     progress: bool = True) -> tuple[list[tuple[str, WaveCache]], LabelledWindows | None]:
    """(the teacher's sources, with a store of the windows they lack appended when there are such; the windows as
    rows of those sources), or (`stores`, None) without tables.

    Raises:
        DatasetError: a recording a window needs cannot be decoded.
    """
    parts = [(t, w, d) for t, w, d in ((pseudo, config.train.pseudo_weight, True),
                                        (reviewed, config.train.review_weight, False)) if t is not None]
    if not parts:
        return stores, None
    table = pd.concat([t.table for t, _, _ in parts], ignore_index=True)
    source, row = match_rows(stores, table)
    matched = int((source >= 0).sum())
    todo = np.flatnonzero(source < 0)
    if len(todo):
        # Grouped by recording, so that each is decoded once.
        todo = todo[np.argsort(table["audio"].to_numpy()[todo], kind="stable")]
        store = _window_store([t for t, _, _ in parts], table, todo, root, config.data.sample_rate, progress)
        stores = [*stores, ("pseudo windows", store)]
        source[todo], row[todo] = len(stores) - 1, np.arange(len(todo))
    windows = LabelledWindows(
        source, row, np.concatenate([t.targets for t, _, _ in parts]).astype(np.float32),
        np.concatenate([t.mask for t, _, _ in parts]).astype(bool), table["fold"].to_numpy(np.int64),
        np.concatenate([np.full(len(t), w, np.float32) for t, w, _ in parts]),
        np.concatenate([np.full(len(t), d, bool) for t, _, d in parts]), matched)
    return stores, windows
