"""Batch-level waveform augmentation: mixup and background mixing from unlabelled soundscapes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from birdclef.audio.io import load_audio
from birdclef.errors import AudioError


@dataclass(frozen=True)
class MixedBatch:
    """A mixup batch: ``wave = lam * wave + (1 - lam) * wave[perm]`` and the two targets it mixes."""

    wave: torch.Tensor
    """(B, T) mixed waveforms."""
    target: torch.Tensor
    """(B, K) targets of the examples."""
    partner: torch.Tensor
    """(B, K) targets of their partners (``target[perm]``)."""
    lam: float
    mask: torch.Tensor | None = None
    """(B, K) bool: which targets of the examples are known (None: all)."""
    partner_mask: torch.Tensor | None = None
    """(B, K) bool: which targets of their partners are known (``mask[perm]``)."""
    perm: torch.Tensor | None = None
    """(B,) int64: each example's partner (so that other per-example targets, e.g. a teacher's embeddings, can
    be mixed the same way)."""


def max_targets(target: torch.Tensor, mask: torch.Tensor, other: torch.Tensor,
                other_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, mask) of two sounds mixed together: the element-wise max, known where both are known or
    where either is a known positive (1): a call heard in one half is present whatever the other holds.
    Masks are bool, or 0-1 floats (a scaled pseudo row's): then "and" is the minimum and "or" the maximum."""
    known = _or(_or(_and(mask, other_mask), _and(mask, target >= 1)), _and(other_mask, other >= 1))
    return torch.maximum(target, other), known


def _and(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a` and `b` for bool masks; their minimum for 0-1 float masks (a mask scaled by ``train.pseudo_mass_cap``)."""
    return a & b if a.dtype == torch.bool and b.dtype == torch.bool else torch.minimum(a.float(), b.float())


def _or(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a` or `b` for bool masks; their maximum for 0-1 float masks."""
    return a | b if a.dtype == torch.bool and b.dtype == torch.bool else torch.maximum(a.float(), b.float())


def mix_batch(wave: torch.Tensor, target: torch.Tensor, alpha: float, rng: np.random.Generator,
              mask: torch.Tensor | None = None) -> MixedBatch:
    """Mix each example with a random partner of the same batch (Zhang et al., 2018).

    Args:
        wave: (B, T) waveforms.
        target: (B, K) targets in [0, 1].
        alpha: Beta(alpha, alpha) parameter of the mixing weight `lam`.
        rng: draws `lam`, then the partner permutation (seeded per step, so resumed runs repeat it).
        mask: optional (B, K) bool, True where a target is known; the partners' masks travel with them.
    """
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(wave.shape[0])).to(wave.device)
    return MixedBatch(lam * wave + (1.0 - lam) * wave[perm], target, target[perm], lam,
                      mask, None if mask is None else mask[perm], perm)


def mixup_loss(loss_fn, logits: torch.Tensor, mixed: MixedBatch, mode: str = "weighted",
               sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of a mixed batch.

    Args:
        loss_fn: called as ``loss_fn(logits, target, sample_weight, mask)``.
        logits: (B, K) predictions for ``mixed.wave``.
        mixed: the batch from :func:`mix_batch`.
        mode: "weighted": ``lam * loss(t, m) + (1 - lam) * loss(t[perm], m[perm])`` (the reference's
            mixup criterion, each term with its own mask); "blend": ``loss(lam * t + (1 - lam) * t[perm])``
            known where both are, which equals "weighted" only for losses linear in the target (BCE), not
            focal; "max": ``loss(max(t, t[perm]))`` (both calls are audible in the mix, so both are
            present), known as :func:`max_targets` says.
        sample_weight: optional (B,) weights of the examples (not their partners).
    """
    if mode == "weighted":
        return (mixed.lam * loss_fn(logits, mixed.target, sample_weight, mixed.mask)
                + (1.0 - mixed.lam) * loss_fn(logits, mixed.partner, sample_weight, mixed.partner_mask))
    return loss_fn(logits, mixed_target(mixed, mode), sample_weight, mixed_mask(mixed, mode))


def mixed_target(mixed: MixedBatch, mode: str = "blend") -> torch.Tensor:
    """(B, K) single target of a mixed batch: the lam-blend ("blend") or the element-wise max ("max")."""
    if mode == "blend":
        return mixed.lam * mixed.target + (1.0 - mixed.lam) * mixed.partner
    if mode == "max":
        return torch.maximum(mixed.target, mixed.partner)
    raise ValueError(f"mixup target mode must be 'weighted', 'blend' or 'max', got {mode!r}")


def mixed_mask(mixed: MixedBatch, mode: str = "blend") -> torch.Tensor | None:
    """(B, K) bool: which targets of :func:`mixed_target` are known (None when the batch has no mask).

    A blend is known only where both halves are; a max also where either half is a known positive.
    """
    if mixed.mask is None:
        return None
    if mode == "max":
        return max_targets(mixed.target, mixed.mask, mixed.partner, mixed.partner_mask)[1]
    if mode == "blend":
        return _and(mixed.mask, mixed.partner_mask)
    raise ValueError(f"mixup target mode must be 'weighted', 'blend' or 'max', got {mode!r}")


class BackgroundBank:
    """Unlabelled soundscape audio (train_soundscapes) held in memory as float16, to mix under clips.

    Soundscapes that fail to decode are skipped (listed in `skipped`). Only the first `max_s`
    seconds of at most `max_files` files are kept, so memory stays bounded on big archives.
    """

    def __init__(self, paths: Sequence[Path], sample_rate: int = 32_000, max_files: int = 64, max_s: float = 60.0):
        self.sample_rate = sample_rate
        self.waves: list[np.ndarray] = []
        self.files: list[str] = []
        """The decoded files, in the order of `waves`."""
        self.skipped: list[tuple[str, str]] = []
        for path in sorted(paths)[:max_files]:
            try:
                self.waves.append(load_audio(path, sample_rate, duration_s=max_s).astype(np.float16))
                self.files.append(str(path))
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
