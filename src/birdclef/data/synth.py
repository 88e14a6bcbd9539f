"""Generate a synthetic dataset in the BirdCLEF layout, so demos and tests run on a fresh machine.

Each species gets its own call type (rising or falling chirp, trill, harmonic stack, pulse train, warble or
band-passed noise burst) in its own frequency band, drawn from the seed. Calls are mixed at known SNRs into
pink-to-brown noise with a faint mains hum and stray tone blips. Test soundscapes follow xcbirds-dev-v1: each 5 s
window holds 0-3 of the file's "present" species, every event lies inside one window, `solution.csv` marks them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from birdclef.audio.io import write_audio
from birdclef.errors import ConfigError, DatasetError
from birdclef.utils.io import write_csv_atomic, write_text_atomic

WINDOW_S = 5.0
"""Length of a scored window (s); row_id = `<stem>_<end_s>`."""
CALL_KINDS = ("chirp_up", "chirp_down", "trill", "harmonic", "pulses", "warble", "noise_burst")
TRAIN_COLUMNS = ["primary_label", "secondary_labels", "type", "filename", "collection", "rating", "latitude",
                 "longitude", "scientific_name", "common_name", "author", "license", "url"]
TAXONOMY_COLUMNS = ["primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name"]
EVENT_COLUMNS = ["soundscape", "label", "start_s", "end_s", "snr_db"]
_KIND_INFO = {  # kind: (epithet, common name, class_name, call duration range s, rate range Hz)
    "chirp_up": ("ascendens", "Rising chirper", "Aves", (0.12, 0.3), (1.0, 1.0)),
    "chirp_down": ("descendens", "Falling chirper", "Aves", (0.12, 0.3), (1.0, 1.0)),
    "trill": ("trillans", "Trilling cricket", "Insecta", (0.5, 1.1), (14.0, 40.0)),
    "harmonic": ("harmonica", "Hooting piper", "Aves", (0.25, 0.6), (4.0, 8.0)),
    "pulses": ("pulsans", "Clicking frog", "Amphibia", (0.4, 1.0), (6.0, 18.0)),
    "warble": ("modulans", "Warbler", "Aves", (0.4, 0.9), (5.0, 12.0)),
    "noise_burst": ("strepens", "Rasping squirrel", "Mammalia", (0.1, 0.3), (1.0, 1.0)),
}
_SPECIES_PER_WINDOW_P = (0.25, 0.45, 0.22, 0.08)
"""P(0, 1, 2, 3 species in a test window), as in xcbirds-dev-v1."""
_TRAIN_SOUNDSCAPE_S = 60.0


@dataclass(frozen=True)
class CallSpec:
    """The call of one synthetic species; each call varies slightly around these values."""

    label: str
    kind: str
    """One of CALL_KINDS."""
    freq_hz: float
    """Centre of the species' band (the dominant frequency of its calls)."""
    duration_s: float
    """Typical length of one call."""
    rate_hz: float
    """Amplitude-modulation (trill), click (pulses) or vibrato (warble, harmonic) rate."""
    gap_s: float
    """Typical silence between calls of a bout."""


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize_dataset` wrote; `seconds_written` is the audio duration of all files together."""

    out: Path
    n_species: int
    n_train_clips: int
    n_test_soundscapes: int
    seconds_written: float
    elapsed_s: float


@dataclass
class _AudioJob:
    path: Path
    duration_s: float
    events: list[tuple[str, float, float, float]]  # (label, start_s, end_s, snr_db) of each bout to mix in
    seed: tuple[int, ...]
    babble_s: float = 0.0
    row: dict[str, object] = field(default_factory=dict)  # its train.csv row (training clips only)


def _fade(n: int, ramp: int) -> np.ndarray:
    """(n,) envelope: raised-cosine ramps of `ramp` samples at both ends, 1 between."""
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    rise = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
    env[:ramp], env[n - ramp :] = rise, rise[::-1]
    return env


def _fm_phase(inst_hz: np.ndarray, sample_rate: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(inst_hz) / sample_rate


def _harmonic(t: np.ndarray, f: float, rate: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    phase = _fm_phase(0.5 * f * (1 + 0.015 * np.sin(2 * np.pi * rate * t)), sr)
    amps = [(k, a) for k, a in ((1, 0.5), (2, 1.0), (3, 0.6), (4, 0.3)) if 0.55 * k * f < 0.45 * sr]
    return sum(a * np.sin(k * phase) for k, a in amps)


def _pulses(t: np.ndarray, f: float, rate: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    n_click = max(int(0.004 * sr), 4)  # 4 ms tone pips
    click = np.hanning(n_click) * np.sin(2 * np.pi * f * np.arange(n_click) / sr)
    starts = np.arange(0, max(len(t) - len(click), 1), max(int(sr / rate), len(click)))
    out = np.zeros(max(len(t), len(click)))
    out[starts[:, None] + np.arange(len(click))] = click
    return out[: len(t)]


def _shaped_noise(n: int, sample_rate: int, rng: np.random.Generator,
                  gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(n,) white noise filtered by `gain(freqs_hz)` in the frequency domain."""
    m = 1 << max(n - 1, 1).bit_length()  # a power-of-two FFT: odd lengths can be 100x slower
    freqs = np.fft.rfftfreq(m, 1 / sample_rate)
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(m)) * gain(freqs), m)[:n]


_GENERATORS: dict[str, Callable[[np.ndarray, float, float, int, np.random.Generator], np.ndarray]] = {
    "chirp_up": lambda t, f, rate, sr, rng: np.sin(_fm_phase(np.linspace(0.85 * f, 1.18 * f, len(t)), sr)),
    "chirp_down": lambda t, f, rate, sr, rng: np.sin(_fm_phase(np.linspace(1.18 * f, 0.85 * f, len(t)), sr)),
    "trill": lambda t, f, rate, sr, rng: np.sin(2 * np.pi * f * t) * (0.5 - 0.5 * np.cos(2 * np.pi * rate * t)),
    "harmonic": _harmonic,
    "pulses": _pulses,
    "warble": lambda t, f, rate, sr, rng: np.sin(_fm_phase(f * (1 + 0.1 * np.sin(2 * np.pi * rate * t)), sr)),
    "noise_burst": lambda t, f, rate, sr, rng: _shaped_noise(
        len(t), sr, rng, lambda hz: (hz > 0.85 * f) & (hz < 1.18 * f)),
}


def make_call(spec: CallSpec, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One call of `spec` as (samples,) float32, peak 1, 10 ms fades; pitch varies ~3 %, length up to 15 %."""
    duration_s = spec.duration_s * rng.uniform(0.85, 1.15)
    freq_hz = spec.freq_hz * float(np.exp(rng.normal(0.0, 0.03)))
    t = np.arange(max(int(duration_s * sample_rate), 64)) / sample_rate
    wave = _GENERATORS[spec.kind](t, freq_hz, spec.rate_hz, sample_rate, rng) * _fade(len(t), int(0.01 * sample_rate))
    return (wave / max(float(np.abs(wave).max()), 1e-9)).astype(np.float32)


def make_bout(spec: CallSpec, duration_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(round(duration_s * sample_rate),) float32: calls of `spec` in a row, 30 ms fades, >= 1 call."""
    n = int(round(duration_s * sample_rate))
    out = np.zeros(n, dtype=np.float32)
    pos = int(rng.uniform(0.0, 0.15) * sample_rate)
    while pos < n:
        call = make_call(spec, sample_rate, rng)
        if pos + len(call) > n and out.any():
            break
        end = min(pos + len(call), n)
        out[pos:end] += call[: end - pos]
        pos = end + int(spec.gap_s * rng.uniform(0.5, 1.5) * sample_rate)
    return (out * _fade(n, int(0.03 * sample_rate))).astype(np.float32)


def make_background(duration_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Pink-to-brown noise (RMS 0.01-0.03), a faint 50 or 60 Hz hum and stray tone blips (no species)."""
    n = int(round(duration_s * sample_rate))
    slope = rng.uniform(0.8, 1.7) / 2  # amplitude ~ f^-slope: 0.4 is near pink, 0.85 near brown
    noise = _shaped_noise(n, sample_rate, rng, lambda freqs: np.maximum(freqs, 20.0) ** -slope)
    noise *= rng.uniform(0.01, 0.03) / max(float(noise.std()), 1e-12)
    t, hum_hz, level = np.arange(sample_rate) / sample_rate, rng.choice([50.0, 60.0]), float(noise.std())
    hum = sum(np.sin(2 * np.pi * k * hum_hz * t + rng.uniform(0, 7)) / k for k in (1, 2, 3))  # 1 s: whole cycles
    noise += rng.uniform(0.05, 0.25) * level * np.resize(hum, n)
    for start in rng.integers(0, n, size=rng.poisson(0.2 * duration_s)):  # not every sound in a band is a species
        k = np.arange(int(rng.uniform(0.05, 0.3) * sample_rate))
        blip = np.sin(2 * np.pi * rng.uniform(500, 0.38 * sample_rate) * k / sample_rate) * _fade(len(k), len(k) // 4)
        noise[start : start + len(k)] += rng.uniform(1, 5) * level * blip[: n - start]
    return noise.astype(np.float32)


def make_babble(duration_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like babble: a 100-220 Hz voice with harmonics below 3 kHz gated into 3-6 Hz syllables."""
    n = int(round(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(100, 220) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = _fm_phase(f0, sample_rate)
    voice = sum(np.sin(k * phase) / k for k in range(1, int(3_000 // f0.max()) + 1))
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 0.5
    wave = voice * syllables * _fade(n, int(0.05 * sample_rate))
    return (wave / max(float(np.abs(wave).max()), 1e-9)).astype(np.float32)


def design_species(n_species: int, seed: int = 0, sample_rate: int = 32_000) -> list[CallSpec]:
    """`n_species` calls in log-spaced bands from 1 kHz, neighbours of different kinds; labels syn00, syn01, ..."""
    rng = np.random.default_rng([seed, 0])
    top_hz = min(9_000.0, 0.28 * sample_rate)
    bands = np.geomspace(1_000.0, top_hz, n_species) if n_species > 1 else np.array([2_500.0])
    kinds = [CALL_KINDS[k] for k in rng.permutation(len(CALL_KINDS))]
    order, width = rng.permutation(n_species), max(2, len(str(n_species - 1)))
    specs = []
    for j, band in enumerate(order.tolist()):
        kind = kinds[band % len(kinds)]
        duration_range, rate_range = _KIND_INFO[kind][3:]
        specs.append(CallSpec(f"syn{j:0{width}d}", kind, float(bands[band]), float(rng.uniform(*duration_range)),
                              float(rng.uniform(*rate_range)), float(rng.uniform(0.08, 0.4))))
    return specs


def _rms(wave: np.ndarray) -> float:
    return max(float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))), 1e-9)


def _render(job: _AudioJob, species: dict[str, CallSpec], sample_rate: int) -> np.ndarray:
    """Background + optional opening babble + each event's bout at its SNR, limited to peak 0.95."""
    rng = np.random.default_rng(job.seed)
    wave = make_background(job.duration_s, sample_rate, rng)
    bg_rms = _rms(wave)
    if job.babble_s:
        babble = make_babble(job.babble_s, sample_rate, rng)
        wave[: len(babble)] += babble * (5 * bg_rms / _rms(babble))  # speech ~14 dB above the noise
    for label, start_s, end_s, snr_db in job.events:
        bout = make_bout(species[label], end_s - start_s, sample_rate, rng)
        start = int(round(start_s * sample_rate))
        gain = bg_rms * 10 ** (snr_db / 20) / _rms(bout)
        wave[start : start + len(bout)] += (gain * bout)[: len(wave) - start]
    peak = float(np.abs(wave).max())
    return wave * (0.95 / peak) if peak > 0.95 else wave


def _clip_events(label: str, secondary: str | None, duration_s: float, first_s: float,
                 rng: np.random.Generator) -> list[tuple[str, float, float, float]]:
    """Bouts every ~3 s of the clip's species (SNR 3-20 dB) and one of the secondary (-3-8 dB)."""
    events, n_bouts = [], max(1, int(np.ceil((duration_s - first_s) / 3)))
    bouts = [(label, (3.0, 20.0))] * n_bouts + ([(secondary, (-3.0, 8.0))] if secondary else [])
    for who, snr_range in bouts:
        bout_s = min(rng.uniform(1.0, 3.0), duration_s - first_s)
        start_s = rng.uniform(first_s, duration_s - bout_s)
        events.append((who, start_s, start_s + bout_s, rng.uniform(*snr_range)))
    return events


def _plan_clips(specs: list[CallSpec], clips_per_species: int, seed: int, out: Path) -> list[_AudioJob]:
    """One job per training clip, with its train.csv row; ~15 % carry a secondary species."""
    rng = np.random.default_rng([seed, 1])
    n_clips = len(specs) * clips_per_species
    ids = rng.choice(np.arange(100_000, 1_000_000), size=n_clips, replace=False)
    csa = set(rng.choice(n_clips, size=min(2, n_clips // 4), replace=False).tolist())
    jobs = []
    for k in range(n_clips):
        spec = specs[k // clips_per_species]
        is_csa = k in csa
        duration_s = round(rng.uniform(7.0 if is_csa else 2.0, 20.0), 3)
        others = [s.label for s in specs if s.label != spec.label]
        secondary = str(rng.choice(others)) if others and rng.random() < 0.15 else None
        name = f"{'CSA' if is_csa else 'XC'}{ids[k]}"
        filename = f"{spec.label}/{name}.ogg"
        events = _clip_events(spec.label, secondary, duration_s, 2.0 if is_csa else 0.0, rng)
        row = {"primary_label": spec.label, "secondary_labels": str([secondary] if secondary else []),
               "type": str(rng.choice(["call", "song"])), "filename": filename,
               "collection": "CSA" if is_csa else "XC", "rating": float(rng.choice([0.0, 3.5, 4.0, 4.5, 5.0])),
               "latitude": round(rng.uniform(-10, 50), 4), "longitude": round(rng.uniform(-80, 40), 4),
               "author": f"Synthetic Recordist {int(rng.integers(1, 9))}", "license": "CC0 1.0 (synthetic audio)",
               "url": f"synthetic://{filename}"}
        jobs.append(_AudioJob(out / "train_audio" / filename, duration_s, events, (seed, 2, k), 2.0 * is_csa, row))
    return jobs


def _plan_windows(labels: list[str], n_soundscapes: int, n_windows: int,
                  rng: np.random.Generator) -> list[list[list[str]]]:
    """Labels per window per soundscape; 3-6 'present' species each, cycling so every class appears."""
    order, cursor, plan = [str(x) for x in rng.permutation(labels)], 0, []
    for _ in range(n_soundscapes):
        k = min(int(rng.integers(3, 7)), len(labels))
        present = [order[(cursor + i) % len(order)] for i in range(k)]
        cursor += k
        counts = np.minimum(rng.choice(4, size=n_windows, p=_SPECIES_PER_WINDOW_P), k)
        plan.append([sorted(str(x) for x in rng.choice(present, c, replace=False)) for c in counts])
    slots = [(s, w) for s in rng.permutation(n_soundscapes) for w in rng.permutation(n_windows)]
    seen = {label for windows in plan for labels_ in windows for label in labels_}
    for label in (x for x in labels if x not in seen):  # guarantee a positive window for every class
        s, w = min(slots, key=lambda sw: len(plan[sw[0]][sw[1]]))
        plan[s][w].append(label)
    return plan


def _plan_test(labels: list[str], stems: list[str], soundscape_s: float, seed: int) -> pd.DataFrame:
    """test_events.csv: each event 1.5-4 s, inside one window, SNR 0-15 dB."""
    rng, rows = np.random.default_rng([seed, 3]), []
    plan = _plan_windows(labels, len(stems), int(round(soundscape_s / WINDOW_S)), rng)
    for stem, windows in zip(stems, plan):
        for w, window_labels in enumerate(windows):
            for label in window_labels:
                duration_s = rng.uniform(1.5, 4.0)
                start_s = round(w * WINDOW_S + rng.uniform(0.05, WINDOW_S - 0.05 - duration_s), 3)
                rows.append((stem, label, start_s, round(start_s + duration_s, 3), round(rng.uniform(0, 15), 1)))
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def _solution(events: pd.DataFrame, stems: list[str], labels: list[str], soundscape_s: float) -> pd.DataFrame:
    """0/1 per (soundscape, window) row and class column; a window is 1 where an event was pasted."""
    ends = np.arange(1, int(round(soundscape_s / WINDOW_S)) + 1) * int(WINDOW_S)
    row_ids = [f"{stem}_{end}" for stem in stems for end in ends]
    solution = pd.DataFrame(0, index=pd.Index(row_ids, name="row_id"), columns=labels)
    for event in events.itertuples(index=False):
        end = int((event.start_s // WINDOW_S + 1) * WINDOW_S)
        solution.loc[f"{event.soundscape}_{end}", event.label] = 1
    return solution.reset_index()


def _train_soundscapes(labels: list[str], n: int, seed: int, out: Path) -> list[_AudioJob]:
    """Unlabelled 60 s soundscapes: background plus 3-8 calls of random species."""
    rng, jobs = np.random.default_rng([seed, 4]), []
    for i in range(n):
        starts_s = rng.uniform(0, _TRAIN_SOUNDSCAPE_S - 4, size=int(rng.integers(3, 9)))
        events = [(str(rng.choice(labels)), s, s + rng.uniform(1.5, 4), rng.uniform(0, 12)) for s in starts_s]
        jobs.append(_AudioJob(out / "train_soundscapes" / f"SYN_SOUNDSCAPE_{i:03d}.ogg",
                              _TRAIN_SOUNDSCAPE_S, events, (seed, 5, i)))
    return jobs


def _readme(specs: list[CallSpec], settings: str, sample_rate: int) -> str:
    rows = "\n".join(f"| {s.label} | {s.kind} | {s.freq_hz:.0f} | {s.duration_s:.2f} | {s.rate_hz:.1f} |"
                     for s in sorted(specs, key=lambda s: s.label))
    return f"""# Synthetic BirdCLEF-layout dataset

**Every sound here is synthetic**, made by `birdclef.data.synth.synthesize_dataset({settings})`; the same
arguments rebuild the same audio. No real recording is included. Licence: CC0 1.0. Mono OGG Vorbis at {sample_rate} Hz.

- `taxonomy.csv`, `train.csv`: the BirdCLEF columns; about 15 % of clips also hold a secondary species.
- `train_audio/<label>/XC<id>.ogg`: 2-20 s clips of the species' calls over noise; `CSA<id>.ogg` ones open with 2 s
  of speech-like babble. `train_soundscapes/*.ogg`: unlabelled 60 s soundscapes with a few calls of random species.
- `test_soundscapes/*.ogg`: each 5 s window holds 0-3 species of the file's 3-6 present ones (1.5-4 s events inside
  one window, SNR 0-15 dB against the background RMS); `test_events.csv` lists every event.
- `solution.csv` (0/1) and `sample_submission.csv` (zeros): `row_id = <stem>_<end_s>`, classes in taxonomy order.

| primary_label | call kind | band centre (Hz) | call length (s) | rate (Hz) |
| --- | --- | --- | --- | --- |
{rows}
"""


def _write_tables(out: Path, specs: list[CallSpec], clips: list[_AudioJob], events: pd.DataFrame,
                  solution: pd.DataFrame) -> None:
    """taxonomy.csv, train.csv, solution.csv, sample_submission.csv, test_events.csv (and train_soundscapes/)."""
    rows = [(s.label, 9_000_000 + j, f"Synthetica {_KIND_INFO[s.kind][0]} {s.label}",
             f"{_KIND_INFO[s.kind][1]} {s.freq_hz / 1000:.1f} kHz", _KIND_INFO[s.kind][2]) for j, s in enumerate(specs)]
    taxonomy = pd.DataFrame(rows, columns=TAXONOMY_COLUMNS).sort_values("primary_label", ignore_index=True)
    names = taxonomy.set_index("primary_label")
    train = pd.DataFrame([job.row for job in clips]).join(names[["scientific_name", "common_name"]], on="primary_label")
    (out / "train_soundscapes").mkdir(parents=True, exist_ok=True)  # part of the layout even when left empty
    write_csv_atomic(taxonomy, out / "taxonomy.csv")
    write_csv_atomic(train[TRAIN_COLUMNS], out / "train.csv")
    write_csv_atomic(solution, out / "solution.csv")
    write_csv_atomic(solution.assign(**{label: 0 for label in names.index}), out / "sample_submission.csv")
    write_csv_atomic(events, out / "test_events.csv")


def _check_args(out: Path, n_species: int, clips_per_species: int, n_train_soundscapes: int,
                n_test_soundscapes: int, soundscape_s: float, sample_rate: int, seed: int) -> None:
    if n_species < 1 or clips_per_species < 1 or n_test_soundscapes < 1:
        raise ConfigError("n_species, clips_per_species and n_test_soundscapes must be >= 1, got "
                          f"{n_species}, {clips_per_species} and {n_test_soundscapes}")
    if n_train_soundscapes < 0 or seed < 0:
        raise ConfigError(f"n_train_soundscapes and seed must be >= 0, got {n_train_soundscapes} and {seed}")
    if soundscape_s < WINDOW_S or abs(soundscape_s / WINDOW_S - round(soundscape_s / WINDOW_S)) > 1e-9:
        raise ConfigError(f"soundscape_s must be a positive multiple of {WINDOW_S:g} s, got {soundscape_s}")
    if sample_rate < 8_000:
        raise ConfigError(f"sample_rate must be >= 8000 Hz, got {sample_rate}")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; give a folder for the synthetic dataset")


def _write_audio_jobs(jobs: list[_AudioJob], species: dict[str, CallSpec], sample_rate: int, progress: bool) -> float:
    """Render and encode every job on a thread pool (numpy and libsndfile release the GIL)."""
    def run(job: _AudioJob) -> float:
        write_audio(job.path, _render(job, species, sample_rate), sample_rate)
        return job.duration_s
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = tqdm(pool.map(run, jobs), total=len(jobs), desc="synth audio", unit="file", disable=not progress)
        return float(sum(results))


def synthesize_dataset(out: Path, n_species: int = 8, clips_per_species: int = 8, n_train_soundscapes: int = 2,
                       n_test_soundscapes: int = 6, soundscape_s: float = 60.0, sample_rate: int = 32_000,
                       seed: int = 0, progress: bool = True) -> SynthSummary:
    """Write a complete synthetic dataset in the BirdCLEF layout to `out` (see its README.md).

    Files already in `out` with the same names are overwritten; others are left alone.

    Example:
        >>> summary = synthesize_dataset(Path("data/synth"), n_species=4, progress=False)  # doctest: +SKIP

    Raises:
        ConfigError: a count below 1 (below 0 for train soundscapes), a negative seed, `soundscape_s`
            not a multiple of 5 s, or `sample_rate` < 8 kHz (a ValueError too).
        DatasetError: `out` exists and is not a folder.
    """
    settings = ", ".join(f"{key}={value}" for key, value in locals().items() if key not in ("out", "progress"))
    began, out = time.perf_counter(), Path(out)
    _check_args(out, n_species, clips_per_species, n_train_soundscapes, n_test_soundscapes, soundscape_s,
                sample_rate, seed)
    specs = design_species(n_species, seed, sample_rate)
    labels, species = sorted(s.label for s in specs), {s.label: s for s in specs}
    clips = _plan_clips(specs, clips_per_species, seed, out)
    stems = [f"SYN_TEST_{i:03d}" for i in range(n_test_soundscapes)]
    events = _plan_test(labels, stems, soundscape_s, seed)
    tests = [_AudioJob(out / "test_soundscapes" / f"{stem}.ogg", soundscape_s,
                       [tuple(e[1:]) for e in events[events["soundscape"] == stem].itertuples(index=False)],
                       (seed, 6, i)) for i, stem in enumerate(stems)]
    seconds = _write_audio_jobs(clips + _train_soundscapes(labels, n_train_soundscapes, seed, out) + tests,
                                species, sample_rate, progress)
    _write_tables(out, specs, clips, events, _solution(events, stems, labels, soundscape_s))
    write_text_atomic(_readme(specs, settings, sample_rate), out / "README.md")
    return SynthSummary(out, n_species, len(clips), n_test_soundscapes, seconds, time.perf_counter() - began)
