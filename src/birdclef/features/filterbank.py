"""Mel filterbank and a numpy mel spectrogram, with librosa's formulas and no torch.

The torch front end (:mod:`birdclef.features.mel`) takes its filterbank from here, and the
energy rule of window selection (:mod:`birdclef.audio.segments`) uses :func:`mel_spectrogram`
so that preparing a cache needs no torch install.
"""

from __future__ import annotations

import numpy as np

_F_SP = 200.0 / 3  # Slaney mel scale: linear part, Hz per mel
_MIN_LOG_HZ = 1_000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(freq_hz: np.ndarray | float, htk: bool = False) -> np.ndarray:
    """Hz to mel on the HTK scale (2595 log10(1 + f/700)) or Slaney's (linear < 1 kHz, log above)."""
    freq_hz = np.asanyarray(freq_hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + freq_hz / 700.0)
    mels = freq_hz / _F_SP
    log_part = freq_hz >= _MIN_LOG_HZ
    return np.where(log_part, _MIN_LOG_MEL + np.log(np.maximum(freq_hz, 1e-12) / _MIN_LOG_HZ) / _LOG_STEP, mels)


def mel_to_hz(mels: np.ndarray | float, htk: bool = False) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asanyarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = _F_SP * mels
    return np.where(mels >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOG_STEP * (mels - _MIN_LOG_MEL)), freqs)


def mel_frequencies(n_mels: int, f_min: float, f_max: float, htk: bool = False) -> np.ndarray:
    """`n_mels` frequencies (Hz) evenly spaced on the mel scale from `f_min` to `f_max`."""
    mels = np.linspace(hz_to_mel(f_min, htk), hz_to_mel(f_max, htk), n_mels)
    return mel_to_hz(mels, htk)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
) -> np.ndarray:
    """Triangular mel filters, as `librosa.filters.mel` builds them.

    Args:
        sample_rate: audio rate in Hz.
        n_fft: FFT size; the filters cover its `n_fft // 2 + 1` bins.
        n_mels: number of filters.
        f_min, f_max: lowest and highest edge in Hz (`f_max` None: Nyquist).
        htk: HTK mel scale instead of Slaney's.
        norm: "slaney" divides each triangle by its width (constant energy per band); None keeps peaks at 1.

    Returns:
        (n_mels, n_fft // 2 + 1) float32 weights.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got f_min={f_min}, f_max={f_max}")
    if norm not in ("slaney", None):
        raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_f = mel_frequencies(n_mels + 2, f_min, f_max, htk)  # band edges, (n_mels + 2,)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def power_spectrogram(wave: np.ndarray, n_fft: int, hop_length: int, chunk_frames: int = 4_096) -> np.ndarray:
    """|STFT|^2 with a periodic Hann window, centred frames and zero padding (librosa's defaults).

    Works in chunks of frames so a clip of many minutes never needs a (frames, n_fft) array at once.

    Returns:
        (n_fft // 2 + 1, frames) float32, frames = 1 + len(wave) // hop_length.
    """
    pad = n_fft // 2
    padded = np.pad(np.asarray(wave, dtype=np.float32), (pad, pad))
    if len(padded) < n_fft:
        padded = np.pad(padded, (0, n_fft - len(padded)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]  # (n_frames, n_fft), a view
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    out = np.empty((n_fft // 2 + 1, len(frames)), dtype=np.float32)
    for begin in range(0, len(frames), chunk_frames):
        spec = np.fft.rfft(frames[begin : begin + chunk_frames] * window, axis=-1)
        out[:, begin : begin + chunk_frames] = (spec.real**2 + spec.imag**2).T
    return out


def mel_spectrogram(
    wave: np.ndarray,
    sample_rate: int,
    n_fft: int = 1_024,
    hop_length: int = 512,
    n_mels: int = 128,
    f_min: float = 50.0,
    f_max: float | None = 14_000.0,
    htk: bool = True,
) -> np.ndarray:
    """Mel power spectrogram (n_mels, frames) of a 1-D waveform, librosa-compatible."""
    fbank = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, htk=htk)
    return fbank @ power_spectrogram(wave, n_fft, hop_length)


def power_to_db(power: np.ndarray, ref: float | None = None, amin: float = 1e-10, top_db: float | None = 80.0) -> np.ndarray:
    """10 log10(power / ref), floored at `top_db` below the peak; `ref` None means the array's max."""
    power = np.asarray(power)
    ref_value = float(np.max(power)) if ref is None else ref
    db = 10.0 * np.log10(np.maximum(power, amin)) - 10.0 * np.log10(max(ref_value, amin))
    if top_db is not None:
        db = np.maximum(db, db.max() - top_db)
    return db
