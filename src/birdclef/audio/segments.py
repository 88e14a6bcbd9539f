"""Which 5 s of a clip to train on, and the fixed windows of a soundscape with their row ids (DESIGN §2, §6): the
one home of the 5 s row grid (:func:`soundscape_windows`, :func:`row_ids` and their inverse :func:`parse_row_id`).

Training clips are weakly labelled: the label says the species calls somewhere in the clip, not
when. :func:`select_window` picks the training window by a named strategy (``center``,
``first``, ``random``, ``energy``, ``reference``); :func:`crop` cuts it, tiling clips shorter
than the window. :func:`soundscape_windows` and :func:`row_ids` give the consecutive windows that
inference scores and their competition row ids.

Everything here is numpy only (no torch), so preparing a training cache needs no torch install.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from birdclef.audio.io import tile_to_length
from birdclef.config import SELECTION_STRATEGIES
from birdclef.errors import ConfigError
from birdclef.features.filterbank import mel_frequencies, mel_spectrogram, power_to_db

ENERGY_MEL = {"n_fft": 1_024, "hop_length": 512, "n_mels": 128, "f_min": 50.0, "f_max": 14_000.0, "htk": True}
"""Mel spectrogram of the energy rule: the baseline front end's parameters (the reference's)."""

SPEECH_PREFIX = "CSA"
"""Recordings whose file name starts with this open with human speech (the reference skips it)."""

_SILENCE_POWER = 1e-10
"""Mel power at or below which a whole clip counts as silent (power_to_db's amin)."""

_TAIL_TOLERANCE_S = 1e-3
"""A soundscape tail shorter than this is rounding noise of a duration, not audio worth a window."""


@dataclass(frozen=True)
class Window:
    """A span of clip time in seconds, [start_s, end_s)."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def select_window(
    wave: np.ndarray,
    sample_rate: int,
    strategy: str,
    filename: str = "",
    window_s: float = 5.0,
    rng: np.random.Generator | None = None,
) -> Window:
    """Choose the training window of a weakly labelled clip.

    Strategies (DESIGN §2):
        ``center``: the middle `window_s` of the clip (baseline). ``first``: the first `window_s`.
        ``random``: a start drawn uniformly from [0, duration - window_s] with `rng`.
        ``energy``: :func:`energy_window`. ``reference``: the reference's combined rule: a file
        whose base name starts with ``CSA`` (speech at the start) gets the fixed 2 s to
        2 + `window_s` s, clamped into the clip; any other file the energy rule.
    Whatever the strategy, a clip no longer than `window_s` gives Window(0, window_s): :func:`crop`
    tiles it to length.

    Args:
        wave: (samples,) mono waveform of the whole clip.
        sample_rate: its rate in Hz.
        strategy: one of ``birdclef.config.SELECTION_STRATEGIES``.
        filename: the clip's file name or path (only ``reference`` reads it).
        window_s: window length in seconds.
        rng: random generator; required by ``random`` so that crops are reproducible.

    Raises:
        ConfigError: unknown strategy name.
        ValueError: ``random`` without `rng`.
    """
    if strategy not in SELECTION_STRATEGIES:
        raise ConfigError(f"unknown window strategy {strategy!r}; choose from {list(SELECTION_STRATEGIES)}")
    duration_s = len(wave) / sample_rate
    if duration_s <= window_s:
        return Window(0.0, window_s)
    if strategy == "center":
        return _window_at((duration_s - window_s) / 2, window_s)
    if strategy == "first":
        return Window(0.0, window_s)
    if strategy == "random":
        if rng is None:
            raise ValueError("strategy 'random' needs rng (a np.random.Generator) so crops can be reproduced")
        return _window_at(float(rng.uniform(0.0, duration_s - window_s)), window_s)
    fallback_s = (2.0, 2.0 + window_s)
    if strategy == "reference" and PurePath(filename).name.startswith(SPEECH_PREFIX):
        return _clamped(fallback_s, duration_s)
    return energy_window(wave, sample_rate, window_s=window_s, fallback_s=fallback_s)


def energy_window(
    wave: np.ndarray,
    sample_rate: int,
    window_s: float = 5.0,
    min_freq_hz: float = 2_000.0,
    threshold_db: float = -27.5,
    step_s: float = 1.0,
    fallback_s: tuple[float, float] = (2.0, 7.0),
) -> Window:
    """The reference's energy rule: the window holding the most complete high-band events.

    1. Mel spectrogram of the whole clip (:data:`ENERGY_MEL`) in dB relative to its maximum (no
       floor). Frame j stands for time j * hop / sample_rate (centred STFT frames).
    2. A frame is valid when its maximum over the mel bands whose centre frequency is at least
       `min_freq_hz` exceeds `threshold_db`. Runs of consecutive valid frames are intervals
       [first frame time, last frame time].
    3. Candidate windows start at 0, `step_s`, 2 `step_s`, ... while they fit in the clip, plus
       one aligned to the clip's end when the steps miss it (so a call in the last seconds can
       still be fully contained).
    4. The winner fully contains the most intervals; ties go to the candidate covering the most
       valid frames, then to the middle of the remaining tied candidates (the later of the two
       middle ones for an even count). So a lone call at 11-14 s of a 30 s clip gives 10-15 s
       (its interval, about 10.99-14.0 s once the STFT's 16 ms half window is counted, fits in
       the windows starting at 9 and 10), and when no window contains a whole interval (one
       event longer than the window) the window covering the most valid frames wins.
    5. No valid frame at all: `fallback_s`, shifted into the clip when the clip ends before it.

    A clip no longer than `window_s` gives Window(0, window_s).

    Args:
        wave: (samples,) mono waveform of the whole clip.
        sample_rate: its rate in Hz.
        window_s: window length in seconds.
        min_freq_hz: lowest mel band centre (Hz) that counts; birds call above the low-frequency
            noise of wind, traffic and rain.
        threshold_db: a frame is valid above this level, in dB relative to the clip's maximum.
        step_s: spacing of candidate window starts in seconds.
        fallback_s: (start, end) in seconds used when nothing is valid; must last `window_s`.

    Raises:
        ValueError: `fallback_s` does not last `window_s`, or `step_s` is not positive.
    """
    if not np.isclose(fallback_s[1] - fallback_s[0], window_s):
        raise ValueError(f"fallback_s {fallback_s} must last window_s={window_s} s; pass (start, start + {window_s})")
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    duration_s = len(wave) / sample_rate
    if duration_s <= window_s:
        return Window(0.0, window_s)
    valid = _valid_frames(wave, sample_rate, min_freq_hz, threshold_db)
    if not valid.any():
        return _clamped(fallback_s, duration_s)
    frame_times = np.arange(len(valid)) * ENERGY_MEL["hop_length"] / sample_rate
    starts = _candidate_starts(duration_s, window_s, step_s)
    return _best_window(starts, window_s, frame_times, valid)


def _valid_frames(wave: np.ndarray, sample_rate: int, min_freq_hz: float, threshold_db: float) -> np.ndarray:
    """(frames,) bool: frames whose loudest high band exceeds `threshold_db` below the clip's max."""
    f_max = min(ENERGY_MEL["f_max"], sample_rate / 2)
    mel = mel_spectrogram(wave, sample_rate, n_fft=ENERGY_MEL["n_fft"], hop_length=ENERGY_MEL["hop_length"],
                          n_mels=ENERGY_MEL["n_mels"], f_min=ENERGY_MEL["f_min"], f_max=f_max, htk=True)
    if mel.max() <= _SILENCE_POWER:  # digital silence: every frame would sit at 0 dB "relative to max"
        return np.zeros(mel.shape[1], dtype=bool)
    db = power_to_db(mel, ref=None, top_db=None)  # (n_mels, frames), 0 dB at the clip's max
    # Filter centres are the inner points of the n_mels + 2 band edges.
    centres = mel_frequencies(ENERGY_MEL["n_mels"] + 2, ENERGY_MEL["f_min"], f_max, htk=True)[1:-1]
    high = centres >= min_freq_hz
    if not high.any():
        return np.zeros(db.shape[1], dtype=bool)
    return db[high].max(axis=0) > threshold_db


