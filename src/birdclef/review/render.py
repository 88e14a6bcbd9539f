"""A review item's media, produced on request and cached on disk: spectrogram PNG and WAV snippet.

Both cover the window plus ``CONTEXT_S`` seconds either side (cut at the recording's ends), so the reviewer
hears and sees the call's surroundings; the spectrogram marks the window's edges. Files are cached under
``RESULTS/.review_cache/`` by a hash of (recording, window, settings), written atomically, so two tabs asking
for one image at once both get a whole file.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import soundfile as sf

from birdclef.audio.io import audio_info, load_audio
from birdclef.utils.io import write_atomic

CONTEXT_S = 1.0
"""Seconds of context before and after the window."""
AUDIO_RATE = 32_000
"""Sample rate of the snippets and spectrograms (Hz)."""
N_FFT, HOP = 1024, 256


def _key(path: Path, start_s: float, end_s: float, what: str) -> str:
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{start_s:.3f}|{end_s:.3f}|{CONTEXT_S}|{what}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def snippet(path: Path, start_s: float, end_s: float) -> tuple[np.ndarray, float]:
    """(samples at AUDIO_RATE, start time of the first sample) of the window with its context."""
    duration = audio_info(path).duration_s
    first = max(0.0, start_s - CONTEXT_S)
    last = min(duration, end_s + CONTEXT_S) if duration > 0 else end_s + CONTEXT_S
    wave = load_audio(path, AUDIO_RATE, start_s=first, duration_s=max(last - first, 0.05))
    return wave, first


def wav_bytes(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), AUDIO_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def audio_file(cache: Path, path: Path, start_s: float, end_s: float) -> Path:
    """The cached WAV snippet of a window (made on first request)."""
    target = Path(cache) / f"{_key(path, start_s, end_s, 'wav')}.wav"
    if not target.is_file():
        wave, _ = snippet(path, start_s, end_s)
        data = wav_bytes(wave)
        write_atomic(target, lambda tmp: tmp.write_bytes(data))
    return target


def spectrogram_png(wave: np.ndarray, first_s: float, start_s: float, end_s: float, title: str) -> bytes:
    """A log-power spectrogram with time (s in the recording) and frequency (kHz) axes, window edges dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: thread-safe in a web server

    wave = np.pad(wave, (0, max(0, N_FFT - len(wave))))
    frames = np.lib.stride_tricks.sliding_window_view(wave, N_FFT)[::HOP] * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=1)).T ** 2  # (F, T)
    db = 10 * np.log10(power + 1e-10)
    db = np.maximum(db, db.max() - 80.0)
    db = db[: (len(db) // 2) * 2].reshape(-1, 2, db.shape[1]).max(axis=1)  # 2 bins a pixel row: a lighter PNG
    fig = Figure(figsize=(8, 3), dpi=72)
    ax = fig.add_subplot()
    extent = (first_s, first_s + len(wave) / AUDIO_RATE, 0.0, AUDIO_RATE / 2000)
    ax.imshow(db, origin="lower", aspect="auto", extent=extent, cmap="magma")
    for edge in (start_s, end_s):
        ax.axvline(edge, color="white", linestyle="--", linewidth=1)
    ax.set_xlabel("time in recording (s)")
    ax.set_ylabel("frequency (kHz)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"optimize": True})
    return buf.getvalue()


def image_file(cache: Path, path: Path, start_s: float, end_s: float, title: str) -> Path:
    """The cached spectrogram PNG of a window (made on first request)."""
    target = Path(cache) / f"{_key(path, start_s, end_s, 'png')}.png"
    if not target.is_file():
        wave, first = snippet(path, start_s, end_s)
        data = spectrogram_png(wave, first, start_s, end_s, title)
        write_atomic(target, lambda tmp: tmp.write_bytes(data))
    return target
