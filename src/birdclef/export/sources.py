"""Real audio for the export's parity check and int8 calibration: a folder, or a run's own data.

``birdclef export`` never falls back on audio the user's machine may not have. Its recordings come
from, in this order:

1. ``--parity-audio DIR``: the audio files of DIR, sorted (a ``solution.csv`` beside DIR gives true
   labels, see :mod:`birdclef.export.parity`).
2. The data of the first run that records one, from ``RUN/data.json`` (written by ``birdclef
   train``: ``{"data_root": ..., "cache": ...}``): the dataset's ``test_soundscapes``, else its
   ``train_soundscapes``, else the run's training cache -- the recorded one, or ``RUN/cache`` (the
   default of ``birdclef train``) for runs without data.json.
3. Otherwise a :class:`~birdclef.errors.BirdclefError` asks for ``--parity-audio``.

Cached training clips are windows of ``window_s`` (5 s) seconds; :data:`CLIPS_PER_RECORDING` of
them, drawn in a seeded random order so that classes mix, are put end to end into one
minute-long pseudo soundscape, so a recording gives as many rows as a real soundscape does.

:func:`split_recordings` gives the parity and the calibration recordings; they never overlap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from birdclef.audio.io import load_audio
from birdclef.data.cache import WaveCache
from birdclef.errors import BirdclefError
from birdclef.audio.discover import is_audio_name
from birdclef.infer.job import list_soundscapes
from birdclef.zoo.runs import RUN_DATA, run_folder

CLIPS_PER_RECORDING = 12
"""Cached training clips put end to end into one pseudo soundscape (12 x 5 s = one minute)."""


@dataclass(frozen=True)
class Recording:
    """One recording to score: an audio file, or cached training clips end to end.

    Attributes:
        name: the file path, or ``<cache folder>#<first clip>`` for cached clips.
        path: the audio file (None for cached clips).
        cache: the training cache the clips come from.
        clips: indices into ``cache`` of the clips, in playing order.
    """

    name: str
    path: Path | None = None
    cache: WaveCache | None = field(default=None, compare=False, repr=False)
    clips: tuple[int, ...] = ()

    @property
    def stem(self) -> str:
        """Row-id prefix of the recording's rows."""
        return self.path.stem if self.path is not None else f"cache{self.clips[0]}"

    def load(self, sample_rate: int) -> np.ndarray:
        """(samples,) float32 waveform at `sample_rate`.

        Raises:
            BirdclefError: the file cannot be decoded, or the cache holds another sample rate.
        """
        if self.path is not None:
            return load_audio(self.path, sample_rate)
        assert self.cache is not None
        if self.cache.sample_rate != sample_rate:
            raise BirdclefError(f"{self.cache.path}: cached at {self.cache.sample_rate} Hz, the model needs "
                                f"{sample_rate} Hz; pass --parity-audio DIR")
        return np.concatenate([self.cache.window(i) for i in self.clips])


@dataclass
class ParityAudio:
    """Recordings to check parity and calibrate on, and where they came from (for the report)."""

    origin: str
    recordings: list[Recording]


def folder_audio(folder: Path) -> ParityAudio:
    """The audio files of `folder`, sorted.

    Raises:
        BirdclefError: the folder is missing or holds no audio.
    """
    try:
        files = list_soundscapes(Path(folder))
    except BirdclefError as exc:
        raise BirdclefError(f"parity check: {exc}") from None
    return ParityAudio(str(folder), [Recording(str(p), path=p) for p in files])


def cache_audio(cache: WaveCache) -> ParityAudio:
    """Pseudo soundscapes of :data:`CLIPS_PER_RECORDING` cached clips each, in a seeded random order."""
    order = np.random.default_rng(0).permutation(len(cache))
    groups = [order[i : i + CLIPS_PER_RECORDING] for i in range(0, len(order), CLIPS_PER_RECORDING)]
    recordings = [Recording(f"{cache.path}#{int(g[0])}", cache=cache, clips=tuple(int(i) for i in g)) for g in groups]
    return ParityAudio(f"training cache {cache.path} ({CLIPS_PER_RECORDING} clips per recording)", recordings)


def _has_audio(folder: Path) -> bool:
    return folder.is_dir() and any(is_audio_name(p.name) and p.is_file() for p in folder.iterdir())


def run_audio(run: Path) -> ParityAudio | None:
    """The recorded data of a run (see the module docstring), or None when it records none."""
    run = run_folder(run)
    record: dict = {}
    if (run / RUN_DATA).is_file():
        try:
            record = json.loads((run / RUN_DATA).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BirdclefError(f"{run / RUN_DATA}: unreadable ({exc}); pass --parity-audio DIR") from None
    if record.get("data_root"):
        root = Path(record["data_root"])
        for sub in ("test_soundscapes", "train_soundscapes"):
            if _has_audio(root / sub):
                return folder_audio(root / sub)
    for cache in ([Path(record["cache"])] if record.get("cache") else []) + [run / "cache"]:
        if (cache / "cache.json").is_file() and (cache / "index.parquet").is_file():
            return cache_audio(WaveCache(cache))
    return None


def find_audio(folder: Path | None, runs: Sequence[Path]) -> ParityAudio:
    """`folder`'s audio, else the first run's own data that is found.

    Raises:
        BirdclefError: no folder given and no run records its data; or the folder holds no audio.
    """
    if folder is not None:
        return folder_audio(folder)
    for run in runs:
        found = run_audio(Path(run))
        if found is not None and found.recordings:
            return found
    looked = ", ".join(f"{run_folder(Path(r)) / RUN_DATA}, {run_folder(Path(r)) / 'cache'}" for r in runs)
    raise BirdclefError(f"no audio to check the export's parity on: the runs record no dataset and hold no training "
                        f"cache (looked for {looked}); pass a folder of real recordings with --parity-audio DIR")


def split_recordings(audio: ParityAudio, count: int, calibrate: bool) -> tuple[list[Recording], list[Recording], str]:
    """(parity recordings, calibration recordings, a note on the split); the two never overlap.

    Parity takes the first `count` recordings; with `calibrate` (int8) calibration takes the next
    `count`. A source with fewer than ``2 * count`` recordings is split in two: parity gets the
    first half (rounded up), calibration the rest, and the note says so.

    Raises:
        BirdclefError: `calibrate` and fewer than 2 recordings (nothing left to calibrate on).
    """
    recs, count = audio.recordings, max(1, count)
    if not calibrate:
        return recs[:count], [], ""
    if len(recs) < 2:
        raise BirdclefError(f"int8 export needs at least 2 recordings, one to calibrate on and another to check "
                            f"parity on (never the same); {audio.origin} has {len(recs)}; pass a larger --parity-audio DIR")
    if len(recs) >= 2 * count:
        return recs[:count], recs[count : 2 * count], ""
    half = (len(recs) + 1) // 2
    note = (f"{audio.origin} has {len(recs)} recordings, fewer than {count} for parity + {count} for calibration: "
            f"parity on the first {half}, calibration on the other {len(recs) - half}")
    return recs[:half], recs[half:], note
