"""The training cache on a tiny synthetic BirdCLEF folder (birdclef.data.cache)."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SR, chirp, noise, write_ogg

from birdclef.audio.io import load_audio
from birdclef.audio.segments import crop, select_window
from birdclef.data.cache import CacheSummary, WaveCache, prepare_cache
from birdclef.errors import DatasetError

FLOAT16_ATOL = 1e-3
"""float16 keeps 11 significant bits: |error| < 5e-4 for samples in [-1, 1]."""

CLIPS = {  # filename: (primary_label, duration_s, call span or None)
    "aaa/XC0001.ogg": ("aaa", 12.0, (6.0, 8.0)),
    "aaa/XC0002.ogg": ("aaa", 2.0, None),  # shorter than a window: tiled
    "bbb/CSA0003.ogg": ("bbb", 10.0, (6.0, 8.0)),  # speech first: reference takes 2-7 s
    "bbb/XC0004.ogg": ("bbb", 8.0, (1.0, 2.5)),
    "ccc/XC0005.ogg": ("ccc", 20.0, (14.0, 15.0)),
    "ccc/XC0006.ogg": ("ccc", 7.0, None),
}
BROKEN = "ccc/XC0007.ogg"


def clip_wave(duration_s: float, call: tuple[float, float] | None, seed: int) -> np.ndarray:
    wave = noise(duration_s, seed=seed, level=0.02) + chirp(duration_s, 300, 600, seed=seed, noise=0.0) * 0.2
    if call is not None:
        begin = int(call[0] * SR)
        tone = chirp(call[1] - call[0], 3_000, 4_000, seed=seed)
        wave[begin : begin + len(tone)] += tone
    return wave


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.csv + train_audio/ with six good clips and one corrupt file (third row from the end)."""
    root = tmp_path_factory.mktemp("birdclef")
    rows = []
    for k, (filename, (label, duration_s, call)) in enumerate(CLIPS.items()):
        write_ogg(root / "train_audio" / filename, clip_wave(duration_s, call, seed=k))
        rows.append({"primary_label": label, "secondary_labels": "['bbb']" if k == 0 else "[]", "type": "song",
                     "filename": filename, "rating": 4.5 - k / 2, "start_s": 10.0 * k, "author": f"rec{k}"})
        if k == 3:
            (root / "train_audio" / BROKEN).parent.mkdir(parents=True, exist_ok=True)
            (root / "train_audio" / BROKEN).write_bytes(np.random.default_rng(0).bytes(4_000))
            rows.append({**rows[-1], "filename": BROKEN, "primary_label": "ccc"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


@pytest.fixture(scope="module")
def prepared(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CacheSummary]:
    out = tmp_path_factory.mktemp("cache") / "reference"
    return out, prepare_cache(dataset, out, num_workers=1, shard_size=3, progress=False)


def shard_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("part-*.npy"))}


def assert_same_cache(a: Path, b: Path) -> None:
    assert shard_files(a) == shard_files(b)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "index.parquet"), pd.read_parquet(b / "index.parquet"))
    pd.testing.assert_frame_equal(pd.read_csv(a / "skipped.csv"), pd.read_csv(b / "skipped.csv"))


# ---------------------------------------------------------------- prepare


def test_index_holds_the_good_clips_with_their_metadata(prepared: tuple[Path, CacheSummary], dataset: Path) -> None:
    out, summary = prepared
    assert (summary.n_clips, summary.n_skipped, summary.out) == (6, 1, out)
    assert summary.seconds_of_audio == pytest.approx(6 * 5.0)
    assert summary.bytes >= 6 * 5 * SR * 2 and summary.elapsed_s > 0
    index = pd.read_parquet(out / "index.parquet")
    train = pd.read_csv(dataset / "train.csv")
    assert index["filename"].tolist() == list(CLIPS)
    assert index["filename"].tolist() == train["filename"].iloc[index["row"]].tolist()
    assert index["primary_label"].tolist() == [label for label, _, _ in CLIPS.values()]
    assert index.loc[0, "secondary_labels"] == "['bbb']" and index.loc[1, "rating"] == 4.0
    assert index["csv_start_s"].tolist() == train["start_s"].iloc[index["row"]].tolist()  # renamed, kept
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        f"part-0000{k}.{ext}" for k in range(3) for ext in ("npy", "parquet")]


def test_skipped_csv_names_the_corrupt_file(prepared: tuple[Path, CacheSummary]) -> None:
    skipped = pd.read_csv(prepared[0] / "skipped.csv")
    assert skipped["filename"].tolist() == [BROKEN]
    assert "cannot decode" in skipped.loc[0, "reason"]


