"""Front-end speed: OGG decoding, torch LogMel vs librosa, and `prepare` cache throughput.

A script, not a test (timings never go in assertions):

    python benchmarks/bench_frontend.py [--data DIR] [--dataset DIR] [--threads 2] [--json PATH]

(a) decode: ``load_audio`` on a 60 s soundscape from ``--data`` (a synthetic one when absent),
    in audio seconds per wall second;
(b) mel: the same 12 x 5 s batch (that soundscape cut in windows) through ``LogMel`` and through
    librosa (``melspectrogram`` + ``power_to_db(ref=np.max)`` + min-max per window), both presets,
    timed alternately in one process with torch and numpy's BLAS both limited to ``--threads``;
    median and min over ``--repeats`` after warm-up;
(c) prepare: ``birdclef.data.cache.prepare_cache`` on ``--dataset`` into a temporary folder.

Timings on a shared or virtual machine are noisy: the JSON records the load average before and
after, and min times show the undisturbed cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import torch  # noqa: E402

from birdclef.audio.io import SAMPLE_RATE, load_audio, write_audio  # noqa: E402
from birdclef.config import FrontendConfig  # noqa: E402
from birdclef.features.mel import LogMel  # noqa: E402
from timing import time_calls  # noqa: E402

DEFAULT_DATASET = Path("/work/shared/data/xcbirds-dev-v1")
WINDOW_S = 5.0
N_WINDOWS = 12


def soundscape(data: Path, tmp: Path) -> tuple[Path, bool]:
    """The first OGG under `data`, or a synthetic 60 s chirp-in-noise OGG written to `tmp`."""
    found = sorted(data.glob("*.ogg")) if data.is_dir() else []
    if found:
        return found[0], False
    t = np.arange(60 * SAMPLE_RATE) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * (2_000 + 300 * np.sin(2 * np.pi * 0.5 * t)) * t) + rng.normal(0, 0.02, t.size)
    return write_audio(tmp / "synthetic_60s.ogg", wave.astype(np.float32)), True


def bench_decode(path: Path, repeats: int) -> dict[str, Any]:
    """(a) load_audio speed on one file, in audio seconds per wall second."""
    duration_s = len(load_audio(path)) / SAMPLE_RATE
    times = time_calls(lambda: load_audio(path), repeats, warmup=1)
    return {"file": str(path), "duration_s": duration_s, "median_s": statistics.median(times),
            "min_s": min(times), "audio_s_per_s": duration_s / statistics.median(times)}


def librosa_frontend(cfg: FrontendConfig) -> Callable[[np.ndarray], np.ndarray]:
    """librosa's pipeline for a (B, T) batch: batched melspectrogram, per-window dB and min-max."""
    import librosa

    def run(waves: np.ndarray) -> np.ndarray:
        power = librosa.feature.melspectrogram(y=waves, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                               n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=cfg.htk,
                                               power=cfg.power, norm=cfg.norm)  # (B, n_mels, frames)
        out = np.empty_like(power)
        for i, example in enumerate(power):
            db = librosa.power_to_db(example, ref=np.max, top_db=cfg.top_db)
            out[i] = (db - db.min()) / max(db.max() - db.min(), 1e-6)
        return out

    return run


def bench_mel(waves: np.ndarray, preset: str, repeats: int) -> dict[str, Any]:
    """(b) LogMel vs librosa on the same batch, timed alternately so both see the same machine state."""
    cfg = FrontendConfig.preset(preset)
    frontend, reference = LogMel(cfg).eval(), librosa_frontend(cfg)
    batch = torch.from_numpy(waves)

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return frontend(batch)[:, 0].numpy()

    max_abs_diff = float(np.abs(run_torch() - reference(waves)).max())
    torch_s, librosa_s = [], []
    for _ in range(repeats):  # alternate single calls: load changes hit both sides alike
        torch_s += time_calls(run_torch, 1, warmup=1 if not torch_s else 0)
        librosa_s += time_calls(lambda: reference(waves), 1, warmup=1 if not librosa_s else 0)
    t_med, l_med = statistics.median(torch_s), statistics.median(librosa_s)
    return {"preset": preset, "batch": list(waves.shape),
            "torch_median_ms": 1e3 * t_med, "torch_min_ms": 1e3 * min(torch_s),
            "librosa_median_ms": 1e3 * l_med, "librosa_min_ms": 1e3 * min(librosa_s),
            "speedup_median": l_med / t_med, "speedup_min": min(librosa_s) / min(torch_s),
            "max_abs_diff_normalized": max_abs_diff}


