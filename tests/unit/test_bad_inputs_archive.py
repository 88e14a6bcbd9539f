"""Second reliability pass: the archive, BirdNET and self-training verbs under bad input.

Numbers that are not numbers (every numeric flag of the newer verbs), engines that are not there, state files
damaged by a crash or a full disk, recordings that discovery must skip and report, duplicate recordings,
thresholds outside [0, 1], mismatched class lists, late failures and vague errors. Each test fails on the code
before the fix (a traceback, a silent result or a vague line).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import noise, write_ogg
from test_analyze import CLASSES, fake_birdnet, signal, write
from test_embed import FakeModel as FakeEmbedder
from test_embed import _steps, _wav
from test_predict_job import FakePredictor
from test_predict_job import run as predict_run

from birdclef import cli
from birdclef.archive.manifest import discover
from birdclef.audio.discover import AUDIO_SUFFIXES, discover_audio
from birdclef.birdnet.embed import embed_to_parquet
from birdclef.config import load_config
from birdclef.errors import BirdclefError, BirdclefWarning, ConfigError
from birdclef.eval.thresholds import read_thresholds, thresholds_from_csv
from birdclef.archive.analyze import analyze_archive, part_path
from birdclef.utils.state import parquet_problem

HAS_DASK = importlib.util.find_spec("distributed") is not None


def one_line_error(capsys, verb: str, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"birdclef {verb}: error:"), err
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------ numbers that are not numbers

BASE = {
    "analyze": ["analyze", "ARCH", "--birdnet", "--out", "OUT"],
    "embed": ["embed", "--audio", "ARCH", "--out", "OUT/e.parquet"],
    "pseudo": ["pseudo", "--birdnet", "--soundscapes", "ARCH", "--out", "OUT/p.parquet"],
    "selftrain": ["selftrain", "--data", "ARCH", "--out", "OUT"],
    "distill": ["distill", "--data", "ARCH", "--out", "OUT", "--birdnet"],
    "thresholds": ["thresholds", "--submission", "S", "--solution", "S", "--out", "OUT/t.csv"],
    "summarize": ["summarize", "OUT"],
    "predict": ["predict", "--birdnet", "--soundscapes", "ARCH", "--out", "OUT/s.csv"],
}
FLAGS = {  # verb -> numeric flags; each is tried with every bad value that applies to it
    "analyze": ["--hop", "--block-s", "--raven", "--threads", "--weights", "--unknown-fill", "--workers"],
    "embed": ["--hop", "--threads"],
    "pseudo": ["--power", "--hop", "--folds", "--fold-seed", "--unknown-fill", "--threads", "--weights"],
    "selftrain": ["--rounds", "--patience", "--min-gain", "--power", "--hop", "--weights"],
    "distill": ["--power", "--hop", "--weights"],
    "thresholds": ["--precision"],
    "summarize": ["--threshold"],
    "predict": ["--threads", "--weights", "--unknown-fill", "--num-workers"],
}
WHOLE = {"--threads", "--workers", "--folds", "--fold-seed", "--rounds", "--patience", "--num-workers"}
CASES = [(verb, flag, value) for verb, flags in FLAGS.items() for flag in flags
         for value in (["nan", "inf", "-1", "x"] + (["1.5"] if flag in WHOLE else [])
                       + (["1e-7"] if flag == "--hop" else []) + (["0"] if flag == "--threads" else []))]


@pytest.mark.parametrize(("verb", "flag", "value"), CASES, ids=[f"{v}{f}={x}" for v, f, x in CASES])
def test_every_numeric_flag_refuses_non_numbers_in_one_line(tmp_path: Path, capsys, verb: str, flag: str,
                                                            value: str):
    argv = [a.replace("ARCH", str(tmp_path)).replace("OUT", str(tmp_path / "out")).replace("S", "s.csv")
            for a in BASE[verb]]
    if verb == "thresholds" and flag == "--precision":
        argv = argv  # --precision is one of two required goals: given here
    assert cli.main([*argv, flag, value]) == 2
    one_line_error(capsys, verb, f"argument {flag}:", repr(value))
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("override", ["infer.birdnet_hop_s=nan", "infer.birdnet_hop_s=1e-7", "train.epochs=inf",
                                      "infer.power_rest=inf", "data.window_s=nan"])
def test_config_fields_refuse_non_finite_and_absurd_values(override: str):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


# ------------------------------------------------------------------ engines that are not there


def test_a_malformed_scheduler_address_is_one_line(tmp_path: Path, capsys):
    write(tmp_path / "a" / "r.wav", signal(6.0, 32_000, 1), 32_000)
    for address in ("host:notaport", "tcp://h:99999", "a b"):
        assert cli.main(["analyze", str(tmp_path / "a"), "--birdnet", "--out", str(tmp_path / "o"),
                         "--engine", "dask", "--scheduler", address]) == 2
        one_line_error(capsys, "analyze", f"--scheduler {address!r}", "tcp://")


@pytest.mark.skipif(not HAS_DASK, reason="dask.distributed not installed: pip install 'birdclef[dask]'")
def test_an_unreachable_scheduler_is_one_line_saying_how_to_start_one():
    from birdclef.archive.dask_engine import connect

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BirdclefError, match=r"no Dask scheduler answered within 1 s.*`dask scheduler`"):
        connect(f"tcp://127.0.0.1:{port}", timeout_s=1)


def test_scheduler_without_dask_engine_is_refused(tmp_path: Path, capsys):
    write(tmp_path / "a" / "r.wav", signal(6.0, 32_000, 1), 32_000)
    assert cli.main(["analyze", str(tmp_path / "a"), "--birdnet", "--out", str(tmp_path / "o"),
                     "--scheduler", "tcp://10.0.0.5:8786"]) == 2
    one_line_error(capsys, "analyze", "only used with --engine dask")


# ------------------------------------------------------------------ discovery: skip and report


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Two recordings, and everything that looks like one but is not."""
    root = tmp_path / "messy"
    write_ogg(root / "a.ogg", noise(6.0, seed=1))
    write_ogg(root / "b.opus.ogg", noise(6.0, seed=2))
    (root / "x.ogg").mkdir()  # a folder named like a recording
    (root / "gone.wav").symlink_to(root / "nowhere.wav")  # dangling
    (root / "loop.flac").symlink_to(root / "loop.flac")  # a loop
    return root


