"""A corpus of bad inputs through check and prepare: each kind is an error naming what is wrong, a
printed warning, or a skipped-and-reported file; prepare refuses what check calls an error, in check's
words. Also: a prepare killed with SIGKILL leaves no worker behind and resumes to the same cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import SR, noise, write_ogg

from birdclef import cli
from birdclef.data.cache import prepare_cache
from birdclef.data.check import CheckReport, Problem, check_dataset
from birdclef.data.validate import DataWarning
from birdclef.errors import DatasetError

CLASSES = ["aaa", "bbb", "ccc"]
CLIP = "aaa/XC0.ogg"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A clean BirdCLEF folder: one 1 s clip per class, one 10 s test soundscape."""
    root = tmp_path / "data"
    rows = []
    for k, label in enumerate(CLASSES):
        write_ogg(root / "train_audio" / label / f"XC{k}.ogg", noise(1.0, seed=k, level=0.1))
        rows.append({"primary_label": label, "secondary_labels": "[]", "filename": f"{label}/XC{k}.ogg",
                     "rating": 4.0})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"primary_label": CLASSES}).to_csv(root / "taxonomy.csv", index=False)
    pd.DataFrame({"row_id": ["S1_5"], **{c: [0.0] for c in CLASSES}}).to_csv(root / "sample_submission.csv",
                                                                             index=False)
    write_ogg(root / "test_soundscapes" / "S1.ogg", noise(10.0, seed=9, level=0.1))
    write_ogg(root / "train_soundscapes" / "T1.ogg", noise(2.0, seed=8, level=0.1))
    return root


def check(root: Path) -> CheckReport:
    return check_dataset(root, progress=False, num_workers=1)


def problem(report: CheckReport, kind: str) -> Problem:
    found = report.problem(kind)
    assert found is not None, f"no {kind} in:\n" + "\n".join(report.lines())
    return found


def edit_train(root: Path, row: int, **cells: str) -> None:
    table = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    for column, value in cells.items():
        table.loc[row, column] = value
    table.to_csv(root / "train.csv", index=False)


def append_row(root: Path, **cells: str) -> None:
    table = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    pd.concat([table, pd.DataFrame([{**table.iloc[1].to_dict(), **cells}])]).to_csv(root / "train.csv", index=False)


def cut(path: Path, keep: float = 5 / 12) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------- table errors: check == prepare refusal

TABLE_FAULTS: dict[str, tuple[str, Callable[[Path], None], str]] = {  # name: (kind, fault, words in the example)
    "blank primary_label": ("empty_primary_label", lambda r: edit_train(r, 0, primary_label=""),
                            "row 2 (aaa/XC0.ogg): column 'primary_label' is blank"),
    "unknown primary_label": ("unknown_primary_label", lambda r: edit_train(r, 2, primary_label="zzz"),
                              "row 4 (ccc/XC2.ogg): 'zzz'"),
    "duplicated row": ("duplicate_filename", lambda r: append_row(r), "bbb/XC1.ogg on rows 3, 5"),
    "same file, other label": ("duplicate_filename", lambda r: append_row(r, primary_label="ccc"),
                               "bbb/XC1.ogg on rows 3, 5"),
    "malformed secondary_labels": ("malformed_secondary_labels", lambda r: edit_train(r, 1, secondary_labels="['a', "),
                                   "row 3 (bbb/XC1.ogg), column 'secondary_labels': \"['a', \""),
    "blank filename": ("bad_filename", lambda r: edit_train(r, 1, filename=""), "row 3: column 'filename' is blank"),
    "absolute filename": ("bad_filename", lambda r: edit_train(r, 0, filename="/etc/passwd"),
                          "row 2: '/etc/passwd' is not a relative path inside train_audio/"),
    "filename climbing out": ("bad_filename", lambda r: edit_train(r, 0, filename="aaa/../../x.ogg"),
                              "'aaa/../../x.ogg' is not a relative path"),
    "windows absolute filename": ("bad_filename", lambda r: edit_train(r, 0, filename="C:\\clips\\x.ogg"),
                                  "is not a relative path"),
    "empty train.csv": ("unreadable_table", lambda r: (r / "train.csv").write_bytes(b""),
                        "train.csv: empty file; expected a header with ['primary_label', 'filename'], then rows"),
    "header only": ("no_rows", lambda r: (r / "train.csv").write_text("primary_label,filename\n"),
                    "train.csv has a header but no rows"),
    "no filename column": ("missing_columns", lambda r: (r / "train.csv").write_text("primary_label\naaa\n"),
                           "train.csv lacks 'filename' (its columns: ['primary_label'])"),
    "non-UTF-8 train.csv": ("unreadable_table", lambda r: (r / "train.csv").write_bytes(
        (r / "train.csv").read_bytes() + b"ccc,[],ccc/XC2b.ogg,4.0 caf\xe9\n"), "not UTF-8 text (byte 0xe9 on line 5"),
    "taxonomy without primary_label": ("unreadable_table", lambda r: (r / "taxonomy.csv").write_text("species\naaa\n"),
                                       "no 'primary_label' column"),
    "non-UTF-8 taxonomy": ("unreadable_table", lambda r: (r / "taxonomy.csv").write_bytes(
        b"primary_label,name\naaa,Caf\xe9\nbbb,b\nccc,c\n"), "taxonomy.csv: not UTF-8 text (byte 0xe9 on line 2"),
    "empty sample_submission": ("unreadable_table", lambda r: (r / "sample_submission.csv").write_bytes(b""),
                                "sample_submission.csv: empty file"),
    "blank taxonomy label": ("unreadable_table", lambda r: (r / "taxonomy.csv").write_text(
        'primary_label\naaa\n""\nbbb\n'),
                             "taxonomy.csv: column 'primary_label' is blank on row 3"),
    "blank class column": ("unreadable_table", lambda r: (r / "sample_submission.csv").write_text(
        "row_id,aaa,,bbb,ccc\nS1_5,0,0,0,0\n"), "class column 2 of the header (not counting row_id) is blank"),
    "duplicate class column": ("unreadable_table", lambda r: (r / "sample_submission.csv").write_text(
        "row_id,aaa,aaa,bbb,ccc\nS1_5,0,0,0,0\n"), "duplicate class column(s) ['aaa']"),
}


