"""Archive analysis: recursive discovery, streamed windows = whole-file decoding, bounded memory, shards,
Dask, resume after a crash, broken files, the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdclef.archive.file import analyze_file
from birdclef.archive.manifest import discover, in_shard, parse_shard
from birdclef.archive.scorers import window_scorer
from birdclef.audio.io import load_audio
from birdclef.audio.stream import RateBuffer
from birdclef.birdnet.predictor import BirdnetPredictor
from birdclef.cli import main
from birdclef.config import InferConfig, load_config
from birdclef.errors import BirdclefError
from birdclef.archive import analyze
from birdclef.archive.analyze import analyze_archive, merge_results

LABELS = ["Turdus merula_Eurasian Blackbird", "Erithacus rubecula_European Robin"]
NAMES = {"blabir": "Turdus merula", "eurrob": "Erithacus rubecula"}
CLASSES = ["blabir", "eurrob", "frog"]  # frog: unknown to the fake BirdNET, NaN
RAW = InferConfig(smoothing=False, power_adjust=False)
HAS_DASK = importlib.util.find_spec("distributed") is not None


class FakeModel:
    """BirdNET's interface, deterministic: logits from each 3 s chunk's mean and spread (hand-made scale: the
    Raven and threshold tests need scores on both sides of 0.5)."""

    labels = LABELS
    path = Path("fake.tflite")

    def logits(self, chunks: np.ndarray) -> np.ndarray:
        mean, spread = chunks.mean(axis=1, dtype=np.float64), chunks.std(axis=1, dtype=np.float64)
        return np.stack([40.0 * mean, 8.0 * spread - 1.0], axis=1).astype(np.float32)


def fake_birdnet(config: InferConfig = RAW) -> BirdnetPredictor:
    return BirdnetPredictor(CLASSES, NAMES, config, model=FakeModel())


def signal(duration_s: float, sr: int, seed: int) -> np.ndarray:
    """Noise whose level and offset drift slowly, so neighbouring windows score differently."""
    t = np.arange(int(round(duration_s * sr))) / sr
    rng = np.random.default_rng(seed)
    level = 0.05 + 0.04 * np.sin(2 * np.pi * t / 37.0)
    return (level * rng.standard_normal(t.size) + 0.03 * np.sin(2 * np.pi * t / 23.0)).astype(np.float32)


def write(path: Path, wave: np.ndarray, sr: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr)
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Five recordings in nested folders; two share the name rec.wav."""
    root = tmp_path / "archive"
    write(root / "siteA" / "2024" / "rec.wav", signal(23.0, 32_000, 1), 32_000)
    write(root / "siteB" / "rec.wav", signal(17.5, 32_000, 2), 32_000)
    write(root / "siteB" / "deep" / "x" / "long.flac", signal(41.0, 44_100, 3), 44_100)
    write(root / "siteC" / "LOUD.WAV", 3 * signal(12.0, 48_000, 4), 48_000)
    write(root / "top.ogg", signal(9.0, 32_000, 5), 32_000)
    (root / "siteA" / "notes.txt").write_text("not audio")
    (root / "siteA" / "._rec.wav").write_bytes(b"\0" * 10)  # macOS AppleDouble: hidden, ignored
    return root


def table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "detections.parquet")


def run(archive: Path, out: Path, **kwargs):
    return analyze_archive(archive, out, fake_birdnet(), progress=False, **kwargs)


def test_discovery_is_recursive_sorted_and_keys_rows_by_relative_path(archive: Path, tmp_path: Path) -> None:
    paths = [e.path for e in discover(archive)]
    assert paths == ["siteA/2024/rec.wav", "siteB/deep/x/long.flac", "siteB/rec.wav", "siteC/LOUD.WAV", "top.ogg"]
    summary = run(archive, tmp_path / "out")
    df = table(tmp_path / "out")
    assert summary.analysed == 5 and summary.pending == 0
    assert list(df.columns[:3]) == ["path", "start_s", "end_s"] and list(df.columns[3:]) == CLASSES
    assert df.groupby("path", sort=False).size().to_dict() == {
        "siteA/2024/rec.wav": 5, "siteB/deep/x/long.flac": 9, "siteB/rec.wav": 4, "siteC/LOUD.WAV": 3, "top.ogg": 2}
    a, b = (df[df.path == p].reset_index(drop=True) for p in ("siteA/2024/rec.wav", "siteB/rec.wav"))
    assert not np.allclose(a.loc[:3, "blabir"], b.loc[:3, "blabir"]), "same name, different files, different rows"
    assert df["frog"].isna().all(), "a class no model scores is NaN, never 0"
    assert (tmp_path / "out" / "files" / "siteB" / "rec.wav.parquet").is_file()


