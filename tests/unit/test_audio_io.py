"""Decoding, resampling, spans and every way a file can be unusable (birdclef.audio.io)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, chirp, noise, write_ogg

from birdclef.audio.io import audio_info, load_audio, tile_to_length, write_audio
from birdclef.errors import AudioError


def tone(duration_s: float, freq_hz: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    """A pure sine, float32."""
    t = np.arange(int(round(duration_s * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, sr: int = SR) -> float:
    """Frequency (Hz) of the largest FFT magnitude."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


def stepped(n_seconds: int, sr: int = SR) -> np.ndarray:
    """Second k holds the constant value (k + 1) / 10: which second a sample came from is readable."""
    return np.repeat(np.arange(1, n_seconds + 1, dtype=np.float32) / 10, sr)


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


def assert_names_file(exc: pytest.ExceptionInfo[AudioError], path: Path, words: str) -> None:
    assert exc.value.path == path
    assert str(path) in str(exc.value)
    assert words in exc.value.reason


# ---------------------------------------------------------------- decoding


def test_ogg_round_trip_keeps_length_rate_and_waveform(tmp_path: Path) -> None:
    wave = chirp(3.0, 1_000, 4_000)
    path = write_ogg(tmp_path / "XC1.ogg", wave)
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames) == (SR, 1, len(wave))
    assert info.duration_s == pytest.approx(3.0)
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.shape == wave.shape
    assert np.corrcoef(loaded, wave)[0, 1] > 0.99  # Vorbis is lossy, not a different signal


def test_span_returns_exactly_the_requested_samples(tmp_path: Path) -> None:
    path = tmp_path / "steps.wav"
    sf.write(path, stepped(6), SR, subtype="FLOAT")
    span = load_audio(path, start_s=2.0, duration_s=1.5)
    assert len(span) == int(1.5 * SR)
    np.testing.assert_array_equal(span[:SR], np.float32(0.3))
    np.testing.assert_array_equal(span[SR:], np.float32(0.4))