def _said(caught) -> str:
    return "\n".join(str(w.message) for w in caught if issubclass(w.category, BirdclefWarning))


def test_discovery_skips_and_reports_what_is_not_a_recording(messy: Path):
    found = discover_audio(messy, recursive=False)
    assert [r.rel for r in found.recordings] == ["a.ogg", "b.opus.ogg"]
    reasons = dict(found.passed_over)
    assert reasons["x.ogg"] == "a folder named like an audio file"
    assert reasons["gone.wav"].startswith("a dangling symbolic link")
    assert reasons["loop.flac"] == "a symbolic link loop"
    assert {".opus", ".aiff", ".ogg"} <= set(AUDIO_SUFFIXES)  # the one list: predict reads what analyze reads


def test_every_discovering_verb_reports_what_it_skipped(messy: Path, tmp_path: Path):
    runs = {
        "predict": lambda: predict_run(messy, tmp_path / "s.csv"),
        "analyze": lambda: analyze_archive(messy, tmp_path / "an", fake_birdnet(), progress=False),
        "embed": lambda: embed_to_parquet(messy, tmp_path / "e.parquet", FakeEmbedder(), progress=False),
        "pseudo/selftrain (manifest)": lambda: discover(messy),
    }
    for verb, call in runs.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        said = _said(caught)
        for name in ("gone.wav", "loop.flac"):
            assert name in said, (verb, said)
        if verb == "predict":  # non-recursive: the folder is skipped
            assert "x.ogg: a folder named like an audio file" in said


def test_an_audio_named_folder_with_recordings_is_searched_in_a_recursive_walk(tmp_path: Path):
    write_ogg(tmp_path / "r" / "x.ogg" / "inner.ogg", noise(6.0, seed=1))
    (tmp_path / "r" / "empty.wav").mkdir()
    found = discover_audio(tmp_path / "r")
    assert [r.rel for r in found.recordings] == ["x.ogg/inner.ogg"]
    assert found.passed_over == [("empty.wav", "a folder named like an audio file, holding no recording")]


