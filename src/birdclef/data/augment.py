"""Batch-level waveform augmentation: mixup and background mixing from unlabelled soundscapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from birdclef.audio.io import load_audio
from birdclef.errors import AudioError


def mixup(
    wave: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    rng: np.random.Generator,
    mode: str = "blend",
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each example with a random partner of the same batch (Zhang et al., 2018).

    Args:
        wave: (B, T) waveforms.
        target: (B, K) targets in [0, 1].
        alpha: Beta(alpha, alpha) parameter of the mixing weight `lam`.
        rng: draws `lam` and the partner permutation (seeded per step, so resumed runs repeat it).
        mode: "blend" gives lam * t + (1 - lam) * t[perm] (the usual rule; for BCE it equals the
            lam-weighted loss of the two targets); "max" gives the element-wise max (both calls are
            audible in the mix, so both are present).

    Returns:
        (mixed wave (B, T), mixed target (B, K), lam).
    """
    if mode not in ("blend", "max"):
        raise ValueError(f"mixup mode must be 'blend' or 'max', got {mode!r}")
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(wave.shape[0])).to(wave.device)
    mixed_wave = lam * wave + (1.0 - lam) * wave[perm]
    if mode == "blend":
        mixed_target = lam * target + (1.0 - lam) * target[perm]
    else:
        mixed_target = torch.maximum(target, target[perm])
    return mixed_wave, mixed_target, lam


class BackgroundBank:
    """Unlabelled soundscape audio (train_soundscapes) held in memory as float16, to mix under clips.

    Soundscapes that fail to decode are skipped (listed in `skipped`). Only the first `max_s`
    seconds of at most `max_files` files are kept, so memory stays bounded on big archives.
    """

    def __init__(self, paths: Sequence[Path], sample_rate: int = 32_000, max_files: int = 64, max_s: float = 60.0):
        self.sample_rate = sample_rate
        self.waves: list[np.ndarray] = []
        self.skipped: list[tuple[str, str]] = []
        for path in sorted(paths)[:max_files]:
            try:
                self.waves.append(load_audio(path, sample_rate, duration_s=max_s).astype(np.float16))
            except AudioError as exc:
                self.skipped.append((str(path), exc.reason))

    def __len__(self) -> int:
        return len(self.waves)

    def excerpt(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A random (num_samples,) float32 excerpt of a random soundscape (tiled if the file is short)."""
        wave = self.waves[int(rng.integers(len(self.waves)))]
        if len(wave) <= num_samples:
            return np.resize(wave, num_samples).astype(np.float32)
        start = int(rng.integers(0, len(wave) - num_samples + 1))
        return wave[start : start + num_samples].astype(np.float32)


def add_background(wave: np.ndarray, background: np.ndarray, gain: float) -> np.ndarray:
    """`wave` plus `background` scaled so its RMS is `gain` times the clip's RMS."""
    clip_rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    bg_rms = float(np.sqrt(np.mean(background.astype(np.float64) ** 2)))
    if clip_rms == 0.0 or bg_rms == 0.0:
        return wave
    return (wave + background * (gain * clip_rms / bg_rms)).astype(np.float32)