def test_windows_match_load_select_crop(prepared: tuple[Path, CacheSummary], dataset: Path) -> None:
    cache = WaveCache(prepared[0])
    assert (len(cache), cache.strategy, cache.window_s, cache.sample_rate) == (6, "reference", 5.0, SR)
    for i, filename in enumerate(CLIPS):
        wave = load_audio(dataset / "train_audio" / filename)
        window = select_window(wave, SR, "reference", filename)
        expected = crop(wave, SR, window)
        got = cache.window(i)
        assert got.dtype == np.float32 and got.shape == (5 * SR,)
        np.testing.assert_allclose(got, expected, atol=FLOAT16_ATOL)
        assert (cache.index.loc[i, "start_s"], cache.index.loc[i, "end_s"]) == (window.start_s, window.end_s)
        assert cache.index.loc[i, "duration_s"] == pytest.approx(len(wave) / SR)


def test_the_rules_picked_the_expected_windows(prepared: tuple[Path, CacheSummary]) -> None:
    index = WaveCache(prepared[0]).index.set_index("filename")
    assert index.loc["bbb/CSA0003.ogg", "start_s"] == 2.0  # speech skipped although the call is at 6-8 s
    assert index.loc["aaa/XC0002.ogg", ["start_s", "end_s"]].tolist() == [0.0, 5.0]
    start, end = index.loc["ccc/XC0005.ogg", ["start_s", "end_s"]]
    assert start <= 14.0 and 15.0 <= end  # energy rule found the call