def test_ogg_span_is_sample_exact(tmp_path: Path) -> None:
    # A tone whose level steps each second: libsndfile 1.2.2's Vorbis seek lands 448 samples late
    # in this file near 8 s (libsndfile issue #885), so this guards load_audio's decode-and-skip.
    levels = [0.05, 0.1, 0.2, 0.4, 0.8] * 2
    wave = np.concatenate([level * tone(1.0, 1_000) for level in levels])
    path = write_ogg(tmp_path / "levels.ogg", wave)
    full = load_audio(path)
    for start_s in (1.0, 3.0, 7.9, 8.0, 8.5):
        span = load_audio(path, start_s=start_s, duration_s=1.0)
        start = int(start_s * SR)
        np.testing.assert_array_equal(span, full[start : start + SR])
    second = load_audio(path, start_s=4.0, duration_s=1.0)[SR // 10 : -SR // 10]
    assert rms(second) == pytest.approx(0.8 * 0.5 / np.sqrt(2), rel=0.05)


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = tone(1.0, 440), noise(1.0, level=0.1)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    assert audio_info(path).channels == 2
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_44k1_file_is_resampled_keeping_length_and_pitch(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tone{suffix}"
    sf.write(path, tone(2.0, 3_000, sr=44_100), 44_100)
    assert audio_info(path).sample_rate == 44_100
    wave = load_audio(path)
    assert abs(len(wave) - 2 * SR) <= 1
    assert peak_hz(wave) == pytest.approx(3_000, abs=2)
    assert rms(wave[SR // 10 : -SR // 10]) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_other_target_rate_is_honoured(ogg_clip: Path) -> None:
    wave = load_audio(ogg_clip, sample_rate=16_000)
    assert abs(len(wave) - 7 * 16_000) <= 1


def test_long_44k1_ogg_written_in_blocks_reads_back(tmp_path: Path) -> None:
    wave = tone(20.0, 2_500, sr=44_100)  # many write blocks of 65,536 frames
    path = write_audio(tmp_path / "long.ogg", wave, sample_rate=44_100)
    info = audio_info(path)
    assert (info.sample_rate, info.frames, info.format) == (44_100, len(wave), "OGG")
    loaded = load_audio(path)
    assert abs(len(loaded) - 20 * SR) <= 1
    assert peak_hz(loaded) == pytest.approx(2_500, abs=2)


def test_write_audio_wav_round_trip_is_exact(tmp_path: Path) -> None:
    wave = noise(1.0, level=0.1)
    path = write_audio(tmp_path / "sub" / "x.wav", wave)  # creates the parent folder
    np.testing.assert_allclose(load_audio(path), wave, atol=1e-4)  # 16-bit PCM default


def test_mp3_round_trip(tmp_path: Path) -> None:
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} has no MP3 support")
    path = write_audio(tmp_path / "tone.mp3", tone(3.0, 2_000))
    assert audio_info(path).format == "MP3"
    wave = load_audio(path)
    assert abs(len(wave) - 3 * SR) <= 2_000  # MP3 frames may pad the end
    assert peak_hz(wave) == pytest.approx(2_000, abs=2)
    span = load_audio(path, start_s=1.0, duration_s=1.0)
    assert len(span) == SR and peak_hz(span) == pytest.approx(2_000, abs=5)


# ---------------------------------------------------------------- spans at and past the end


def test_span_past_the_end_is_cut_not_padded(tmp_path: Path) -> None:
    path = tmp_path / "steps.wav"
    sf.write(path, stepped(3), SR, subtype="FLOAT")
    span = load_audio(path, start_s=2.0, duration_s=5.0)
    assert len(span) == SR
    np.testing.assert_array_equal(span, np.float32(0.3))


def test_span_starting_after_the_end_names_the_file(tmp_path: Path) -> None:
    path = write_ogg(tmp_path / "short.ogg", noise(2.0))
    with pytest.raises(AudioError) as exc:
        load_audio(path, start_s=3.0)
    assert_names_file(exc, path, "span starts")


@pytest.mark.parametrize("start_s, duration_s", [(-1.0, None), (0.0, 0.0), (0.0, -2.0)])
def test_invalid_span_is_rejected(ogg_clip: Path, start_s: float, duration_s: float | None) -> None:
    with pytest.raises(AudioError) as exc:
        load_audio(ogg_clip, start_s=start_s, duration_s=duration_s)
    assert_names_file(exc, ogg_clip, "invalid span")


# ---------------------------------------------------------------- unusable files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "XC404.ogg"
    for read in (load_audio, audio_info):
        with pytest.raises(AudioError) as exc:
            read(path)
        assert_names_file(exc, path, "not found")


def test_directory_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as exc:
        load_audio(tmp_path)
    assert_names_file(exc, tmp_path, "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.ogg"
    path.touch()
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert_names_file(exc, path, "empty")


def test_random_bytes_are_not_an_ogg(tmp_path: Path) -> None:
    path = tmp_path / "random.ogg"
    path.write_bytes(np.random.default_rng(0).bytes(5_000))
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert_names_file(exc, path, "cannot decode")


def test_truncated_header_is_reported(tmp_path: Path) -> None:
    good = write_ogg(tmp_path / "good.ogg", chirp(2.0, 1_000, 3_000))
    path = tmp_path / "truncated.ogg"
    path.write_bytes(good.read_bytes()[:100])  # inside the Vorbis headers
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert_names_file(exc, path, "cannot decode")


def ogg_pages(data: bytes) -> list[int]:
    """Start offsets of the Ogg pages of a whole file, walked by their lengths."""
    starts, pos = [], 0
    while pos < len(data):
        assert data.startswith(b"OggS", pos)
        starts.append(pos)
        n = data[pos + 26]
        pos += 27 + n + sum(data[pos + 27 : pos + 27 + n])
    return starts


def cut_copy(good: Path, path: Path, keep: int) -> Path:
    path.write_bytes(good.read_bytes()[:keep])
    return path


@pytest.mark.parametrize("suffix", [".ogg", ".wav", ".flac"])
def test_truncated_file_is_refused_with_both_lengths(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / f"good{suffix}"
    sf.write(good, noise(12.0, level=0.3), SR)
    path = cut_copy(good, tmp_path / f"cut{suffix}", good.stat().st_size * 5 // 12)
    info = audio_info(path)
    assert info.truncated is not None and info.truncated.startswith("truncated")
    assert audio_info(good).truncated is None
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert_names_file(exc, path, "truncated")
    if suffix == ".wav":
        assert "header says 12.00 s, file holds 5.00 s" in exc.value.reason
    if suffix == ".flac":
        assert "header says 12.00 s" in exc.value.reason
    with pytest.raises(AudioError, match="truncated"):
        load_audio(path, duration_s=1.0)  # even a span the file still holds: the file is not what it claims


def test_long_ogg_cut_between_or_inside_pages_is_flagged(tmp_path: Path) -> None:
    from birdclef.audio.integrity import _OGG_TAIL

    good = write_audio(tmp_path / "good.ogg", noise(90.0, level=0.3))  # in blocks: one long sf.write can crash
    data = good.read_bytes()
    assert len(data) > 2 * _OGG_TAIL  # only the file's tail is read: the walk starts mid-file
    pages = ogg_pages(data)
    assert data[pages[-1] + 5] & 0x04 and not any(data[p + 5] & 0x04 for p in pages[:-1])  # EOS on the last only
    assert audio_info(good).truncated is None
    path = cut_copy(good, tmp_path / "cut.ogg", pages[-3])
    info = audio_info(path)
    assert info.truncated is not None and "no end-of-stream page" in info.truncated
    assert f"{info.duration_s:.2f} s" in info.truncated and info.duration_s < 90.0
    inside = cut_copy(good, tmp_path / "inside.ogg", pages[len(pages) // 2] + 100)
    assert "in the middle of a page" in audio_info(inside).truncated


def test_ogg_capture_pattern_inside_packet_data_is_not_taken_for_a_page() -> None:
    from birdclef.audio.integrity import _ogg_ending

    page = b"OggS\x00\x04" + bytes(20) + b"\x01\x03" + b"abc"  # one page, EOS, a 3-byte segment
    not_eos = page[:5] + b"\x00" + page[6:]
    fake = b"OggS" + bytes(22) + b"\x05" + bytes(5)  # "OggS" in data: its length leads nowhere
    assert _ogg_ending(fake + not_eos + page, from_file_start=False) is None
    assert _ogg_ending(fake + page + not_eos, from_file_start=False) == "no-eos"
    assert _ogg_ending(fake + not_eos + page[:-1], from_file_start=False) == "mid-page"
    assert _ogg_ending(bytes(100), from_file_start=False) is None  # no pages found: no evidence of a cut


@pytest.mark.parametrize("suffix,subtype", [(".ogg", None), (".flac", None), (".wav", "PCM_16"),
                                            (".wav", "FLOAT"), (".wav", "PCM_24")])
@pytest.mark.parametrize("duration_s", [0.01, 1.0, 31.0])
@pytest.mark.parametrize("channels", [1, 2])
def test_complete_files_are_never_flagged(tmp_path: Path, suffix: str, subtype: str | None, duration_s: float,
                                          channels: int) -> None:
    wave = noise(duration_s, level=0.3)
    wave = np.stack([wave, wave[::-1]], axis=1) if channels == 2 else wave
    path = tmp_path / f"x{suffix}"
    with sf.SoundFile(path, "w", SR, channels, subtype=subtype) as f:
        for begin in range(0, len(wave), 65_536):  # in blocks, as write_audio does: one long OGG write can crash
            f.write(wave[begin : begin + 65_536])
    assert audio_info(path).truncated is None
    assert len(load_audio(path)) == len(wave)


def test_wav_with_an_unknown_data_size_is_not_flagged(tmp_path: Path) -> None:
    """Streaming writers (ffmpeg to a pipe) leave the data size at 0xFFFFFFFF: the length is unknown, not cut."""
    path = tmp_path / "stream.wav"
    sf.write(path, noise(1.0, level=0.3), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert audio_info(path).truncated is None


@pytest.mark.parametrize("rate", [1, 100, 2_000_000_000])
def test_implausible_sample_rate_is_refused(tmp_path: Path, rate: int) -> None:
    """At 1 Hz a second of samples would resample to gigabytes; at 2 GHz to a single sample."""
    path = tmp_path / "rate.wav"
    sf.write(path, noise(1.0, level=0.3), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")  # fmt chunk: sample rate
    path.write_bytes(bytes(data))
    assert audio_info(path).sample_rate == rate
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert_names_file(exc, path, f"sample rate {rate} Hz is outside")


def test_zero_length_wav(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    assert path.stat().st_size > 0  # a header, no samples
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert_names_file(exc, path, "zero length")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    wave = noise(1.0, level=0.1)
    wave[1_000] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert_names_file(exc, path, "NaN")


# ---------------------------------------------------------------- tiling


def test_tile_to_length_repeats_then_cuts() -> None:
    wave = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(tile_to_length(wave, 7), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(tile_to_length(wave, 2), [0, 1])
    with pytest.raises(ValueError, match="empty"):
        tile_to_length(np.zeros(0, dtype=np.float32), 5)
