"""Training-window selection and soundscape windows with known answers (birdclef.audio.segments)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import SR, chirp, noise

from birdclef.audio.segments import (
    Window,
    crop,
    energy_window,
    row_ids,
    select_window,
    soundscape_windows,
)
from birdclef.config import SELECTION_STRATEGIES
from birdclef.errors import ConfigError


def with_calls(duration_s: float, calls: list[tuple[float, float]], freq_hz: float = 3_000.0) -> np.ndarray:
    """Faint white noise with a pure `freq_hz` tone over each (start_s, end_s) span."""
    wave = noise(duration_s, seed=1)
    for k, (start_s, end_s) in enumerate(calls):
        begin = int(start_s * SR)
        call = chirp(end_s - start_s, freq_hz, freq_hz, seed=2 + k)
        wave[begin : begin + len(call)] += call
    return wave


def contains(window: Window, start_s: float, end_s: float) -> bool:
    return window.start_s <= start_s and end_s <= window.end_s


# ---------------------------------------------------------------- energy rule


def test_energy_finds_the_call_and_centres_the_tie() -> None:
    window = energy_window(with_calls(30.0, [(11.0, 14.0)]), SR)
    assert contains(window, 11.0, 14.0)
    assert window == Window(10.0, 15.0)
    assert window.duration_s == 5.0


def test_energy_prefers_the_window_with_most_whole_calls() -> None:
    wave = with_calls(30.0, [(3.0, 4.0), (20.3, 21.0), (23.7, 24.7)])
    window = energy_window(wave, SR)
    assert contains(window, 20.3, 21.0) and contains(window, 23.7, 24.7)
    assert window == Window(20.0, 25.0)  # the only start that holds both later calls


def test_energy_reaches_a_call_at_the_very_end_through_the_end_aligned_window() -> None:
    window = energy_window(with_calls(12.5, [(11.0, 12.3)]), SR)
    assert window == Window(7.5, 12.5)


def test_energy_with_an_event_longer_than_the_window_stays_inside_it() -> None:
    window = energy_window(with_calls(30.0, [(5.0, 20.0)]), SR)
    assert contains(Window(5.0, 20.0), window.start_s, window.end_s)


@pytest.mark.parametrize("wave", [with_calls(30.0, [(11.0, 14.0)], freq_hz=500.0), np.zeros(30 * SR, np.float32)],
                         ids=["low-frequency-call", "digital-silence"])
def test_no_valid_frame_falls_back_to_2_to_7_s(wave: np.ndarray) -> None:
    assert energy_window(wave, SR) == Window(2.0, 7.0)


def test_fallback_is_clamped_into_a_short_clip() -> None:
    assert energy_window(np.zeros(6 * SR, np.float32), SR) == Window(1.0, 6.0)


def test_energy_on_a_clip_shorter_than_the_window_tiles() -> None:
    assert energy_window(with_calls(3.0, [(1.0, 2.0)]), SR) == Window(0.0, 5.0)


def test_energy_rejects_a_fallback_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="fallback_s"):
        energy_window(noise(30.0), SR, window_s=3.0)


def test_energy_window_length_follows_window_s() -> None:
    window = energy_window(with_calls(30.0, [(11.0, 12.0)]), SR, window_s=3.0, fallback_s=(2.0, 5.0))
    assert window.duration_s == 3.0 and contains(window, 11.0, 12.0)


# ---------------------------------------------------------------- strategies


def test_center_and_first() -> None:
    wave = noise(30.0)
    assert select_window(wave, SR, "center") == Window(12.5, 17.5)
    assert select_window(wave, SR, "first") == Window(0.0, 5.0)


def test_random_is_in_bounds_and_reproducible() -> None:
    wave = noise(12.0)
    draws = [select_window(wave, SR, "random", rng=np.random.default_rng(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(0)
    starts = [select_window(wave, SR, "random", rng=rng).start_s for _ in range(200)]
    assert min(starts) >= 0.0 and max(starts) <= 7.0
    assert len(set(starts)) == 200 and max(starts) - min(starts) > 5.0  # spread over the range


def test_random_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="rng"):
        select_window(noise(12.0), SR, "random")


def test_unknown_strategy_lists_the_names() -> None:
    with pytest.raises(ConfigError) as exc:
        select_window(noise(12.0), SR, "loudest")
    assert "loudest" in str(exc.value)
    assert all(name in str(exc.value) for name in SELECTION_STRATEGIES)


@pytest.mark.parametrize("strategy", SELECTION_STRATEGIES)
def test_short_clip_is_tiled_to_the_window(strategy: str) -> None:
    wave = chirp(2.0, 2_000, 4_000)
    window = select_window(wave, SR, strategy, filename="CSA123.ogg", rng=np.random.default_rng(0))
    assert window == Window(0.0, 5.0)
    cropped = crop(wave, SR, window)
    assert cropped.shape == (5 * SR,)
    np.testing.assert_array_equal(cropped[: 2 * SR], wave)
    np.testing.assert_array_equal(cropped[2 * SR : 4 * SR], wave)
    np.testing.assert_array_equal(cropped[4 * SR :], wave[: SR])


def test_reference_skips_the_speech_of_csa_files() -> None:
    wave = with_calls(30.0, [(11.0, 14.0)])
    assert select_window(wave, SR, "reference", filename="speciesx/CSA36385.ogg") == Window(2.0, 7.0)
    assert select_window(wave, SR, "reference", filename="CSA/XC36385.ogg") == Window(10.0, 15.0)
    assert select_window(wave, SR, "energy", filename="speciesx/CSA36385.ogg") == Window(10.0, 15.0)


def test_reference_clamps_the_csa_window_into_a_short_clip() -> None:
    assert select_window(noise(6.0), SR, "reference", filename="CSA1.ogg") == Window(1.0, 6.0)


# ---------------------------------------------------------------- crop


def test_crop_returns_exactly_the_window_samples() -> None:
    wave = np.arange(30 * SR, dtype=np.float32)
    np.testing.assert_array_equal(crop(wave, SR, Window(2.0, 7.0)), wave[2 * SR : 7 * SR])
    assert crop(wave, SR, Window(12.5, 17.5))[0] == 12.5 * SR


def test_crop_moves_a_window_past_the_end_back_inside() -> None:
    wave = np.arange(30 * SR, dtype=np.float32)
    np.testing.assert_array_equal(crop(wave, SR, Window(25.5, 30.5)), wave[-5 * SR :])


def test_crop_rejects_an_empty_wave() -> None:
    with pytest.raises(ValueError, match="empty"):
        crop(np.zeros(0, np.float32), SR, Window(0.0, 5.0))


# ---------------------------------------------------------------- soundscapes


def test_sixty_seconds_give_twelve_windows_and_row_ids() -> None:
    windows = soundscape_windows(60.0)
    assert len(windows) == 12
    assert [w.end_s for w in windows] == [5.0 * k for k in range(1, 13)]
    ids = row_ids("XCB_DEV_000", windows)
    assert ids[0] == "XCB_DEV_000_5" and ids[-1] == "XCB_DEV_000_60" and len(set(ids)) == 12


def test_a_tail_gets_its_own_padded_window() -> None:
    windows = soundscape_windows(62.3)
    assert len(windows) == 13 and windows[-1] == Window(60.0, 65.0)
    assert row_ids("S", windows)[-1] == "S_65"


def test_rounding_noise_is_not_a_tail() -> None:
    assert len(soundscape_windows(60.0 + 1 / SR)) == 12
    assert len(soundscape_windows(60.01)) == 13
    assert soundscape_windows(3.0) == [Window(0.0, 5.0)]


def test_row_ids_round_the_end_second() -> None:
    assert row_ids("a", [Window(0.0, 4.9999999), Window(5.0, 10.0000001)]) == ["a_5", "a_10"]


def test_soundscape_windows_reject_non_positive_durations() -> None:
    with pytest.raises(ValueError):
        soundscape_windows(0.0)


def test_segments_do_not_import_torch() -> None:
    code = "import sys, birdclef.audio.segments; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
