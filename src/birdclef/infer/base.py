"""What every predictor shares, in numpy only: 5 s rows, context windows, prefetched decoding.

A predictor (torch runs in :mod:`birdclef.infer.predict`, exported graphs in
:mod:`birdclef.export.runtime`) follows :class:`Predictor`; the batch job in
:mod:`birdclef.infer.job` works with any of them, so running an exported model needs no torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from birdclef.audio.io import load_audio
from birdclef.audio.segments import row_ids, soundscape_windows
from birdclef.errors import AudioError

ROW_WINDOW_S = 5.0
"""The competition scores 5 s rows."""


class Predictor(Protocol):
    """Turns one decoded soundscape into the final probabilities of its 5 s rows."""

    classes: list[str]
    """Output column order."""
    sample_rate: int
    """Rate (Hz) the waveform passed to :meth:`predict_file` must have."""

    def predict_file(self, wave: np.ndarray) -> np.ndarray:
        """(W, K) post-processed, blended probabilities; W = :func:`row_count` of the wave."""

    def settings(self) -> dict:
        """JSON-able identity (models, weights, post-processing) that partial results are keyed by."""


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