@pytest.mark.parametrize("name", list(TABLE_FAULTS))
def test_prepare_refuses_what_check_calls_an_error_in_its_words(data: Path, tmp_path: Path, name: str) -> None:
    kind, fault, words = TABLE_FAULTS[name]
    fault(data)
    report = check(data)
    found = problem(report, kind)
    assert not report.ok and found.severity == "error" and any(words in e for e in found.examples), found.examples
    with pytest.raises(DatasetError) as exc:
        prepare_cache(data, tmp_path / "cache", num_workers=1, progress=False)
    assert found.line().split(maxsplit=1)[1] in str(exc.value)  # "kind: count (e.g. ...)", as check prints it
    assert not (tmp_path / "cache" / "shards").exists()  # refused before decoding anything


def test_train_refuses_before_training(data: Path, tmp_path: Path) -> None:
    from birdclef.config import load_config
    from birdclef.train.kfold import train_kfold

    edit_train(data, 0, primary_label="")
    config = load_config(None, ["model.backbone=test_efficientnet", "model.pretrained=false", "train.num_workers=0"])
    with pytest.raises(DatasetError, match="empty_primary_label: 1 .*column 'primary_label' is blank"):
        train_kfold(config, data, tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("fold*"))


def test_cli_prepare_says_the_error_in_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    edit_train(data, 0, primary_label="")
    assert cli.main(["prepare", str(data), "--out", str(tmp_path / "cache"), "--num-workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("birdclef prepare: error: ") and "column 'primary_label' is blank" in err


def test_out_that_is_a_file_is_a_clear_error(data: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DatasetError, match="file: exists and is not a folder"):
        prepare_cache(data, tmp_path / "file", num_workers=1, progress=False)


def test_labels_and_filenames_are_used_as_check_reads_them(data: Path, tmp_path: Path) -> None:
    """Padded cells pass check (it strips them), so the cache must hold the stripped values too: the
    class lookup in train would otherwise miss ' bbb'."""
    edit_train(data, 1, primary_label=" bbb ", filename=" bbb/XC1.ogg")
    assert check(data).ok
    summary = prepare_cache(data, tmp_path / "cache", num_workers=1, progress=False)
    index = pd.read_parquet(tmp_path / "cache" / "index.parquet")
    assert summary.n_skipped == 0 and index["primary_label"].tolist() == CLASSES
    assert index.loc[1, "filename"] == "bbb/XC1.ogg"


# ---------------------------------------------------------------- warnings are printed, not silent

WARNINGS = {
    "unknown secondary label": ("unknown_secondary_label", lambda r: edit_train(r, 0, secondary_labels="['yyy']"),
                                "row 2 (aaa/XC0.ogg): ['yyy'] (ignored in training)"),
    "rating not a number": ("bad_rating", lambda r: edit_train(r, 1, rating="great"),
                            "row 3 (bbb/XC1.ogg): 'great' is not a number (treated as unrated)"),
}


@pytest.mark.parametrize("name", list(WARNINGS))
def test_warnings_reach_the_user_from_check_and_prepare(data: Path, tmp_path: Path, name: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    kind, fault, words = WARNINGS[name]
    fault(data)
    report = check(data)
    found = problem(report, kind)
    assert report.ok and found.severity == "warning" and found.examples == [words]
    with pytest.warns(DataWarning, match=kind) as caught:
        summary = prepare_cache(data, tmp_path / "c1", num_workers=1, progress=False)
    assert summary.n_clips == 3 and words in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI must print it itself, not raise or hide it
        assert cli.main(["prepare", str(data), "--out", str(tmp_path / "c2"), "--num-workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"birdclef prepare: warning: {data / 'train.csv'}: {kind}: 1 (e.g. {words})" in err


# ---------------------------------------------------------------- audio faults: reported by check, skipped by prepare


def _write_float_wav(path: Path, bad: float) -> None:
    wave = noise(1.0, level=0.1)
    wave[3_200] = bad
    sf.write(path, wave, SR, subtype="FLOAT")


def _rate_wav(path: Path, rate: int) -> None:
    sf.write(path, noise(1.0, level=0.1), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _cut_to(path: Path, writer: Callable[[Path], None]) -> None:
    writer(path)
    cut(path)


CLIP_FAULTS: dict[str, tuple[str, str, Callable[[Path], None], str]] = {  # name: (suffix, kind, writer, reason)
    "truncated ogg": (".ogg", "truncated_audio",
                      lambda p: _cut_to(p, lambda q: write_ogg(q, noise(8.0, level=0.3))), "the Ogg stream ends"),
    "truncated wav": (".wav", "truncated_audio", lambda p: _cut_to(p, lambda q: sf.write(q, noise(6.0), SR)),
                      "header says 6.00 s, file holds 2.50 s"),
    "truncated flac": (".flac", "truncated_audio", lambda p: _cut_to(p, lambda q: sf.write(q, noise(6.0), SR)),
                       "header says 6.00 s, but the file ends"),
    "NaN in float wav": (".wav", "nonfinite_audio", lambda p: _write_float_wav(p, np.nan),
                         "holds NaN or Inf samples (first at 0.100 s)"),
    "Inf in float wav": (".wav", "nonfinite_audio", lambda p: _write_float_wav(p, -np.inf), "NaN or Inf"),
    "directory named .ogg": (".ogg", "unreadable_audio", lambda p: p.mkdir(), "is a directory, not an audio file"),
    "text named .ogg": (".ogg", "unreadable_audio", lambda p: p.write_text("not audio\n" * 40), "cannot decode"),
    "zero bytes": (".ogg", "unreadable_audio", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "1 Hz sample rate": (".wav", "unreadable_audio", lambda p: _rate_wav(p, 1), "sample rate 1 Hz is outside"),
    "2 GHz sample rate": (".wav", "unreadable_audio", lambda p: _rate_wav(p, 2_000_000_000), "2000000000 Hz"),
}


@pytest.mark.parametrize("name", list(CLIP_FAULTS))
def test_broken_clip_is_a_check_error_and_a_reported_skip(data: Path, tmp_path: Path, name: str) -> None:
    suffix, kind, writer, reason = CLIP_FAULTS[name]
    filename = f"aaa/XC0{suffix}"
    (data / "train_audio" / CLIP).unlink()
    writer(data / "train_audio" / filename)
    edit_train(data, 0, filename=filename)
    found = problem(check(data), kind)
    assert found.severity == "error" and found.examples[0].startswith(f"train_audio/{filename}: ")
    assert reason in found.examples[0]
    summary = prepare_cache(data, tmp_path / "cache", num_workers=1, progress=False)
    assert (summary.n_clips, summary.n_skipped) == (2, 1)
    skipped = pd.read_csv(tmp_path / "cache" / "skipped.csv")
    assert skipped["filename"].tolist() == [filename] and reason in skipped.loc[0, "reason"]


@pytest.mark.parametrize("name", ["truncated ogg", "truncated wav", "Inf in float wav", "directory named .ogg",
                                  "zero bytes"])
def test_broken_soundscape_is_a_check_error(data: Path, name: str) -> None:
    suffix, kind, writer, reason = CLIP_FAULTS[name]
    writer(data / "test_soundscapes" / f"S2{suffix}")
    found = problem(check(data), kind.replace("_audio", "_soundscape"))
    assert found.severity == "error" and found.count == 1
    assert found.examples[0].startswith(f"test_soundscapes/S2{suffix}: ")
    assert reason in found.examples[0]


def test_float_files_without_nan_and_integer_files_pass(data: Path) -> None:
    sf.write(data / "test_soundscapes" / "S2.wav", noise(3.0, level=0.1), SR, subtype="FLOAT")
    sf.write(data / "test_soundscapes" / "S3.wav", noise(3.0, level=0.1), SR, subtype="PCM_16")
    sf.write(data / "test_soundscapes" / "S4.flac", noise(3.0, level=0.1), SR)
    report = check(data)
    assert report.ok and report.problems == [], report.lines()


# ---------------------------------------------------------------- kill -9 during prepare

_SLOW_PREPARE = """
import os, sys, time
from pathlib import Path
import birdclef.data.cache as cache

decode = cache._clip_samples
def slow(*args):  # slows every clip so that the kill lands mid-run, and records the worker pids
    (Path(sys.argv[3]) / str(os.getpid())).touch()
    time.sleep(0.4)
    return decode(*args)
cache._clip_samples = slow  # inherited by the forked workers
cache.prepare_cache(Path(sys.argv[1]), Path(sys.argv[2]), num_workers=2, shard_size=1, progress=False)
"""


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by its new parent) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").is_file() or sys.platform != "linux", reason="reads /proc")
def test_kill_9_leaves_no_worker_and_the_rerun_gives_the_same_cache(data: Path, tmp_path: Path) -> None:
    for k in range(3, 9):  # 9 clips: 9 one-clip shards, 0.4 s each over 2 workers
        write_ogg(data / "train_audio" / "ccc" / f"XC{k}.ogg", noise(1.5, seed=k, level=0.1))
        append_row(data, primary_label="ccc", filename=f"ccc/XC{k}.ogg")
    reference = prepare_cache(data, tmp_path / "reference", num_workers=1, shard_size=1, progress=False)
    out, pids = tmp_path / "killed", tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, str(data), str(out), str(pids)])
    deadline = time.monotonic() + 60
    while not list(out.glob("shards/part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("shards/part-*.parquet")))
    assert 1 <= done < 9, "the kill must land after the first shard and before the last"
    workers = [int(p.name) for p in pids.iterdir()]
    assert workers and proc.pid not in workers
    deadline = time.monotonic() + 30  # a bound for a loaded machine: PDEATHSIG ends them at once
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leak them into the rest of the session, then fail
        os.kill(pid, signal.SIGKILL)
    assert not left, f"worker(s) {left} outlived the killed prepare"
    assert not (out / "index.parquet").exists()
    summary = prepare_cache(data, out, num_workers=2, shard_size=1, progress=False)
    assert (summary.n_clips, summary.n_skipped) == (reference.n_clips, reference.n_skipped) == (9, 0)
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(
        p.name for p in (tmp_path / "reference" / "shards").iterdir())  # no half-written temporaries left
    for npy in sorted((tmp_path / "reference" / "shards").glob("*.npy")):
        assert (out / "shards" / npy.name).read_bytes() == npy.read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "index.parquet"),
                                  pd.read_parquet(tmp_path / "reference" / "index.parquet"))
    assert summary.bytes == reference.bytes


def test_temporaries_of_a_killed_run_are_removed(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare_cache(data, out, num_workers=1, shard_size=2, progress=False)
    stale = out / "shards" / ".part-00001.npy.k3j2h1.tmp"  # what atomic_path leaves when the process is killed
    stale.write_bytes(b"half a shard")
    (out / "shards" / "part-00001.parquet").unlink()
    prepare_cache(data, out, num_workers=1, shard_size=2, progress=False)
    assert not stale.exists() and (out / "shards" / "part-00001.parquet").is_file()