def test_an_unreadable_folder_is_reported(tmp_path: Path, monkeypatch):
    write_ogg(tmp_path / "r" / "ok.ogg", noise(6.0, seed=1))
    (tmp_path / "r" / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # root ignores chmod 000: refuse the folder as a locked one would be refused
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = discover_audio(tmp_path / "r")
    assert [r.rel for r in found.recordings] == ["ok.ogg"]
    assert found.passed_over == [("locked", "a folder that cannot be read (Permission denied)")]


def test_an_empty_folder_error_names_what_was_passed_over(messy: Path):
    for name in ("a.ogg", "b.opus.ogg"):
        (messy / name).unlink()
    with pytest.raises(BirdclefError, match=r"no soundscapes .*passed over: gone.wav \(a dangling"):
        predict_run(messy, messy.parent / "s.csv")


def test_two_links_to_one_recording_give_each_name_its_own_rows_in_predict(tmp_path: Path):
    real = write_ogg(tmp_path / "store" / "rec.ogg", noise(15.0, seed=3))
    folder = tmp_path / "sc"
    folder.mkdir()
    (folder / "siteA_0501.ogg").symlink_to(real)
    (folder / "siteB_0501.ogg").symlink_to(real)
    write_ogg(folder / "other.ogg", noise(10.0, seed=4))
    with pytest.warns(BirdclefWarning, match="siteB_0501.ogg is the same recording as .*siteA_0501.ogg"):
        predict_run(folder, tmp_path / "sub.csv")
    rows = pd.read_csv(tmp_path / "sub.csv")["row_id"]
    assert not rows.duplicated().any()
    assert sorted(rows) == sorted([f"siteA_0501_{s}" for s in (5, 10, 15)] + [f"siteB_0501_{s}" for s in (5, 10, 15)]
                                  + ["other_5", "other_10"])


def test_two_links_to_one_recording_are_analysed_once(tmp_path: Path):
    real = write(tmp_path / "a" / "rec.wav", signal(6.0, 32_000, 1), 32_000)
    (tmp_path / "a" / "zlink.wav").symlink_to(real)
    with pytest.warns(BirdclefWarning, match="zlink.wav: the same recording as rec.wav"):
        entries = discover(tmp_path / "a")
    assert [e.path for e in entries] == ["rec.wav"]


# ------------------------------------------------------------------ state files damaged by a crash


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_predict_sets_aside_a_truncated_part_and_redoes_only_that_file(tmp_path: Path, monkeypatch):
    folder = tmp_path / "sc"
    for k in range(3):
        write_ogg(folder / f"F{k}.ogg", noise(10.0, seed=k))
    out = tmp_path / "sub.csv"
    from birdclef.infer import job

    monkeypatch.setattr(job.PartialResults, "remove", lambda self: None)  # keep the parts, as a killed job does
    predict_run(folder, out)
    expected = pd.read_csv(out)
    parts = sorted((tmp_path / ".sub.csv.parts").glob("part-*.parquet"))
    assert len(parts) == 3
    _truncate(parts[0])
    predictor = FakePredictor()
    with pytest.warns(BirdclefWarning, match=r"part-.*\.parquet: unreadable .*set aside as .*\.corrupt and F\d.ogg "
                                             r"is redone"):
        summary = predict_run(folder, out, predictor)
    assert predictor.calls == 1 and summary.resumed_files == 2  # the other two are kept
    pd.testing.assert_frame_equal(pd.read_csv(out), expected)
    assert len(list((tmp_path / ".sub.csv.parts").glob("*.corrupt"))) == 1


def test_predict_refuses_a_truncated_meta_json_in_one_line(tmp_path: Path, monkeypatch, capsys):
    folder = tmp_path / "sc"
    write_ogg(folder / "F0.ogg", noise(10.0, seed=0))
    from birdclef.infer import job

    monkeypatch.setattr(job.PartialResults, "remove", lambda self: None)
    predict_run(folder, tmp_path / "sub.csv")
    meta = tmp_path / ".sub.csv.parts" / "meta.json"
    _truncate(meta, 0.3)
    with pytest.raises(BirdclefError, match=r"meta.json: unreadable .*delete meta.json to resume them .*or delete"):
        predict_run(folder, tmp_path / "sub.csv")
    assert meta.is_file() and any((tmp_path / ".sub.csv.parts").glob("part-*.parquet"))  # nothing thrown away


@pytest.fixture
def analysed(tmp_path: Path) -> Path:
    root = tmp_path / "arch"
    for k in range(3):
        write(root / f"r{k}.wav", signal(11.0, 32_000, k), 32_000)
    analyze_archive(root, tmp_path / "out", fake_birdnet(), progress=False)
    return tmp_path


def test_analyze_refuses_a_truncated_settings_json_naming_it(analysed: Path, capsys):
    _truncate(analysed / "out" / "settings.json", 0.4)
    with pytest.raises(BirdclefError, match="settings.json: unreadable .*delete settings.json to resume"):
        analyze_archive(analysed / "arch", analysed / "out", fake_birdnet(), progress=False)


def test_analyze_sets_aside_a_truncated_table_and_redoes_that_recording(analysed: Path):
    table = pd.read_parquet(analysed / "out" / "detections.parquet")
    _truncate(part_path(analysed / "out", "r1.wav"))
    assert parquet_problem(part_path(analysed / "out", "r1.wav")) is not None
    with pytest.warns(BirdclefWarning, match=r"r1.wav.parquet: unreadable .*set aside .* r1.wav is redone"):
        s = analyze_archive(analysed / "arch", analysed / "out", fake_birdnet(), progress=False)
    assert s.analysed == 1 and s.resumed == 2
    pd.testing.assert_frame_equal(pd.read_parquet(analysed / "out" / "detections.parquet"), table)
    assert (analysed / "out" / "files" / "r1.wav.parquet.corrupt").is_file()


def test_analyze_ignores_and_reports_garbage_journal_lines(analysed: Path):
    journal = next((analysed / "out" / "journal").glob("*.jsonl"))
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"\0\0\0\xff\xfe garbage\n" + b"".join(lines[1:]))
    with pytest.warns(BirdclefWarning, match="1 unreadable lines ignored"):
        s = analyze_archive(analysed / "arch", analysed / "out", fake_birdnet(), progress=False)
    assert s.resumed == 3 and s.analysed == 0  # the good lines still count


