"""Train-time spectrogram augmentation: time masks, frequency masks, random brightness/contrast.

DESIGN §5: 1-3 masks of 5-20 frames (time) or mel bins (frequency), each kind with p 0.5, then
``x * gain + bias`` with gain in [0.8, 1.2], bias in [-0.1, 0.1], clamped to [0, 1], with p 0.5.
Identity in ``eval()``. All randomness comes from torch's RNG on the input's device, so
``torch.manual_seed`` makes a run repeatable, and the whole batch is drawn at once (no Python loop
over examples).
"""

from __future__ import annotations

import torch
from torch import nn

from birdclef.config import SpecAugmentConfig

MASK_VALUE = 0.0
"""What masked cells are set to: the minimum of LogMel's [0, 1] image (silence), not the mean, so a
mask looks like a gap in the recording rather than a band of average noise."""


def random_spans(
    batch: int,
    length: int,
    prob: float,
    count_range: tuple[int, int],
    width_range: tuple[int, int],
    device: torch.device | None = None,
) -> torch.Tensor:
    """Per-example random spans along one axis, as a boolean mask.

    Each example gets, with probability `prob`, N ~ U{count_range} spans (inclusive bounds), each of
    width W ~ U{width_range} (inclusive, cut to `length`) at a uniform start that keeps it inside
    the axis. Spans may overlap. The same number of random draws is made whatever `prob` is, so
    a seed gives the same spans across configurations.

    Args:
        batch: number of examples B.
        length: axis length L (frames or mel bins).
        prob: probability that an example gets any span.
        count_range: (min, max) number of spans.
        width_range: (min, max) span width in cells.
        device: where the mask is made.

    Returns:
        (B, L) bool, True inside a span.
    """
    max_count = count_range[1]
    apply = torch.rand(batch, device=device) < prob  # (B,)
    count = torch.randint(count_range[0], max_count + 1, (batch,), device=device)  # (B,)
    width = torch.randint(width_range[0], width_range[1] + 1, (batch, max_count), device=device).clamp_max(length)
    start = (torch.rand(batch, max_count, device=device) * (length - width + 1)).floor().long()  # (B, max_count)
    active = (torch.arange(max_count, device=device) < count[:, None]) & apply[:, None]  # (B, max_count)
    pos = torch.arange(length, device=device)  # (L,)
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (B, max_count, L)
    return (inside & active[..., None]).any(dim=1)


class SpecAugment(nn.Module):
    """Random time/frequency masks and brightness/contrast on a (B, 1, F, T) mel image in [0, 1].

    In ``train()`` each example independently gets, per :class:`~birdclef.config.SpecAugmentConfig`:
    time masks (whole frames set to ``MASK_VALUE`` = 0) with ``time_mask_prob``, frequency masks
    (whole mel bins set to 0) with ``freq_mask_prob``, then with ``brightness_prob``
    ``clamp(x * gain + bias, 0, 1)``. Brightness comes after masking, so a mask can be lifted to
    ``bias`` like the rest of a quiet image. In ``eval()`` the input is returned as is (same object).

    Example:
        >>> aug = SpecAugment(SpecAugmentConfig(time_mask_prob=1.0)).train()
        >>> aug(torch.rand(4, 1, 128, 313)).shape
        torch.Size([4, 1, 128, 313])
    """

    def __init__(self, cfg: SpecAugmentConfig | None = None):
        super().__init__()
        self.cfg = cfg or SpecAugmentConfig()

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Augment a batch (train mode) or pass it through (eval mode).

        Args:
            mel: (B, C, F, T) image, normally LogMel's output scaled to [0, 1].

        Returns:
            (B, C, F, T), same dtype and device; `mel` itself in eval mode.

        Raises:
            ValueError: `mel` is not 4-D.
        """
        if not self.training:
            return mel
        if mel.dim() != 4:
            raise ValueError("SpecAugment expects a (batch, channels, mels, frames) image, "
                             f"got shape {tuple(mel.shape)}")
        c = self.cfg
        batch, _, n_mels, n_frames = mel.shape
        time_mask = random_spans(batch, n_frames, c.time_mask_prob, c.time_masks, c.time_mask_frames, mel.device)
        freq_mask = random_spans(batch, n_mels, c.freq_mask_prob, c.freq_masks, c.freq_mask_bins, mel.device)
        masked = time_mask[:, None, None, :] | freq_mask[:, None, :, None]  # (B, 1, F, T)
        out = mel.masked_fill(masked, MASK_VALUE)
        return self._brightness(out)

    def _brightness(self, mel: torch.Tensor) -> torch.Tensor:
        """``clamp(mel * gain + bias, 0, 1)`` for examples drawn with ``brightness_prob``; others unchanged."""
        c = self.cfg
        shape = (mel.shape[0],) + (1,) * (mel.dim() - 1)  # (B, 1, 1, 1)
        apply = torch.rand(shape, device=mel.device) < c.brightness_prob
        gain = torch.empty(shape, device=mel.device).uniform_(*c.gain).to(mel.dtype)
        bias = torch.empty(shape, device=mel.device).uniform_(*c.bias).to(mel.dtype)
        return torch.where(apply, (mel * gain + bias).clamp(0.0, 1.0), mel)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"time_mask_prob={c.time_mask_prob}, time_masks={c.time_masks}, time_mask_frames={c.time_mask_frames}, "
                f"freq_mask_prob={c.freq_mask_prob}, freq_masks={c.freq_masks}, freq_mask_bins={c.freq_mask_bins}, "
                f"brightness_prob={c.brightness_prob}, gain={c.gain}, bias={c.bias}")
