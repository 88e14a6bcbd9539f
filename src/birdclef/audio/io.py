"""Decode audio files to float32 mono at a fixed sample rate.

soundfile (libsndfile) reads OGG/Vorbis, FLAC, WAV and, with libsndfile >= 1.1, MP3; soxr
resamples. Every way a file can be unusable raises :class:`~birdclef.errors.AudioError`
naming the file and the cause, so batch jobs can record it and go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from birdclef.audio.integrity import first_nonfinite_s, truncation
from birdclef.errors import AudioError

SAMPLE_RATE = 32_000
"""The competition's sample rate (Hz): every waveform in the package is at this rate."""

_WRITE_BLOCK_FRAMES = 65_536
"""libsndfile can crash encoding a long OGG in one call; write it in blocks of this many frames."""

_SKIP_BLOCK_FRAMES = 262_144
"""Frames decoded per call while skipping to a span's start in an Ogg file (see :func:`_seek`)."""

SAMPLE_RATE_RANGE = (1_000, 768_000)
"""Native rates (Hz) a file may have. Outside it the header is corrupt or the file useless: at 1 Hz
a minute of samples resamples to 32k times as many (gigabytes), at 2 GHz to a single sample."""


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, without decoding the samples."""

    path: Path
    sample_rate: int
    """Native sample rate of the file (Hz)."""
    channels: int
    frames: int
    """Samples per channel at the native rate."""
    format: str
    subtype: str = ""
    """libsndfile's sample encoding ("PCM_16", "FLOAT", "VORBIS", ...)."""
    truncated: str | None = None
    """Why the file looks cut short (:func:`birdclef.audio.integrity.truncation`); None when complete."""

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def defect(self) -> str | None:
        """Why :func:`load_audio` refuses this file whatever the span, from its header alone; None if usable."""
        low, high = SAMPLE_RATE_RANGE
        if not low <= self.sample_rate <= high:
            return f"sample rate {self.sample_rate} Hz is outside {low}-{high} Hz (corrupt header?)"
        if self.frames == 0:
            return "holds no audio samples (zero length)"
        return self.truncated


def _open(path: Path) -> sf.SoundFile:
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        return sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(path, f"cannot decode ({exc})") from None


def _seek(f: sf.SoundFile, frame: int) -> None:
    """Move `f` to `frame`; Ogg files are decoded up to it and the samples dropped.

    libsndfile's Vorbis seek is not sample exact (libsndfile issue #885, still open in 1.2.2): on
    tonal files it lands hundreds of samples off and reads shifted audio without any error.
    Decoding from the start costs about 1 ms per second of audio skipped.
    """
    if f.format != "OGG":
        f.seek(frame)
        return
    while frame > 0:
        skipped = len(f.read(min(frame, _SKIP_BLOCK_FRAMES), dtype="float32", always_2d=True))
        if skipped == 0:
            break
        frame -= skipped


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header of `path`, and its container structure for truncation (no decoding).

    A file this returns can still be unusable: see :attr:`AudioInfo.defect`.

    Raises:
        AudioError: the file is missing, empty, or not a format libsndfile can open.
    """
    path = Path(path)
    with _open(path) as f:
        return _info(path, f)


def _info(path: Path, f: sf.SoundFile) -> AudioInfo:
    try:
        cut = truncation(path, f)
    except OSError as exc:
        raise AudioError(path, f"cannot read ({exc})") from None
    return AudioInfo(path, f.samplerate, f.channels, f.frames, f.format, f.subtype, cut)


def find_nonfinite(path: str | Path) -> float | None:
    """Time (s) of the first NaN or Inf sample of `path`, or None when it holds none.

    Only float-subtype files (WAV/AIFF/CAF "FLOAT" or "DOUBLE") can hold them; those are read in
    blocks, every other file is answered from its header.

    Raises:
        AudioError: the file is missing, empty, not a format libsndfile can open, or fails to decode.
    """
    path = Path(path)
    with _open(path) as f:
        try:
            return first_nonfinite_s(f)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(path, f"cannot decode ({exc})") from None


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Decode `path` to a float32 mono waveform at `sample_rate`.

    Only the span [`start_s`, `start_s + duration_s`) is returned (FLAC, WAV and MP3 seek; Ogg is
    decoded from its start because its seek is not sample exact); a span running past the end of
    the file is cut at the end, not padded.

    Args:
        path: an OGG, FLAC, WAV or MP3 file.
        sample_rate: output rate in Hz; soxr resamples when the file's rate differs.
        start_s: where the span starts, in seconds from the file's start.
        duration_s: span length in seconds; None reads to the end.

    Returns:
        (samples,) float32 array, channels averaged to mono.

    Raises:
        AudioError: missing, empty, truncated or undecodable file; a sample rate outside
            :data:`SAMPLE_RATE_RANGE`; no samples in the span; NaN or Inf samples.
    """
    path = Path(path)
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise AudioError(path, f"invalid span start_s={start_s}, duration_s={duration_s}")
    with _open(path) as f:
        native_sr = f.samplerate
        defect = _info(path, f).defect
        if defect is not None:
            raise AudioError(path, defect)
        start = int(round(start_s * native_sr))
        if start >= f.frames:
            raise AudioError(path, f"span starts at {start_s:.2f} s but the file lasts {f.frames / native_sr:.2f} s")
        frames = -1 if duration_s is None else int(round(duration_s * native_sr))
        try:
            if start:
                _seek(f, start)
            data = f.read(frames, dtype="float32", always_2d=True)  # (samples, channels)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(path, f"cannot decode ({exc})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "decoded to zero samples (truncated or corrupt file)")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    finite = np.isfinite(wave)
    if not finite.all():
        at = start_s + int(np.argmin(finite)) / native_sr
        raise AudioError(path, f"holds NaN or Inf samples (first at {at:.3f} s)")
    if native_sr != sample_rate:
        wave = soxr.resample(wave, native_sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write a mono (samples,) or (samples, channels) float waveform; the format follows the suffix.

    OGG is written as Vorbis in blocks (libsndfile can crash encoding a long file in one call).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.asarray(wave, dtype=np.float32)
    channels = 1 if wave.ndim == 1 else wave.shape[1]
    kwargs = {"format": "OGG", "subtype": "VORBIS"} if path.suffix.lower() == ".ogg" else {}
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=channels, **kwargs) as f:
        for begin in range(0, len(wave), _WRITE_BLOCK_FRAMES):
            f.write(wave[begin : begin + _WRITE_BLOCK_FRAMES])
    return path


def tile_to_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Repeat `wave` end to end until it has at least `length` samples, then cut to `length`.

    This is how clips shorter than the training window are filled (DESIGN §1).
    """
    if len(wave) == 0:
        raise ValueError("cannot tile an empty waveform")
    if len(wave) >= length:
        return wave[:length]
    reps = -(-length // len(wave))
    return np.tile(wave, reps)[:length]
