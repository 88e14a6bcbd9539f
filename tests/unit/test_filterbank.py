"""birdclef.features.filterbank (numpy) against librosa's filters and STFT."""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
from conftest import SR, chirp, noise

from birdclef.config import FRONTEND_PRESETS
from birdclef.features.filterbank import hz_to_mel, mel_filterbank, mel_frequencies, mel_to_hz, power_spectrogram


@pytest.mark.parametrize("preset", sorted(FRONTEND_PRESETS))
@pytest.mark.parametrize("htk", [True, False])
@pytest.mark.parametrize("norm", ["slaney", None])
def test_mel_filterbank_matches_librosa(preset: str, htk: bool, norm: str | None) -> None:
    p = FRONTEND_PRESETS[preset]
    ours = mel_filterbank(SR, p["n_fft"], p["n_mels"], p["f_min"], p["f_max"], htk=htk, norm=norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v3's 512 narrow low bands: librosa warns of empty filters
        ref = librosa.filters.mel(sr=SR, n_fft=p["n_fft"], n_mels=p["n_mels"], fmin=p["f_min"], fmax=p["f_max"],
                                  htk=htk, norm=norm)
    assert ours.shape == ref.shape == (p["n_mels"], p["n_fft"] // 2 + 1)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    assert ours.max() > 1e-3  # the comparison is not vacuous


def test_mel_filterbank_rejects_bad_range() -> None:
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(SR, 1_024, 64, 50.0, SR)  # above Nyquist
    with pytest.raises(ValueError, match="norm"):
        mel_filterbank(SR, 1_024, 64, norm="l2")


@pytest.mark.parametrize("n_fft", [1_024, 2_048])
def test_power_spectrogram_matches_librosa_stft(n_fft: int) -> None:
    wave = chirp(2.0, 500, 12_000) + noise(2.0, seed=1)
    ours = power_spectrogram(wave, n_fft, 512)
    ref = np.abs(librosa.stft(wave, n_fft=n_fft, hop_length=512, center=True, pad_mode="constant")) ** 2
    assert ours.shape == ref.shape == (n_fft // 2 + 1, 1 + len(wave) // 512)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * ref.max())


def test_power_spectrogram_chunks_give_the_same_result() -> None:
    wave = chirp(1.0, 300, 3_000)
    np.testing.assert_allclose(power_spectrogram(wave, 1_024, 512, chunk_frames=7),
                               power_spectrogram(wave, 1_024, 512), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("htk", [True, False])
def test_hz_mel_round_trip(htk: bool) -> None:
    freqs = np.array([0.0, 20.0, 440.0, 999.0, 1_000.0, 1_001.0, 3_000.0, 16_000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs, htk), htk), freqs, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(hz_to_mel(freqs, htk), librosa.hz_to_mel(freqs, htk=htk), rtol=1e-9)


def test_mel_frequencies_are_increasing_and_span_the_range() -> None:
    freqs = mel_frequencies(130, 50.0, 14_000.0, htk=True)
    assert freqs[0] == pytest.approx(50.0) and freqs[-1] == pytest.approx(14_000.0)
    assert np.all(np.diff(freqs) > 0)