def test_an_archive_without_audio_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(BirdclefError, match="no audio files"):
        discover(tmp_path / "empty")


@pytest.mark.parametrize("sr, seconds", [(32_000, 600.0), (44_100, 61.3)])
def test_streamed_windows_equal_whole_file_decoding(tmp_path: Path, sr: int, seconds: float) -> None:
    """BirdNET hears 48 kHz: the stream resamples block by block; rows equal predict's on the decoded file."""
    path = write(tmp_path / "rec.flac", signal(seconds, sr, 7), sr)
    predictor = fake_birdnet()
    result = analyze_file(window_scorer(predictor), path, "rec.flac", tmp_path / "rec.parquet", block_s=20.0)
    df = pd.read_parquet(tmp_path / "rec.parquet")
    expected = predictor.predict_file(load_audio(path, predictor.sample_rate))
    assert result.windows == len(expected) == len(df)
    np.testing.assert_allclose(df[CLASSES].to_numpy(np.float64), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(df["start_s"], 5.0 * np.arange(len(df)))
    np.testing.assert_allclose(df["end_s"] - df["start_s"], 5.0)


def test_half_hop_adds_the_windows_between_rows(tmp_path: Path) -> None:
    """Hop 2.5 s: the even windows are predict's rows, the odd ones predict's rows of the file cut at 2.5 s."""
    sr = 48_000
    path = write(tmp_path / "rec.wav", signal(30.0, sr, 8), sr)
    wave = load_audio(path, sr)  # as stored (16-bit PCM)
    predictor = fake_birdnet()
    analyze_file(window_scorer(predictor), path, "rec.wav", tmp_path / "rec.parquet", hop_s=2.5, block_s=10.0)
    df = pd.read_parquet(tmp_path / "rec.parquet")
    np.testing.assert_allclose(df["start_s"], 2.5 * np.arange(12))
    probs = df[CLASSES].to_numpy(np.float64)
    np.testing.assert_allclose(probs[0::2], predictor.predict_file(wave), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs[1::2], predictor.predict_file(wave[int(2.5 * sr):]), rtol=1e-5, atol=1e-6)


def test_rate_buffer_pads_with_zeros_and_refuses_what_it_dropped() -> None:
    buf = RateBuffer(8_000, 8_000)
    buf.feed(np.arange(1, 11, dtype=np.float32))
    np.testing.assert_array_equal(buf.take(-2, 3), [0, 0, 1, 2, 3])
    buf.drop_before(5)
    with pytest.raises(ValueError, match="not held"):
        buf.take(4, 6)
    with pytest.raises(ValueError, match="not held"):
        buf.take(8, 12)  # past the end before the stream ended
    buf.finish()
    np.testing.assert_array_equal(buf.take(8, 12), [9, 10, 0, 0])


TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null"]


def make_run(root: Path, window_s: float) -> Path:
    import torch

    from birdclef.models import create_model, save_checkpoint

    config = load_config(None, TINY + [f"data.window_s={window_s}"])
    torch.manual_seed(0)
    save_checkpoint(root / "fold0" / "best.pt", create_model(config.model, 3), config, ["aaa", "bbb", "ccc"],
                    epoch=0, score=0.5)
    (root / "fold0" / "done.json").write_text(json.dumps({"fold": 0}))
    return root


@pytest.mark.slow
def test_torch_run_with_context_streams_like_predict(tmp_path: Path) -> None:
    """A 10 s model hears 2.5 s either side of each row, across block boundaries and zeros at the ends."""
    pytest.importorskip("timm")
    from birdclef.infer.predict import TorchPredictor

    path = write(tmp_path / "rec.wav", signal(62.0, 44_100, 9), 44_100)
    predictor = TorchPredictor([make_run(tmp_path / "run", 10.0)], config=RAW, device="cpu")
    analyze_file(window_scorer(predictor), path, "rec.wav", tmp_path / "rec.parquet", block_s=15.0)
    df = pd.read_parquet(tmp_path / "rec.parquet")
    expected = predictor.predict_file(load_audio(path, predictor.sample_rate))
    np.testing.assert_allclose(df[["aaa", "bbb", "ccc"]].to_numpy(np.float64), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_blend_of_a_run_and_birdnet_streams_each_at_its_own_rate(tmp_path: Path) -> None:
    """32 kHz for the run, 48 kHz for BirdNET, one stream: on a 32 kHz file exactly predict's blend."""
    pytest.importorskip("timm")
    from birdclef.infer.blend import BlendPredictor
    from birdclef.infer.predict import TorchPredictor

    path = write(tmp_path / "rec.wav", signal(27.0, 32_000, 11), 32_000)
    runs = TorchPredictor([make_run(tmp_path / "run", 5.0)], config=RAW, device="cpu")
    birdnet = BirdnetPredictor(["aaa", "bbb", "ccc"], {"aaa": "Turdus merula", "ccc": "Erithacus rubecula"}, RAW,
                               model=FakeModel())
    blend = BlendPredictor([runs, birdnet], [0.3, 0.7], RAW)
    scorer = window_scorer(blend)
    assert [m.sample_rate for m in scorer.members] == [32_000, 48_000]
    analyze_file(scorer, path, "rec.wav", tmp_path / "rec.parquet", block_s=10.0)
    df = pd.read_parquet(tmp_path / "rec.parquet")
    expected = blend.predict_file(load_audio(path, blend.sample_rate))
    np.testing.assert_allclose(df[["aaa", "bbb", "ccc"]].to_numpy(np.float64), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_exported_model_streams_like_predict(tmp_path: Path) -> None:
    """An exported ONNX graph of a 10 s model scores the streamed windows as predict scores the file."""
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    from birdclef.export.export import export_model
    from birdclef.export.runtime import ExportedPredictor

    path = write(tmp_path / "audio" / "rec.wav", signal(33.0, 32_000, 10), 32_000)
    export_model([make_run(tmp_path / "run", 10.0)], format="onnx", out=tmp_path / "model",
                 parity_audio=tmp_path / "audio", parity_count=1, config=RAW)
    predictor = ExportedPredictor(tmp_path / "model", backend="onnx", config=RAW)
    analyze_file(window_scorer(predictor), path, "rec.wav", tmp_path / "rec.parquet", block_s=10.0)
    df = pd.read_parquet(tmp_path / "rec.parquet")
    expected = predictor.predict_file(load_audio(path, predictor.sample_rate))
    np.testing.assert_allclose(df[["aaa", "bbb", "ccc"]].to_numpy(np.float64), expected, rtol=1e-4, atol=1e-5)


MEMORY_CHILD = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from test_analyze import fake_birdnet
    from birdclef.archive.file import analyze_file
    from birdclef.archive.scorers import window_scorer
    result = analyze_file(window_scorer(fake_birdnet()), Path(sys.argv[1]), "x", Path(sys.argv[2]))
    print(result.windows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
""")


def write_in_blocks(path: Path, seconds: float, sr: int) -> Path:
    """Quiet tones, written a minute at a time (FLAC packs them small; libsndfile never holds the whole file)."""
    minute = (0.01 * np.sin(2 * np.pi * 440.0 * np.arange(60 * sr) / sr)).astype(np.float32)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 60)):
            f.write(minute)
    return path


def peak_rss_mib(path: Path, tmp_path: Path) -> tuple[int, float]:
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path), str(tmp_path / f"{path.stem}.parquet"),
                           str(Path(__file__).parent)], capture_output=True, text=True, check=True)
    windows, kib = done.stdout.split()
    return int(windows), int(kib) / 1024


@pytest.mark.slow
def test_memory_stays_flat_on_a_two_hour_recording(tmp_path: Path) -> None:
    """Decoded whole at BirdNET's 48 kHz, 2 h would be 1.4 GB of float32; streamed it costs what a minute does."""
    short = write_in_blocks(tmp_path / "minute.flac", 60.0, 16_000)
    long = write_in_blocks(tmp_path / "two_hours.flac", 7200.0, 16_000)
    short_windows, short_rss = peak_rss_mib(short, tmp_path)
    long_windows, long_rss = peak_rss_mib(long, tmp_path)
    assert (short_windows, long_windows) == (12, 1440)
    assert long_rss - short_rss < 300, f"peak RSS {long_rss:.0f} MiB on 2 h vs {short_rss:.0f} MiB on 1 min"


def test_shards_merged_equal_the_single_run(archive: Path, tmp_path: Path) -> None:
    run(archive, tmp_path / "single")
    first = run(archive, tmp_path / "sharded", shard=(0, 2))
    assert first.table is None and first.pending == 5 - first.n_shard > 0
    second = run(archive, tmp_path / "sharded", shard=(1, 2))
    assert first.n_shard + second.n_shard == 5 and second.pending == 0
    assert second.table == tmp_path / "sharded" / "detections.parquet"
    pd.testing.assert_frame_equal(table(tmp_path / "sharded"), table(tmp_path / "single"))
    assert sorted(p.name for p in (tmp_path / "sharded" / "journal").glob("*.jsonl")) == [
        "shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]


def test_shards_split_by_path_hash_disjointly() -> None:
    paths = [f"site{i % 7}/rec{i}.wav" for i in range(200)]
    owners = [[i for i in range(4) if in_shard(p, i, 4)] for p in paths]
    assert all(len(o) == 1 for o in owners) and {o[0] for o in owners} == {0, 1, 2, 3}
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "0/0"):
        with pytest.raises(BirdclefError, match="--shard"):
            parse_shard(bad)


class CrashingModel(FakeModel):
    """A model with a bug: it raises on perfectly constant audio (a worker error, not a broken file)."""

    def logits(self, chunks: np.ndarray) -> np.ndarray:
        if ((chunks.std(axis=1) == 0) & (np.abs(chunks).max(axis=1) > 0.4)).any():
            raise RuntimeError("model bug on constant audio")
        return super().logits(chunks)


def crashing_birdnet() -> BirdnetPredictor:
    return BirdnetPredictor(CLASSES, NAMES, RAW, model=CrashingModel())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DASK, reason="dask.distributed not installed (the dask extra)")
def test_dask_local_cluster_gives_the_plain_table(archive: Path, tmp_path: Path) -> None:
    """Same table as a plain run; a task that fails on every retry is listed in skipped.csv, the rest finish."""
    run(archive, tmp_path / "plain")
    write(archive / "siteZ" / "constant.wav", np.full(48_000 * 8, 0.5, dtype=np.float32), 48_000)  # no resampling
    summary = run(archive, tmp_path / "dask", engine="dask", workers=2, rebuild=crashing_birdnet)
    assert summary.analysed == 5 and summary.table is not None
    assert summary.skipped == [("siteZ/constant.wav",
                                "task failed after 2 retries: RuntimeError: model bug on constant audio")]
    assert pd.read_csv(tmp_path / "dask" / "skipped.csv")["path"].tolist() == ["siteZ/constant.wav"]
    pd.testing.assert_frame_equal(table(tmp_path / "dask"), table(tmp_path / "plain"))


def test_dask_engine_needs_a_rebuild_function(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(BirdclefError, match="rebuild"):
        run(archive, tmp_path / "out", engine="dask")


def counting(monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> list[str]:
    """Patch the per-file function: record each call, and crash (a bug, not a broken file) after some calls."""
    calls: list[str] = []

    def wrapped(scorer, source, rel, dest, hop_s, block_s):
        if fail_after is not None and len(calls) == fail_after:
            raise RuntimeError("simulated crash")
        calls.append(rel)
        return analyze_file(scorer, source, rel, dest, hop_s, block_s)

    monkeypatch.setattr(analyze, "analyze_file", wrapped)
    return calls


def test_a_crashed_run_resumes_without_redoing_finished_files(archive: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    crashed = counting(monkeypatch, fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(archive, out)
    journal = out / "journal" / "shard-0-of-1.jsonl"
    with open(journal, "a") as f:
        f.write('{"path": "top.ogg", "si')  # a line torn by kill -9 counts for nothing
    stale = out / "files" / ".top.ogg.parquet.k1ll3d.tmp"  # what atomic_path leaves when killed mid-file
    stale.write_bytes(b"PAR1")
    resumed = counting(monkeypatch)
    summary = run(archive, out)
    assert not stale.exists()
    assert summary.resumed == 2 and sorted(resumed) == sorted(set(e.path for e in discover(archive)) - set(crashed))
    run(archive, tmp_path / "clean")
    pd.testing.assert_frame_equal(table(out), table(tmp_path / "clean"))

    again = counting(monkeypatch)
    run(archive, out)
    assert again == [], "a finished archive is not redone"
    changed = archive / "siteB" / "rec.wav"
    write(changed, signal(11.0, 32_000, 6), 32_000)
    os.utime(changed, ns=(1, 10**18))
    redo = counting(monkeypatch)
    run(archive, out)
    assert redo == ["siteB/rec.wav"], "a file whose size or mtime changed is redone"
    assert (table(out).path == "siteB/rec.wav").sum() == 3


KILL_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    import test_analyze
    from birdclef.archive.analyze import analyze_archive

    class SlowModel(test_analyze.FakeModel):
        def logits(self, chunks):
            time.sleep(0.2)  # slow enough to be killed halfway through the archive
            return super().logits(chunks)

    predictor = test_analyze.BirdnetPredictor(test_analyze.CLASSES, test_analyze.NAMES, test_analyze.RAW,
                                              model=SlowModel())
    analyze_archive(Path(sys.argv[1]), Path(sys.argv[2]), predictor, progress=False, block_s=5.0)
""")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_where_it_stopped(archive: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    journal = out / "journal" / "shard-0-of-1.jsonl"
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(archive), str(out), str(Path(__file__).parent)])
    try:
        for _ in range(1200):  # until two files are journaled (at most 2 min on a loaded machine)
            if journal.is_file() and journal.read_text().count("\n") >= 2 or child.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait()
    done = [json.loads(line)["path"] for line in journal.read_text().splitlines()]
    assert 2 <= len(done) < 5, "killed halfway"
    calls = counting(monkeypatch)
    run(archive, out)
    assert sorted(calls) == sorted({e.path for e in discover(archive)} - set(done))
    assert not list((out / "files").rglob("*.tmp")), "the killed file's temporary table is cleaned up"
    run(archive, tmp_path / "clean")
    pd.testing.assert_frame_equal(table(out), table(tmp_path / "clean"))


def test_broken_files_are_listed_and_the_others_finish(archive: Path, tmp_path: Path) -> None:
    (archive / "siteA" / "empty.wav").write_bytes(b"")
    (archive / "siteB" / "text.flac").write_text("this is not a FLAC file")
    bad = signal(20.0, 32_000, 3)
    bad[12 * 32_000] = np.nan  # NaN at 12 s: found after the first blocks were scored
    sf.write(archive / "siteC" / "nan.wav", bad, 32_000, subtype="FLOAT")
    out = tmp_path / "out"
    summary = run(archive, out, block_s=5.0)
    skipped = pd.read_csv(out / "skipped.csv").set_index("path")["reason"]
    assert skipped["siteA/empty.wav"] == "empty file (0 bytes)"
    assert skipped["siteB/text.flac"].startswith("cannot decode")
    assert skipped["siteC/nan.wav"] == "holds NaN or Inf samples (first at 12.000 s)"
    assert summary.analysed == 5 and len(summary.skipped) == 3 and summary.table is not None
    assert set(table(out).path) == {e.path for e in discover(archive)} - set(skipped.index)
    assert not (out / "files" / "siteC" / "nan.wav.parquet").exists(), "no half-written table"
    assert not list((out / "files").rglob("*.tmp"))


def test_other_settings_are_refused_in_the_same_folder(archive: Path, tmp_path: Path) -> None:
    run(archive, tmp_path / "out")
    with pytest.raises(BirdclefError, match="other models or settings"):
        run(archive, tmp_path / "out", hop_s=2.5)


def test_merge_refuses_an_unfinished_archive(archive: Path, tmp_path: Path) -> None:
    run(archive, tmp_path / "out", shard=(0, 2))
    with pytest.raises(BirdclefError, match="not analysed yet"):
        merge_results(tmp_path / "out", discover(archive))


@pytest.mark.slow
def test_cli_analyze_with_a_trained_run(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("timm")
    run_dir = make_run(tmp_path / "run", 5.0)
    out = tmp_path / "out"
    base = ["analyze", str(archive), "--run", str(run_dir), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(base + ["--shard", "0/2"]) == 0
    assert main(base + ["--merge"]) == 2
    assert "not analysed yet" in capsys.readouterr().err
    assert main(base + ["--shard", "1/2"]) == 0
    assert "table:" in capsys.readouterr().out
    df = table(out)
    assert list(df.columns) == ["path", "start_s", "end_s", "aaa", "bbb", "ccc"] and len(df) == 23
    assert main(base + ["--merge"]) == 0
    assert main(base + ["--shard", "2/2"]) == 2
    assert "--shard '2/2'" in capsys.readouterr().err


def test_events_merge_consecutive_windows_above_the_threshold() -> None:
    from birdclef.archive.raven import merge_events

    nan = np.nan
    df = pd.DataFrame({"path": "a/r.wav", "start_s": [0.0, 2.5, 5.0, 7.5, 10.0],
                       "end_s": [5.0, 7.5, 10.0, 12.5, 15.0], "aaa": [0.9, 0.8, 0.1, 0.95, nan],
                       "bbb": [nan] * 5, "ccc": [0.2, 0.2, 0.2, 0.2, 0.7]})
    events = merge_events(df, 0.5, duration_s=13.0)
    assert events.to_dict("list") == {"path": ["a/r.wav"] * 3, "species": ["aaa", "aaa", "ccc"],
                                      "start_s": [0.0, 7.5, 10.0], "end_s": [7.5, 12.5, 13.0],
                                      "score": [0.9, 0.95, 0.7]}
    gaps = df.assign(start_s=[0.0, 6.0, 12.0, 18.0, 24.0], end_s=[5.0, 11.0, 17.0, 23.0, 29.0])
    assert len(merge_events(gaps, 0.5).query("species == 'aaa'")) == 3, "windows 1 s apart do not merge"
    with pytest.raises(BirdclefError, match="threshold"):
        merge_events(df, 0.0)


def test_raven_selection_tables_and_tidy_detections(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(archive, out, raven=0.5)
    detections = pd.read_csv(out / "detections.csv")
    assert list(detections.columns) == ["path", "species", "start_s", "end_s", "score"]
    assert len(detections) and (detections.score >= 0.5).all() and set(detections.species) <= {"blabir", "eurrob"}
    raven = pd.read_csv(out / "raven" / "siteB" / "deep" / "x" / "long.flac.selections.txt", sep="\t")
    assert list(raven.columns) == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                                   "Low Freq (Hz)", "High Freq (Hz)", "Begin File", "Species Code", "Score"]
    mine = detections[detections.path == "siteB/deep/x/long.flac"]
    assert raven["Selection"].tolist() == list(range(1, len(mine) + 1)) and (raven["Begin File"] == "long.flac").all()
    assert raven["End Time (s)"].max() <= 41.0 and (raven["High Freq (Hz)"] == 24_000).all()


def test_cli_out_must_be_a_folder_and_bad_flags_are_one_line_errors(archive: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a_file").write_text("x")
    for argv, message in ((["--out", str(tmp_path / "a_file")], "is an existing file"),
                          (["--out", str(tmp_path / "out"), "--shard", "1/1"], "need 0 <= I < N"),
                          (["--out", str(tmp_path / "out")], "give either --run")):
        assert main(["analyze", str(archive), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("birdclef analyze: error:") and message in err and "\n" not in err, err


def test_analysis_with_birdnet_imports_no_torch(archive: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_analyze
        from birdclef.archive.analyze import analyze_archive
        analyze_archive(Path({str(archive)!r}), Path({str(tmp_path / "out")!r}), test_analyze.fake_birdnet(),
                        progress=False)
        print(sorted(m for m in ("torch", "timm", "lightning") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]" and (tmp_path / "out" / "detections.parquet").is_file()