def test_embed_refuses_a_truncated_meta_json_and_redoes_a_truncated_part(tmp_path: Path, monkeypatch):
    for k in range(3):
        _wav(tmp_path / "a" / f"f{k}.wav", _steps(k, 4.0))
    from birdclef.infer import job

    monkeypatch.setattr(job.PartialResults, "remove", lambda self: None)
    out = tmp_path / "e.parquet"
    embed_to_parquet(tmp_path / "a", out, FakeEmbedder(), progress=False)
    expected = pd.read_parquet(out)
    parts = tmp_path / ".e.parquet.parts"
    npz = sorted(parts.glob("*.npz"))
    _truncate(npz[1])
    model = FakeEmbedder()
    with pytest.warns(BirdclefWarning, match=r"\.npz: unreadable .*set aside"):
        embed_to_parquet(tmp_path / "a", out, model, progress=False)
    assert len(model.calls) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    _truncate(parts / "meta.json", 0.5)
    with pytest.raises(BirdclefError, match=r"meta.json: unreadable"):
        embed_to_parquet(tmp_path / "a", out, FakeEmbedder(), progress=False)


def test_selftrain_and_distill_set_aside_a_damaged_round_record(tmp_path: Path):
    from birdclef.selftrain.distill import _finished
    from birdclef.selftrain.rounds import _finished_round

    done = tmp_path / "scores.json"
    done.write_text('{"round": 1, "sco')
    with pytest.warns(BirdclefWarning, match="scores.json: unreadable .*the round's score is redone"):
        assert _finished_round(done) is None
    assert (tmp_path / "scores.json.corrupt").is_file() and not done.exists()
    record = tmp_path / "distill.json"
    record.write_text("{}")  # parses, but is no record: the same rule
    with pytest.warns(BirdclefWarning, match="distill.json: unreadable"):
        assert _finished(record) is None


def test_a_failed_train_folder_is_started_again_but_a_trained_one_is_kept(tmp_path: Path):
    pytest.importorskip("lightning")
    from birdclef.train.kfold import init_run

    config = load_config(None, [])
    run = tmp_path / "run"
    init_run(run, config, resume=False)  # then the run failed before its first epoch
    with pytest.warns(BirdclefWarning, match="never finished an epoch"):
        init_run(run, load_config(None, ["train.epochs=3"]), resume=False)
    (run / "fold0").mkdir()
    (run / "fold0" / "last.ckpt").write_bytes(b"state")
    with pytest.raises(ConfigError, match="already holds a run"):
        init_run(run, config, resume=False)


# ------------------------------------------------------------------ thresholds, class lists


def _labelled(tmp_path: Path, scores: np.ndarray) -> tuple[Path, Path]:
    rows = [f"s_{5 * (i + 1)}" for i in range(len(scores))]
    sub, sol = tmp_path / "sub.csv", tmp_path / "sol.csv"
    pd.DataFrame({"row_id": rows, "aaa": scores}).to_csv(sub, index=False)
    pd.DataFrame({"row_id": rows, "aaa": [0, 1, 0, 1, 1, 0]}).to_csv(sol, index=False)
    return sub, sol


