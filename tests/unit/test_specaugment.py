"""SpecAugment: identity in eval, masks and brightness within the configured ranges in train."""

from __future__ import annotations

import pytest
import torch

from birdclef.config import SpecAugmentConfig
from birdclef.features.specaugment import MASK_VALUE, SpecAugment, random_spans

MASKS_ONLY = SpecAugmentConfig(time_mask_prob=1.0, freq_mask_prob=1.0, brightness_prob=0.0)
NOTHING = SpecAugmentConfig(time_mask_prob=0.0, freq_mask_prob=0.0, brightness_prob=0.0)


def _image(batch: int = 8, n_mels: int = 64, frames: int = 100, seed: int = 0) -> torch.Tensor:
    """Random values in [0.05, 0.95]: no cell is 0 before masking."""
    gen = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(batch, 1, n_mels, frames, generator=gen)


def _runs(flags: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    runs, length = [], 0
    for flag in flags.tolist() + [False]:
        if flag:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def test_eval_mode_returns_the_input_itself() -> None:
    mel = _image()
    aug = SpecAugment(MASKS_ONLY).eval()
    assert aug(mel) is mel


def test_all_probabilities_zero_is_identity_in_train() -> None:
    mel = _image()
    torch.manual_seed(0)
    assert torch.equal(SpecAugment(NOTHING).train()(mel), mel)


def test_masks_zero_whole_frames_and_bins_within_the_configured_ranges() -> None:
    mel = _image(batch=16)
    torch.manual_seed(1)
    out = SpecAugment(MASKS_ONLY).train()(mel)
    zero = out[:, 0] == MASK_VALUE  # (B, F, T)
    masked_frames, masked_bins = zero.all(dim=1), zero.all(dim=2)  # (B, T), (B, F)
    assert torch.equal(zero, masked_frames[:, None, :] | masked_bins[:, :, None])  # only whole rows/columns
    for flags in list(masked_frames) + list(masked_bins):
        runs = _runs(flags)  # overlapping masks merge, so runs <= masks and each run >= one mask width
        assert 1 <= len(runs) <= 3 and min(runs) >= 5 and 5 <= sum(runs) <= 60
    torch.testing.assert_close(out[~zero[:, None]], mel[~zero[:, None]], rtol=0, atol=0)


def test_random_spans_count_and_width() -> None:
    torch.manual_seed(2)
    single = random_spans(200, 50, prob=1.0, count_range=(1, 1), width_range=(5, 20))
    widths = [_runs(row) for row in single]
    assert all(len(w) == 1 and 5 <= w[0] <= 20 for w in widths)
    assert {w[0] for w in widths} >= {5, 20}  # both ends of the inclusive range occur
    starts = single.float().argmax(dim=1)
    assert starts.min() == 0 and (starts + single.sum(dim=1)).max() == 50  # spans reach both edges


def test_random_spans_wider_than_the_axis_cover_it() -> None:
    torch.manual_seed(3)
    assert random_spans(4, 3, prob=1.0, count_range=(1, 2), width_range=(5, 20)).all()


def test_mask_probability_is_respected() -> None:
    torch.manual_seed(4)
    cfg = SpecAugmentConfig(time_mask_prob=0.5, freq_mask_prob=0.0, brightness_prob=0.0)
    out = SpecAugment(cfg).train()(_image(batch=400, n_mels=8, frames=40))
    masked = (out[:, 0] == 0).all(dim=1).any(dim=1).float().mean().item()  # share with any masked frame
    assert 0.4 < masked < 0.6


def test_brightness_is_an_affine_change_within_range() -> None:
    cfg = SpecAugmentConfig(time_mask_prob=0.0, freq_mask_prob=0.0, brightness_prob=1.0)
    mel = 0.25 + 0.5 * torch.rand(32, 1, 16, 20, generator=torch.Generator().manual_seed(5))  # never clamped
    torch.manual_seed(5)
    out = SpecAugment(cfg).train()(mel)
    flat_in, flat_out = mel.flatten(1), out.flatten(1)
    gain = (flat_out[:, 1] - flat_out[:, 0]) / (flat_in[:, 1] - flat_in[:, 0])
    bias = flat_out[:, 0] - gain * flat_in[:, 0]
    assert ((0.8 - 1e-4 <= gain) & (gain <= 1.2 + 1e-4)).all() and ((-0.1 - 1e-4 <= bias) & (bias <= 0.1 + 1e-4)).all()
    torch.testing.assert_close(flat_out, gain[:, None] * flat_in + bias[:, None], rtol=0, atol=1e-5)
    assert gain.std() > 0.05  # a different gain per example


def test_brightness_is_clamped_to_the_unit_range() -> None:
    cfg = SpecAugmentConfig(time_mask_prob=0.0, freq_mask_prob=0.0, brightness_prob=1.0,
                            gain=(1.5, 2.0), bias=(0.05, 0.1))
    torch.manual_seed(6)
    out = SpecAugment(cfg).train()(torch.rand(4, 1, 16, 20))
    assert out.min() >= 0.0 and out.max() == 1.0


def test_seed_gives_the_same_augmentation() -> None:
    aug, mel = SpecAugment().train(), _image()
    torch.manual_seed(7)
    first = aug(mel)
    torch.manual_seed(7)
    again = aug(mel)
    torch.manual_seed(8)
    other = aug(mel)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_gradient_flows_through_unmasked_cells_only() -> None:
    mel = _image(batch=4).requires_grad_(True)
    torch.manual_seed(9)
    out = SpecAugment(MASKS_ONLY).train()(mel)
    out.sum().backward()
    masked = out.detach() == 0
    assert (mel.grad[masked] == 0).all() and (mel.grad[~masked] == 1).all()


def test_rejects_a_three_dimensional_input() -> None:
    with pytest.raises(ValueError, match="batch, channels, mels, frames"):
        SpecAugment().train()(torch.rand(2, 64, 100))
