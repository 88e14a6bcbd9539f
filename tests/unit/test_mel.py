"""LogMel (torch) against librosa's melspectrogram + power_to_db, plus shape, band and gradient checks.

Two error measures, both required well under 1e-3:
- image error: max |ours - librosa| / max |librosa| over the dB image (before min-max);
- power error: per-element |ours - librosa| / librosa on the mel power, over the cells within
  `top_db` of the peak (the cells below are floored, so they cannot change the image).
Measured on these signals: image error ~3e-5; power error ~5e-5 within 60 dB of the peak and up to
~5e-4 (0.002 dB) for the quietest cells near the 80 dB floor. That last figure is float32 FFT
rounding (torch's FFT runs in float32, numpy's in float64 internally), so the test holds those
cells to the stated 1e-3 and the rest to 2e-4.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import librosa
import numpy as np
import pytest
import torch
from conftest import SR, chirp, noise

from birdclef.config import FrontendConfig
from birdclef.features.mel import LogMel, mel_bin_of

PRESETS = ("baseline", "v3")


def _wave(seed: int = 0, duration_s: float = 5.0) -> np.ndarray:
    """A 5 s sweep 800 -> 12 kHz plus white noise: a stand-in bird call over background."""
    return chirp(duration_s, 800, 12_000, seed=seed) + noise(duration_s, seed=seed + 100, level=0.02)


def _librosa_power(wave: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v3: librosa warns about its empty low mel bands
        return librosa.feature.melspectrogram(y=wave, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                              n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=cfg.htk,
                                              power=cfg.power, norm=cfg.norm, center=True, pad_mode="constant")


def _librosa_db(wave: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    return librosa.power_to_db(_librosa_power(wave, cfg), ref=np.max, amin=1e-10, top_db=cfg.top_db)


def _run(frontend: LogMel, wave: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return frontend(torch.from_numpy(wave)[None])[0, 0].numpy()


@pytest.mark.parametrize("preset", PRESETS)
def test_db_image_matches_librosa(preset: str) -> None:
    cfg = replace(FrontendConfig.preset(preset), normalize=False)
    wave = _wave()
    ours, ref = _run(LogMel(cfg), wave), _librosa_db(wave, cfg)
    assert ours.shape == ref.shape == (cfg.n_mels, 313)
    image_error = np.abs(ours - ref).max() / np.abs(ref).max()
    assert image_error < 1e-4, image_error
    assert ref.min() == pytest.approx(-80.0)  # the top_db floor is exercised


@pytest.mark.parametrize("preset", PRESETS)
def test_mel_power_matches_librosa_per_element(preset: str) -> None:
    cfg = FrontendConfig.preset(preset)
    wave = _wave(seed=3)
    with torch.no_grad():
        ours = LogMel(cfg).mel_power(torch.from_numpy(wave)[None])[0].numpy()
    ref = _librosa_power(wave, cfg)
    relative = np.abs(ours - ref) / np.maximum(ref, 1e-30)
    visible = ref > ref.max() * 10 ** (-cfg.top_db / 10)  # cells above the 80 dB floor
    loud = ref > ref.max() * 1e-6  # cells within 60 dB of the peak
    assert visible.mean() > 0.5 and loud.mean() > 0.2
    worst_visible, worst_loud = relative[visible].max(), relative[loud].max()
    assert worst_visible < 1e-3 and worst_loud < 2e-4, (worst_visible, worst_loud)


@pytest.mark.parametrize("preset", PRESETS)
def test_normalized_image_matches_librosa_min_max(preset: str) -> None:
    cfg = FrontendConfig.preset(preset)
    wave = _wave(seed=5)
    ref = _librosa_db(wave, cfg)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    ours = _run(LogMel(cfg), wave)
    assert ours.min() == 0.0 and ours.max() == pytest.approx(1.0)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("overrides", [{"htk": False}, {"power": 1.0}, {"top_db": None}, {"norm": None}])
def test_config_variants_match_librosa(overrides: dict) -> None:
    cfg = replace(FrontendConfig.preset("baseline"), normalize=False, **overrides)
    wave = _wave(seed=7)
    ours, ref = _run(LogMel(cfg), wave), _librosa_db(wave, cfg)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_batch_equals_each_example_alone() -> None:
    frontend = LogMel.from_preset("baseline")
    waves = torch.from_numpy(np.stack([_wave(seed=s) * (s + 1) for s in range(5)]))  # (5, T), unequal levels
    with torch.no_grad():
        batched = frontend(waves)
        alone = torch.cat([frontend(w[None]) for w in waves])
    assert batched.shape == (5, 1, 128, 313)
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_tone_energy_lands_in_its_mel_band(preset: str) -> None:
    cfg = FrontendConfig.preset(preset)
    tone = chirp(5.0, 3_000, 3_000)  # a 3 kHz tone with faint noise
    band_energy = _run(LogMel(cfg), tone).mean(axis=1)  # (n_mels,)
    assert abs(int(band_energy.argmax()) - mel_bin_of(3_000, cfg)) <= 1


def test_shapes_and_num_frames() -> None:
    frontend = LogMel.from_preset("baseline")
    assert frontend.num_frames(5 * SR) == 1 + 160_000 // 512 == 313
    with torch.no_grad():
        assert frontend(torch.zeros(2, 5 * SR)).shape == (2, 1, 128, 313)
        assert frontend(torch.zeros(1, 1_000)).shape == (1, 1, 128, frontend.num_frames(1_000))
        resized = LogMel.from_preset("v3", image_size=256)(torch.from_numpy(np.stack([_wave(), _wave(1)])))
    assert resized.shape == (2, 1, 256, 256) and resized.dtype == torch.float32
    assert 0.0 <= resized.min() and resized.max() <= 1.0


@pytest.mark.parametrize("normalize", [True, False])
def test_silence_gives_finite_zeros(normalize: bool) -> None:
    frontend = LogMel(replace(FrontendConfig(), normalize=normalize))
    with torch.no_grad():
        mel = frontend(torch.zeros(3, SR))
    assert torch.isfinite(mel).all() and (mel == 0).all()


def test_float64_input_gives_float32_output() -> None:
    mel = LogMel()(torch.from_numpy(_wave().astype(np.float64))[None])
    assert mel.dtype == torch.float32


def test_gradient_reaches_the_waveform() -> None:
    wave = torch.from_numpy(_wave())[None].requires_grad_(True)
    mel = LogMel(FrontendConfig(image_size=64))(wave)
    (mel * torch.linspace(0, 1, 64)).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_rejects_a_one_dimensional_wave() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        LogMel()(torch.zeros(SR))


def test_buffers_are_not_saved_and_follow_dtype_moves() -> None:
    frontend = LogMel()
    assert {"window", "fbank_t"} <= dict(frontend.named_buffers()).keys()
    assert frontend.state_dict() == {}  # rebuilt from the config, never stale in a checkpoint
    assert frontend.double().fbank_t.dtype == torch.float64