def test_thresholds_refuse_logits_and_analyze_accepts_what_they_write(tmp_path: Path, capsys):
    sub, sol = _labelled(tmp_path, np.array([-3.0, 2.0, -1.0, 4.0, 0.5, -2.0]))
    assert cli.main(["thresholds", "--submission", str(sub), "--solution", str(sol), "--f1",
                     "--out", str(tmp_path / "t.csv")]) == 2
    one_line_error(capsys, "thresholds", "probabilities in [0, 1]", "'aaa'", "sigmoid")
    assert not (tmp_path / "t.csv").exists()
    sub, sol = _labelled(tmp_path, 1 / (1 + np.exp(-np.array([-3.0, 2.0, -1.0, 4.0, 0.5, -2.0]))))
    fit = thresholds_from_csv(sub, sol)
    fit.table.to_csv(tmp_path / "t.csv", index=False)
    assert 0 <= read_thresholds(tmp_path / "t.csv")["aaa"] <= 1


def test_birdnet_blend_refuses_data_whose_classes_differ_from_the_runs(tmp_path: Path):
    from test_analyze import make_run  # a tiny torch run of classes aaa, bbb, ccc

    from birdclef.zoo.build import PredictorSpec, build_predictor

    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame(columns=["row_id", "aaa", "zzz"]).to_csv(data / "sample_submission.csv", index=False)
    pd.DataFrame({"primary_label": ["aaa", "zzz"], "scientific_name": ["A a", "Z z"]}).to_csv(
        data / "taxonomy.csv", index=False)
    run = make_run(tmp_path / "run", 5.0)
    with pytest.raises(BirdclefError, match=r"--data .* lists 2 classes, the runs were trained on 3: 1 only in "
                                            r"--data \(zzz\), 2 only in the runs \(bbb, ccc\)"):
        build_predictor(PredictorSpec(runs=(run,), birdnet=True, birdnet_model=Path("placeholder"), data=data,
                                      device="cpu"))


# ------------------------------------------------------------------ late failures, vague errors


def _dataset(tmp_path: Path, soundscapes: bool = True) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame(columns=["row_id", *CLASSES]).to_csv(data / "sample_submission.csv", index=False)
    if soundscapes:
        write_ogg(data / "train_soundscapes" / "s.ogg", noise(6.0, seed=1))
    return data


@pytest.mark.parametrize("verb", ["selftrain", "distill"])
def test_selftrain_and_distill_check_every_input_before_any_work(tmp_path: Path, capsys, verb: str):
    data = _dataset(tmp_path, soundscapes=False)
    empty = tmp_path / "teacher"
    empty.mkdir()
    out = tmp_path / "out"
    assert cli.main([verb, "--data", str(data), "--out", str(out), "--teacher", str(empty)]) == 2
    one_line_error(capsys, verb, "train_soundscapes", "soundscape folder not found")
    write_ogg(data / "train_soundscapes" / "s.ogg", noise(6.0, seed=1))
    assert cli.main([verb, "--data", str(data), "--out", str(out), "--teacher", str(empty)]) == 2
    one_line_error(capsys, verb, f"--teacher {empty}: an empty folder")
    assert cli.main([verb, "--data", str(data), "--out", str(out), "--teacher", str(tmp_path / "nope")]) == 2
    one_line_error(capsys, verb, f"--teacher {tmp_path / 'nope'}")
    assert not (out / "round0").exists() and not (out / "pseudo.parquet").exists()


def test_analyze_out_that_is_the_archive_says_so(tmp_path: Path, capsys):
    write(tmp_path / "a" / "r.wav", signal(6.0, 32_000, 1), 32_000)
    for extra in ([], ["--merge"]):
        assert cli.main(["analyze", str(tmp_path / "a"), "--birdnet", "--out", str(tmp_path / "a"), *extra]) == 2
        one_line_error(capsys, "analyze", "is the archive itself")


def test_embed_threads_zero_names_the_flag(tmp_path: Path, capsys):
    assert cli.main(["embed", "--audio", str(tmp_path), "--out", str(tmp_path / "e.parquet"), "--threads", "0"]) == 2
    one_line_error(capsys, "embed", "argument --threads")