def test_resume_recreates_a_deleted_shard_identically(prepared: tuple[Path, CacheSummary], dataset: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "cache"
    shutil.copytree(prepared[0], out)
    kept = (out / "shards" / "part-00000.npy").stat().st_mtime_ns
    for path in (out / "shards").glob("part-00001.*"):
        path.unlink()
    summary = prepare_cache(dataset, out, num_workers=1, shard_size=3, progress=False)
    assert summary.n_clips == 6
    assert_same_cache(out, prepared[0])
    pd.testing.assert_frame_equal(pd.read_parquet(out / "shards" / "part-00001.parquet"),
                                  pd.read_parquet(prepared[0] / "shards" / "part-00001.parquet"))
    assert (out / "shards" / "part-00000.npy").stat().st_mtime_ns == kept  # finished shards are not redone


def test_other_config_in_the_same_folder_is_refused(prepared: tuple[Path, CacheSummary], dataset: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "cache"
    shutil.copytree(prepared[0], out)
    with pytest.raises(DatasetError, match="strategy='reference' there, 'center' now"):
        prepare_cache(dataset, out, strategy="center", shard_size=3, progress=False)
    with pytest.raises(DatasetError, match="window_s"):
        prepare_cache(dataset, out, window_s=3.0, shard_size=3, progress=False)
    changed = tmp_path / "data"
    shutil.copytree(dataset, changed)
    with open(changed / "train.csv", "a") as f:
        f.write("aaa,[],song,aaa/XC0009.ogg,1.0,0.0,x\n")  # a new row: a repeated filename is refused
    with pytest.raises(DatasetError, match="train_csv_sha256"):
        prepare_cache(changed, out, shard_size=3, progress=False)


def test_two_workers_give_the_same_cache(prepared: tuple[Path, CacheSummary], dataset: Path, tmp_path: Path) -> None:
    summary = prepare_cache(dataset, tmp_path / "parallel", num_workers=2, shard_size=3, progress=False)
    assert (summary.n_clips, summary.n_skipped) == (6, 1)
    assert_same_cache(tmp_path / "parallel", prepared[0])


def test_max_files_takes_rows_round_robin_over_classes(dataset: Path, tmp_path: Path) -> None:
    summary = prepare_cache(dataset, tmp_path / "head", strategy="first", max_files=4, num_workers=1, progress=False)
    # The first clip of each class, then the second of the first class, in file order. The first
    # "ccc" row is the corrupt file, so it is taken and skipped, not replaced.
    assert (summary.n_clips, summary.n_skipped) == (3, 1)
    expected = ["aaa/XC0001.ogg", "aaa/XC0002.ogg", "bbb/CSA0003.ogg"]
    index = WaveCache(tmp_path / "head").index
    assert index["filename"].tolist() == expected
    # `row` is the clip's train.csv row (0 = first data row), not its position in the subset.
    train = pd.read_csv(dataset / "train.csv")
    assert [train["filename"][r] for r in index["row"]] == expected
    two = WaveCache(prepare_cache(dataset, tmp_path / "two", strategy="first", max_files=2, num_workers=1,
                                  progress=False).out).index
    assert [train["filename"][r] for r in two["row"]] == two["filename"].tolist() == ["aaa/XC0001.ogg", "bbb/CSA0003.ogg"]


def test_missing_columns_and_all_broken_files_are_dataset_errors(tmp_path: Path) -> None:
    (tmp_path / "d1").mkdir()
    pd.DataFrame({"primary_label": ["a"], "file": ["x.ogg"]}).to_csv(tmp_path / "d1" / "train.csv", index=False)
    with pytest.raises(DatasetError, match="filename"):
        prepare_cache(tmp_path / "d1", tmp_path / "c1", progress=False)
    (tmp_path / "d2" / "train_audio").mkdir(parents=True)
    pd.DataFrame({"primary_label": ["a"], "filename": ["gone.ogg"]}).to_csv(tmp_path / "d2" / "train.csv", index=False)
    with pytest.raises(DatasetError, match="none of its 1 files"):
        prepare_cache(tmp_path / "d2", tmp_path / "c2", progress=False)
    assert pd.read_csv(tmp_path / "c2" / "skipped.csv")["reason"].tolist() == ["file not found"]


# ---------------------------------------------------------------- random strategy


@pytest.fixture(scope="module")
def random_cache(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> WaveCache:
    out = tmp_path_factory.mktemp("cache") / "random"
    prepare_cache(dataset, out, strategy="random", max_clip_s=10.0, num_workers=1, progress=False)
    return WaveCache(out)


def find_offset(segment: np.ndarray, window: np.ndarray) -> int:
    """Where `window` starts inside `segment` (the only place its first 64 samples match)."""
    views = np.lib.stride_tricks.sliding_window_view(segment, 64)
    (hits,) = np.nonzero((views == window[:64]).all(axis=1))
    assert len(hits) == 1
    np.testing.assert_array_equal(segment[hits[0] : hits[0] + len(window)], window)
    return int(hits[0])


def test_random_cache_stores_the_clip_head(random_cache: WaveCache, dataset: Path) -> None:
    lengths = dict(zip(random_cache.index["filename"], random_cache.index["length"]))
    assert lengths["ccc/XC0005.ogg"] == 10 * SR  # a 20 s clip cut to max_clip_s
    assert lengths["bbb/XC0004.ogg"] == 8 * SR and lengths["aaa/XC0002.ogg"] == 2 * SR
    row = random_cache.index.set_index("filename").loc["ccc/XC0005.ogg"]
    assert (row["start_s"], row["end_s"], row["duration_s"]) == (0.0, 10.0, pytest.approx(20.0))
    i = list(random_cache.index["filename"]).index("ccc/XC0005.ogg")
    head = load_audio(dataset / "train_audio" / "ccc/XC0005.ogg")[: 10 * SR]
    np.testing.assert_allclose(random_cache.segment(i), head, atol=FLOAT16_ATOL)


def test_random_crops_vary_stay_in_bounds_and_repeat_with_the_seed(random_cache: WaveCache) -> None:
    i = list(random_cache.index["filename"]).index("ccc/XC0005.ogg")
    segment = random_cache.segment(i)
    rng = np.random.default_rng(0)
    offsets = {find_offset(segment, random_cache.window(i, rng)) for _ in range(8)}
    assert len(offsets) > 4 and all(0 <= o <= 5 * SR for o in offsets)
    same = [random_cache.window(i, np.random.default_rng(3)) for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])
    assert find_offset(segment, random_cache.window(i)) == (10 * SR - 5 * SR) // 2  # no rng: centre crop


def test_random_short_clip_is_tiled(random_cache: WaveCache) -> None:
    i = list(random_cache.index["filename"]).index("aaa/XC0002.ogg")
    window = random_cache.window(i, np.random.default_rng(0))
    segment = random_cache.segment(i)
    assert window.shape == (5 * SR,)
    np.testing.assert_array_equal(window[: 2 * SR], segment)
    np.testing.assert_array_equal(window[2 * SR : 4 * SR], segment)


# ---------------------------------------------------------------- WaveCache


def test_wave_cache_pickles_without_its_samples(prepared: tuple[Path, CacheSummary]) -> None:
    cache = WaveCache(prepared[0])
    first = cache.window(4)  # maps a shard
    blob = pickle.dumps(cache)
    assert len(blob) < 100_000  # the shards hold 1.9 MB of samples
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.window(4), first)
    assert len(clone) == len(cache) and clone.index.equals(cache.index)


def test_wave_cache_refuses_an_incomplete_folder(prepared: tuple[Path, CacheSummary], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="birdclef prepare"):
        WaveCache(tmp_path)
    out = tmp_path / "cache"
    shutil.copytree(prepared[0], out)
    (out / "shards" / "part-00001.npy").unlink()
    with pytest.raises(DatasetError, match="part-00001.npy"):
        WaveCache(out)


def test_wave_cache_index_out_of_range(prepared: tuple[Path, CacheSummary]) -> None:
    cache = WaveCache(prepared[0])
    with pytest.raises(IndexError):
        cache.window(len(cache))


def test_preparing_a_cache_needs_no_torch() -> None:
    code = "import sys, birdclef.data.cache; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
