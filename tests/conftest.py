"""Shared fixtures: synthetic audio (perch-style sweeps) and the real data set when it is present."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 32_000
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIRDCLEF_SHARED_DATA", REPO.parent / "shared" / "data"))


def chirp(duration_s: float, f0: float, f1: float, sr: int = SR, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """Exponential sweep f0 -> f1 Hz plus faint white noise: a stand-in bird call, float32 in [-1, 1]."""
    t = np.arange(int(round(duration_s * sr))) / sr
    if f0 == f1:
        phase = 2 * np.pi * f0 * t
    else:
        k = np.log(f1 / f0) / duration_s
        phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(phase) + rng.normal(0.0, noise, t.size)).astype(np.float32)


def noise(duration_s: float, sr: int = SR, seed: int = 0, level: float = 0.01) -> np.ndarray:
    """White noise at `level` standard deviation, float32."""
    return np.random.default_rng(seed).normal(0.0, level, int(round(duration_s * sr))).astype(np.float32)


def write_ogg(path: Path, wave: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, format="OGG", subtype="VORBIS")
    return path


@pytest.fixture(scope="session", autouse=True)
def user_cache():
    """BIRDCLEF_CACHE (the fused BirdNET export and its runtime timings) in the system's temporary folder, never the
    user's ~/.cache; kept between sessions, as a user's cache is, so a test that loads BirdNET with
    ``infer.birdnet_runtime=auto`` pays the one-off export and timing once per machine, not once per session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIRDCLEF_CACHE", str(Path(tempfile.gettempdir()) / f"birdclef-test-cache-{os.getuid()}"))
        yield


@pytest.fixture
def ogg_clip(tmp_path: Path) -> Path:
    """A 7 s OGG at 32 kHz holding a 2 -> 6 kHz sweep."""
    return write_ogg(tmp_path / "XC000001.ogg", chirp(7.0, 2_000, 6_000))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic BirdCLEF folder (3 species x 4 clips, one 10 s train and test soundscape)."""
    from birdclef.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("synth")
    synthesize_dataset(out, n_species=3, clips_per_species=4, n_train_soundscapes=1, n_test_soundscapes=1,
                       soundscape_s=10.0, seed=3, progress=False)
    return out


@pytest.fixture
def shared_data() -> Path:
    """../shared/data/xcbirds-dev-v1, or skip the test when the real data is absent."""
    path = SHARED_DATA / "xcbirds-dev-v1"
    if not (path / "train.csv").is_file():
        pytest.skip(f"real data not found at {path}")
    return path