def test_selftrain_refuses_a_teacher_trained_on_other_classes(tmp_path: Path, monkeypatch):
    from birdclef.selftrain.rounds import SelfTrainSettings, check_inputs
    from birdclef.zoo.runs import Run

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.yaml").write_text("{}")
    monkeypatch.setattr(Run, "classes", property(lambda self: ["blabir", "other"]))
    with pytest.raises(BirdclefError, match=r"--teacher .*teacher was trained on 2 classes, --data .* lists 3: 1 only "
                                            r"in the teacher \(other\), 2 only in the data \(eurrob, frog\)"):
        check_inputs(_dataset(tmp_path), SelfTrainSettings(teachers=(str(tmp_path / "teacher"),)))


def test_summarize_streams_the_table_one_recording_at_a_time(analysed: Path):
    from birdclef.archive.summary import _recordings

    table = analysed / "out" / "detections.parquet"
    whole = pd.read_parquet(table)
    for batch_rows in (1, 2, 3, 7, 1000):  # recordings cut across batches anywhere
        pieces = list(_recordings(table, batch_rows=batch_rows))
        assert [p["path"].iloc[0] for p in pieces] == ["r0.wav", "r1.wav", "r2.wav"]
        assert all(p["path"].nunique() == 1 for p in pieces)
        pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), whole)


def test_pseudo_sets_aside_a_truncated_part_or_record_and_rescores_only_those(tmp_path: Path):
    from test_pseudo import _save_fold, _signal

    from birdclef.selftrain.pseudo import pseudo_label

    run = tmp_path / "run"
    _save_fold(run, 0, seed=0)
    _save_fold(run, 1, seed=1)
    for k, name in enumerate(("a.wav", "b.wav", "c.wav")):
        write(tmp_path / "sc" / name, _signal(7.0, k), 32_000)
    out = tmp_path / "p.parquet"
    pseudo_label(tmp_path / "sc", out, [run], device="cpu", progress=False)
    expected = pd.read_parquet(out)
    files = tmp_path / "p.parquet.parts" / "files"
    _truncate(files / "a.wav.parquet")
    (files / "b.wav.json").write_text('{"teach')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = pseudo_label(tmp_path / "sc", out, [run], device="cpu", progress=False)
    said = _said(caught)
    assert "a.wav.parquet: unreadable" in said and "a.wav is scored again" in said
    assert "b.wav.json: unreadable" in said and "b.wav is scored again" in said
    assert summary.resumed == 1
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)


def test_pseudo_reads_each_teachers_fold_table_once_not_once_per_soundscape(tmp_path: Path, monkeypatch):
    import birdclef.data.pseudo as data_pseudo
    import birdclef.selftrain.pseudo as selftrain_pseudo
    from test_pseudo import _save_fold, _signal

    run = tmp_path / "run"
    _save_fold(run, 0, seed=0)
    _save_fold(run, 1, seed=1)
    for k in range(4):
        write(tmp_path / "sc" / f"s{k}.wav", _signal(5.0, k), 32_000)
    calls = []
    real = data_pseudo.read_run_pseudo_folds

    def counted(folder):
        calls.append(folder)
        return real(folder)

    monkeypatch.setattr(data_pseudo, "read_run_pseudo_folds", counted)
    monkeypatch.setattr(selftrain_pseudo, "read_run_pseudo_folds", counted, raising=False)
    selftrain_pseudo.pseudo_label(tmp_path / "sc", tmp_path / "p.parquet", [run], device="cpu", progress=False)
    assert len(calls) == 1  # was one read of RUN/pseudo_folds.csv per soundscape: quadratic at 10,000 files


def test_merging_many_small_tables_keeps_few_waiting_and_writes_full_row_groups(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from birdclef.archive.file import GroupedWriter, result_schema

    schema = result_schema([f"c{j}" for j in range(50)])
    tables = [pa.Table.from_pylist([{"path": f"r{k}.wav", "start_s": 0.0, "end_s": 5.0,
                                     **{f"c{j}": float(k) for j in range(50)}}], schema=schema) for k in range(1000)]
    waiting = []
    with GroupedWriter(tmp_path / "t.parquet", schema, rows=300) as writer:
        for table in tables:
            writer.write(table)
            waiting.append(len(writer.pending) + len(writer.small))
    assert max(waiting) <= 300 // GroupedWriter.COMPACT_TABLES + GroupedWriter.COMPACT_TABLES  # not 300 tables
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [300, 300, 300, 100]
    assert pq.read_table(tmp_path / "t.parquet").equals(pa.concat_tables(tables).combine_chunks())
