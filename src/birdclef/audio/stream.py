"""Read a recording of any length block by block, at any number of model sample rates, in bounded memory.

:func:`open_stream` decodes the file in blocks of native frames (float32, channels averaged to mono), with
the checks :func:`~birdclef.audio.io.load_audio` makes: a file it refuses is refused here too, with the same
:class:`~birdclef.errors.AudioError` reasons. A :class:`RateBuffer` resamples those blocks to one target rate
with soxr's streaming resampler (``soxr.ResampleStream``, HQ as ``load_audio``; its concatenated output is the
one-shot ``soxr.resample`` output) and keeps only the samples still needed, so a 10-hour file costs what a
minute does. Samples before the file's start and after its end read as zeros, as in
:func:`~birdclef.infer.base.context_windows`, so windows cut from the stream equal those of whole-file decoding.

Example:
    >>> native_rate, blocks = open_stream(Path("long.wav"))
    >>> buffer = RateBuffer(native_rate, rate=32_000)
    >>> for block in blocks:
    ...     buffer.feed(block)
    ...     window = buffer.take(0, 160_000)          # once buffer.end >= 160_000
    >>> buffer.finish()
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from birdclef.audio.io import audio_info
from birdclef.errors import AudioError

BLOCK_FRAMES = 65_536
"""Native frames decoded per read (about 1.4 s at 48 kHz)."""


def open_stream(path: Path, frames: int = BLOCK_FRAMES) -> tuple[int, Iterator[np.ndarray]]:
    """(native rate, iterator of (n,) float32 mono blocks of `path` in order; the last may be shorter).

    The header is checked at once; decoding errors surface while iterating.

    Raises:
        AudioError: the file is missing, empty, truncated, undecodable (also midway), has a sample rate
            outside :data:`~birdclef.audio.io.SAMPLE_RATE_RANGE`, decodes to no samples, or holds NaN/Inf
            (the message gives the time of the first one).
    """
    path = Path(path)
    info = audio_info(path)
    if info.defect is not None:
        raise AudioError(path, info.defect)
    return info.sample_rate, _blocks(path, info.sample_rate, frames)


def _blocks(path: Path, rate: int, frames: int) -> Iterator[np.ndarray]:
    done = 0
    try:
        with sf.SoundFile(path) as f:
            while True:
                data = f.read(frames, dtype="float32", always_2d=True)  # (n, channels)
                if len(data) == 0:
                    break
                wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
                _check_finite(path, wave, done, rate)
                done += len(wave)
                yield np.ascontiguousarray(wave)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(path, f"cannot decode ({exc})") from None
    if done == 0:
        raise AudioError(path, "decoded to zero samples (truncated or corrupt file)")


def _check_finite(path: Path, wave: np.ndarray, offset: int, rate: int) -> None:
    finite = np.isfinite(wave)
    if not finite.all():
        at = (offset + int(np.argmin(finite))) / rate
        raise AudioError(path, f"holds NaN or Inf samples (first at {at:.3f} s)")


class RateBuffer:
    """The samples of one stream at `rate` (Hz) that are still needed, addressed by absolute sample index.

    Args:
        native_rate: the file's rate; blocks passed to :meth:`feed` are at this rate.
        rate: the target rate; equal rates pass the blocks through untouched.
    """

    def __init__(self, native_rate: int, rate: int):
        self.rate = int(rate)
        self._stream = None if native_rate == rate else soxr.ResampleStream(native_rate, rate, 1, dtype="float32",
                                                                            quality="HQ")
        self._data = np.zeros(0, dtype=np.float32)
        self._pending: list[np.ndarray] = []  # fed chunks not yet joined to _data (joined on demand: one copy)
        self._pending_len = 0
        self.start = 0
        """Absolute index of the first sample held."""
        self.ended = False
        """True once :meth:`finish` was called: :attr:`end` is then the stream's length."""

    @property
    def end(self) -> int:
        """Absolute index one past the last sample received so far."""
        return self.start + len(self._data) + self._pending_len

    def _append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pending.append(samples.astype(np.float32, copy=False))
            self._pending_len += len(samples)

    def _join(self) -> None:
        if self._pending:
            self._data = np.concatenate([self._data, *self._pending])
            self._pending, self._pending_len = [], 0

    def feed(self, block: np.ndarray) -> None:
        """Append one native block (resampled to :attr:`rate`)."""
        self._append(block if self._stream is None else self._stream.resample_chunk(block))

    def finish(self) -> None:
        """Flush the resampler: the stream has ended and :attr:`end` is its final length."""
        if self._stream is not None:
            self._append(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self.ended = True

    def take(self, first: int, stop: int) -> np.ndarray:
        """Samples [first, stop) as a new array; indices before 0 or past the stream's end are zeros.

        Raises:
            ValueError: part of the span was already dropped, or lies past :attr:`end` before the stream ended.
        """
        if max(first, 0) < self.start or (not self.ended and stop > self.end):
            raise ValueError(f"samples [{first}, {stop}) are not held (held: [{self.start}, {self.end}), "
                             f"ended={self.ended})")
        self._join()
        out = np.zeros(stop - first, dtype=np.float32)
        lo, hi = max(first, self.start), min(stop, self.end)
        if hi > lo:
            out[lo - first : hi - first] = self._data[lo - self.start : hi - self.start]
        return out

    def drop_before(self, index: int) -> None:
        """Forget the samples before absolute `index` (they will not be taken again)."""
        self._join()
        cut = min(max(index - self.start, 0), len(self._data))
        if cut:
            self._data = self._data[cut:].copy()
            self.start += cut