def _candidate_starts(duration_s: float, window_s: float, step_s: float) -> np.ndarray:
    """Window starts 0, step, 2 step, ... that fit, plus the end-aligned start if missing."""
    last = duration_s - window_s
    starts = np.arange(0.0, last + 1e-9, step_s)
    if last - starts[-1] > 1e-6:
        starts = np.append(starts, last)
    return starts


def _intervals(valid: np.ndarray, frame_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(begin_s, end_s) arrays of the runs of consecutive valid frames."""
    edges = np.diff(np.concatenate([[0], valid.astype(np.int8), [0]]))
    first, last = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return frame_times[first], frame_times[last]


def _best_window(starts: np.ndarray, window_s: float, frame_times: np.ndarray, valid: np.ndarray) -> Window:
    """Most fully contained intervals, then most valid frames, then the middle tied start."""
    begins, ends = _intervals(valid, frame_times)
    tol = 1e-9
    contained = (begins[None, :] >= starts[:, None] - tol) & (ends[None, :] <= starts[:, None] + window_s + tol)
    counts = contained.sum(axis=1)  # (candidates,)
    valid_times = frame_times[valid]
    covered = (np.searchsorted(valid_times, starts + window_s, side="right")
               - np.searchsorted(valid_times, starts, side="left"))  # (candidates,)
    best = counts == counts.max()
    best &= covered == covered[best].max()
    tied = np.flatnonzero(best)
    return _window_at(float(starts[tied[len(tied) // 2]]), window_s)


def _window_at(start_s: float, window_s: float) -> Window:
    return Window(start_s, start_s + window_s)


def _clamped(span_s: tuple[float, float], duration_s: float) -> Window:
    """`span_s` shifted left until it ends inside the clip, never before 0."""
    length = span_s[1] - span_s[0]
    start = max(0.0, min(span_s[0], duration_s - length))
    return _window_at(start, length)


def crop(wave: np.ndarray, sample_rate: int, window: Window, window_s: float = 5.0) -> np.ndarray:
    """Cut `window` out of `wave`: exactly round(window_s * sample_rate) samples.

    The start is rounded to the nearest sample and moved back when the window would run past the
    clip's end (rounding); a clip shorter than the window is tiled from its start
    (:func:`~birdclef.audio.io.tile_to_length`).

    Args:
        wave: (samples,) mono waveform of the whole clip.
        sample_rate: its rate in Hz.
        window: the span to cut; only its start is read, the length is `window_s`.
        window_s: window length in seconds.

    Returns:
        (round(window_s * sample_rate),) array of `wave`'s dtype.

    Raises:
        ValueError: `wave` is empty.
    """
    length = int(round(window_s * sample_rate))
    if len(wave) == 0:
        raise ValueError("cannot crop an empty waveform")
    if len(wave) <= length:
        return tile_to_length(wave, length)
    start = min(max(int(round(window.start_s * sample_rate)), 0), len(wave) - length)
    return wave[start : start + length]


def soundscape_windows(duration_s: float, window_s: float = 5.0) -> list[Window]:
    """Consecutive windows [k window_s, (k + 1) window_s) covering a soundscape.

    A 60 s file gives 12 windows ending at 5, 10, ..., 60 s. Any remainder gets one more window
    that runs past the end (62 s: a 13th window 60-65 s, whose audio is zero padded), except a
    remainder under 1 ms, which is rounding noise of the duration (e.g. 60.00003 s still gives 12).

    Raises:
        ValueError: `duration_s` or `window_s` is not positive.
    """
    if duration_s <= 0 or window_s <= 0:
        raise ValueError(f"need positive durations, got duration_s={duration_s}, window_s={window_s}")
    n_windows = max(1, int(np.ceil((duration_s - _TAIL_TOLERANCE_S) / window_s)))
    return [Window(k * window_s, (k + 1) * window_s) for k in range(n_windows)]


def row_ids(stem: str, windows: list[Window]) -> list[str]:
    """Competition row ids ``<stem>_<end second>`` (end rounded to an int), e.g. ``XCB_DEV_000_5``."""
    return [f"{stem}_{int(round(w.end_s))}" for w in windows]


_ROW_ID = re.compile(r"(.+)_(\d+)(\.\d+)?", re.ASCII)
"""``<soundscape_stem>_<end second>``, split at the last underscore (the stem may hold underscores)."""


def _row_id_error(row_id: object) -> ValueError:
    return ValueError(f"malformed row_id {row_id!r}: expected '<soundscape_stem>_<end_second>', e.g. 'XCB_DEV_000_5'")


def parse_row_id(row_id: str) -> tuple[str, int]:
    """Split a competition row id ``<soundscape_stem>_<end_s>`` (the inverse of :func:`row_ids`).

    Args:
        row_id: e.g. ``"XCB_DEV_000_60"``; the stem may itself contain underscores.

    Returns:
        ``(stem, end_s)``, e.g. ``("XCB_DEV_000", 60)``.

    Raises:
        ValueError: `row_id` is not a string, or does not end in ``_<digits>`` after a non-empty stem.
    """
    match = _ROW_ID.fullmatch(row_id) if isinstance(row_id, str) else None
    if match is None or match.group(3) is not None:
        raise _row_id_error(row_id)
    return match.group(1), int(match.group(2))


def is_row_id(row_id: object) -> bool:
    """True when :func:`parse_row_id` accepts `row_id`."""
    match = _ROW_ID.fullmatch(row_id) if isinstance(row_id, str) else None
    return match is not None and match.group(3) is None


def split_row_ids(row_ids: Iterable[object]) -> tuple[list[str], np.ndarray]:
    """Stems and end seconds (float64) of row ids; ends may be decimal (``s_2.5``: windows at another hop).

    Raises:
        ValueError: a row id is not ``<soundscape_stem>_<end_second>``.
    """
    stems, ends = [], []
    for row_id in row_ids:
        match = _ROW_ID.fullmatch(str(row_id))
        if match is None:
            raise _row_id_error(row_id)
        stems.append(match.group(1))
        ends.append(float(match.group(2) + (match.group(3) or "")))
    return stems, np.asarray(ends, dtype=np.float64)