def bench_prepare(dataset: Path, num_workers: int) -> dict[str, Any]:
    """(c) prepare_cache throughput, or why it could not run."""
    try:
        from birdclef.data.cache import prepare_cache
    except ImportError as exc:
        return {"available": False, "reason": f"birdclef.data.cache.prepare_cache not importable ({exc})"}
    if not (dataset / "train.csv").is_file():
        return {"available": False, "reason": f"no train.csv under {dataset}"}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = prepare_cache(dataset, Path(tmp) / "cache", num_workers=num_workers, progress=False)
        wall_s = time.perf_counter() - start
    return {"available": True, "dataset": str(dataset), "num_workers": num_workers, "n_clips": summary.n_clips,
            "n_skipped": summary.n_skipped, "seconds_of_audio": summary.seconds_of_audio, "bytes": summary.bytes,
            "elapsed_s": summary.elapsed_s, "wall_s": wall_s, "clips_per_s": summary.n_clips / wall_s,
            "audio_s_per_s": summary.seconds_of_audio / wall_s}


def print_table(result: dict[str, Any]) -> None:
    env, dec = result["env"], result["decode"]
    print(f"birdclef front-end benchmark | torch {env['torch']} | threads {env['threads']} | "
          f"cpus {env['cpu_count']} | load avg {env['loadavg_before']} -> {env['loadavg_after']}")
    source = ", synthetic" if dec["synthetic"] else ""
    print(f"\n(a) decode {Path(dec['file']).name} ({dec['duration_s']:.0f} s{source}): "
          f"{dec['median_s'] * 1e3:.0f} ms median -> {dec['audio_s_per_s']:.0f} audio s / s")
    print(f"\n(b) log-mel, {N_WINDOWS} x {WINDOW_S:.0f} s batch, ms (median / min of {result['repeats']})")
    print(f"{'preset':<10}{'torch LogMel':>16}{'librosa':>18}{'speed-up':>16}{'max |diff|':>12}")
    for row in result["mel"]:
        print(f"{row['preset']:<10}{row['torch_median_ms']:>8.1f} / {row['torch_min_ms']:<5.1f}"
              f"{row['librosa_median_ms']:>10.1f} / {row['librosa_min_ms']:<6.1f}"
              f"{row['speedup_median']:>8.1f}x / {row['speedup_min']:<4.1f}x{row['max_abs_diff_normalized']:>10.1e}")
    prep = result["prepare"]
    if prep["available"]:
        print(f"\n(c) prepare {Path(prep['dataset']).name}: {prep['n_clips']} clips ({prep['n_skipped']} skipped), "
              f"{prep['seconds_of_audio']:.0f} s of audio, {prep['bytes'] / 2**20:.1f} MiB in {prep['wall_s']:.1f} s "
              f"-> {prep['clips_per_s']:.1f} clips / s, {prep['audio_s_per_s']:.0f} audio s / s "
              f"({prep['num_workers']} workers)")
    else:
        print(f"\n(c) prepare: not available ({prep['reason']})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATASET / "test_soundscapes", help="folder of 60 s OGGs")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="BirdCLEF-layout folder for prepare")
    parser.add_argument("--threads", type=int, default=2, help="torch and BLAS threads")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "frontend.json")
    parser.add_argument("--skip-prepare", action="store_true")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Empty filters detected")  # librosa on the v3 preset
    env = {"torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "python": platform.python_version(), "loadavg_before": _loadavg()}
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=args.threads):
        path, synthetic = soundscape(args.data, Path(tmp))
        decode = {**bench_decode(path, repeats=5), "synthetic": synthetic}
        wave = load_audio(path)
        window = int(WINDOW_S * SAMPLE_RATE)
        waves = np.resize(wave, N_WINDOWS * window).reshape(N_WINDOWS, window)  # (12, 160_000)
        mel = [bench_mel(waves, preset, args.repeats) for preset in ("baseline", "v3")]
    prepare = {"available": False, "reason": "--skip-prepare"} if args.skip_prepare else bench_prepare(args.dataset, 2)
    env["loadavg_after"] = _loadavg()
    result = {"env": env, "repeats": args.repeats, "decode": decode, "mel": mel, "prepare": prepare}
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return result


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
