"""Embedding on a Dask cluster (LocalCluster, 2 processes, the zoo's placeholder model): ``birdclef embed --engine
dask`` and a head's embedding stage (``train.embed_engine: dask``) give what the plain runs give, bit for bit,
and resume from what a killed run left."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdclef.birdnet import embed as embed_module
from birdclef.birdnet import head_embed
from birdclef.birdnet.head_embed import ChunkEmbedder, embed_copies
from birdclef.birdnet.head_inputs import HeadInputs
from birdclef.cli import main
from birdclef.config import load_config
from birdclef.errors import ConfigError
from birdclef.infer.job import PartialResults

from conftest import REPO

HAS_DASK = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAS_DASK, reason="dask.distributed not installed (the dask extra)")
HEAD = ["model.backbone=foundation", "model.freeze_backbone=true", "model.foundation=[placeholder]",
        "data.n_folds=2", "train.folds=[0]", "train.embed_copies=2", "train.background_prob=0.5", "train.embed_chunk_rows=7",
        "train.num_workers=0", "infer.birdnet_hop_s=1.0"]


def _tone(freq: float, seconds: float, rate: int = 48_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.slow
@needs_dask
def test_embed_on_dask_resumes_a_plain_run_and_gives_its_table(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "audio"
    for k, seconds in enumerate([7.0, 3.5, 12.0, 4.0, 9.0]):
        (folder / f"site{k % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"site{k % 2}" / f"r{k}.wav", _tone(1_000 + 700 * k, seconds), 48_000, subtype="FLOAT")
    (folder / "broken.wav").write_text("not audio")
    out, flags = tmp_path / "emb.parquet", ["--foundation", "placeholder", "--no-progress"]
    with monkeypatch.context() as mp:  # a plain run that leaves its parts, as one killed before assembling
        mp.setattr(PartialResults, "remove", lambda self: None)
        assert main(["embed", "--audio", str(folder), "--out", str(out), *flags]) == 0
    plain, plain_skipped = pd.read_parquet(out), pd.read_csv(tmp_path / "emb.skipped.csv")
    parts = sorted((tmp_path / ".emb.parquet.parts").glob("*.npz"))
    assert len(parts) == 5
    for part in parts[:3]:
        part.unlink()
    capsys.readouterr()
    monkeypatch.setattr(embed_module, "GROUP_FILES", 2)  # 3 files to redo + the broken one: 2 tasks
    assert main(["embed", "--audio", str(folder), "--out", str(out), *flags, "--engine", "dask",
                 "--workers", "2"]) == 0
    assert f"({len(plain)} rows from 5 files, 2 resumed" in capsys.readouterr().out, "3 files redone on dask"
    pd.testing.assert_frame_equal(pd.read_parquet(out), plain)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "emb.skipped.csv"), plain_skipped)
    assert plain_skipped["file"].tolist() == ["broken.wav"]
    assert not (tmp_path / ".emb.parquet.parts").exists(), "parts removed once assembled"


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """(config, wave cache, background bank, head inputs) of a placeholder head on the synthetic dataset."""
    from birdclef.birdnet.head_train import _prepare

    config = load_config(REPO / "configs" / "birdnet-head.yaml", HEAD)
    run = tmp_path_factory.mktemp("head") / "run"
    run.mkdir()
    prep = _prepare(config, tiny_dataset, run, None, progress=False)
    assert prep.bank is not None and len(prep.bank) == 1
    return config, prep.cache, prep.bank, HeadInputs.from_config(config)


def _same(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for (rows_a, emb_a), (rows_b, emb_b) in zip(a, b):
        np.testing.assert_array_equal(rows_a, rows_b)
        assert emb_a.dtype == emb_b.dtype == np.float16 and emb_a.tobytes() == emb_b.tobytes()


def test_a_killed_head_embedding_resumes_chunk_by_chunk(prepared, tmp_path: Path, monkeypatch) -> None:
    config, cache, bank, inputs = prepared
    whole = embed_copies(config, cache, inputs, bank, tmp_path / "whole", progress=False)
    n_rows = len(whole[0][0])
    assert n_rows > 14 and 0 < len(whole[1][0]) < n_rows, "copies mix some rows, not all"
    calls: list[tuple[int, int]] = []
    real = ChunkEmbedder.write_part

    def dying(self, bank, copy, start, stop, path):
        if len(calls) == 4:
            raise RuntimeError("killed")
        calls.append((copy, start))
        return real(self, bank, copy, start, stop, path)

    monkeypatch.setattr(ChunkEmbedder, "write_part", dying)
    with pytest.raises(RuntimeError, match="killed"):
        embed_copies(config, cache, inputs, bank, tmp_path / "resumed", progress=False)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir())[:2] == ["copy0.part0.npz", "copy0.part1.npz"]
    calls.clear()
    monkeypatch.setattr(ChunkEmbedder, "write_part", lambda self, *a: (calls.append(a[1:3]), real(self, *a))[1])
    _same(embed_copies(config, cache, inputs, bank, tmp_path / "resumed", progress=False), whole)
    n_chunks = -(-n_rows // 7)
    assert len(calls) == 3 * n_chunks - 4 and (0, 0) not in calls, "the 4 finished chunks were not redone"
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["copy0.npz", "copy1.npz", "copy2.npz"]


@pytest.mark.slow
@needs_dask
def test_head_embedding_on_dask_equals_the_plain_run_bit_for_bit(prepared, tmp_path: Path) -> None:
    config, cache, bank, inputs = prepared
    plain = embed_copies(config, cache, inputs, bank, tmp_path / "plain", progress=False)
    train = dataclasses.replace(config.train, embed_engine="dask", embed_workers=2)
    on_dask = embed_copies(dataclasses.replace(config, train=train), cache, inputs, bank, tmp_path / "dask",
                           progress=False)
    _same(on_dask, plain)
    assert sorted(p.name for p in (tmp_path / "dask").iterdir()) == ["copy0.npz", "copy1.npz", "copy2.npz"]


def test_embed_engine_settings_are_validated() -> None:
    config = load_config(None, ["train.embed_engine=dask", "train.embed_scheduler=tcp://10.0.0.5:8786"])
    assert config.train.embed_scheduler == "tcp://10.0.0.5:8786" and config.train.embed_chunk_rows == 1024
    for override, message in [("train.embed_engine=spark", "train.embed_engine must be plain or dask"),
                              ("train.embed_scheduler=not an address", "train.embed_scheduler 'not an address'"),
                              ("train.embed_workers=0", "train.embed_workers must be positive"),
                              ("train.embed_chunk_rows=0", "train.embed_chunk_rows must be positive")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
