"""``analyze --embeddings``: BirdNET window embeddings beside the score tables, same keys, one model pass,
resumable, sharded, merged; refused without BirdNET and when mixed with a run without embeddings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdclef.archive.scorers import window_scorer
from birdclef.birdnet.model import CHUNK_S, SAMPLE_RATE
from birdclef.birdnet.predictor import BirdnetPredictor, row_chunks
from birdclef.cli import main
from birdclef.config import InferConfig
from birdclef.errors import BirdclefError
from birdclef.infer.base import SinglePart
from birdclef.zoo.placeholder import PlaceholderModel
from birdclef.archive.analyze import analyze_archive, embedding_path, merge_results, part_path

LABELS = ["Turdus merula_Eurasian Blackbird", "Erithacus rubecula_European Robin"]
NAMES = {"blabir": "Turdus merula", "eurrob": "Erithacus rubecula"}
CLASSES = ["blabir", "eurrob", "frog"]
RAW = InferConfig(smoothing=False, power_adjust=False)
DIMS = 6
HAS_DASK = importlib.util.find_spec("distributed") is not None


def chunk_features(chunks: np.ndarray) -> np.ndarray:
    """The model's (N, D) chunk embeddings, distinct per chunk: the zoo's placeholder model's."""
    return FakeModel().embeddings(chunks)


class FakeModel(PlaceholderModel):
    """BirdNET's interface (the zoo's placeholder model), counting the chunks it is asked to run."""

    def __init__(self) -> None:
        super().__init__(LABELS, embedding_size=DIMS)
        self.chunks = 0

    def infer(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.chunks += len(chunks)
        return super().infer(chunks)


def birdnet(config: InferConfig = RAW) -> BirdnetPredictor:
    return BirdnetPredictor(CLASSES, NAMES, config, model=FakeModel())


def signal(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return ((0.05 + 0.04 * np.sin(2 * np.pi * t / 7.0)) * noise).astype(np.float32)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Three 48 kHz recordings (BirdNET's rate: the stream passes the samples through), one nested."""
    root = tmp_path / "archive"
    for rel, seconds, seed in (("siteA/rec.wav", 13.0, 1), ("siteB/deep/rec.wav", 8.2, 2), ("top.wav", 6.0, 3)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, signal(seconds, seed), SAMPLE_RATE, subtype="FLOAT")
    return root


def run(archive: Path, out: Path, predictor: BirdnetPredictor | None = None, **kwargs):
    return analyze_archive(archive, out, predictor or birdnet(), progress=False, embeddings=True, **kwargs)


def test_predict_rows_with_embeddings_scores_exactly_as_predict_rows() -> None:
    wave, predictor = signal(12.3, 9), birdnet(InferConfig(birdnet_hop_s=1.5))
    probs, emb = predictor.predict_rows_with_embeddings(wave, 3)
    assert np.array_equal(probs, predictor.predict_rows(wave, 3), equal_nan=True)
    chunks = row_chunks(wave, SAMPLE_RATE, 3, predictor.offsets).reshape(3, len(predictor.offsets), -1)
    expected = np.stack([chunk_features(c).astype(np.float64).mean(0) for c in chunks])
    assert emb.dtype == np.float32 and emb.shape == (3, DIMS)
    np.testing.assert_allclose(emb, expected, rtol=1e-6)


def test_embedding_rows_share_the_score_keys_and_are_window_chunk_means(archive: Path, tmp_path: Path) -> None:
    out, hop = tmp_path / "out", 2.5
    predictor = birdnet()
    summary = run(archive, out, predictor, hop_s=hop, block_s=5.0)  # several blocks per file
    assert summary.analysed == 3 and summary.table == out / "detections.parquet"
    scores, emb = pd.read_parquet(out / "detections.parquet"), pd.read_parquet(out / "embeddings.parquet")
    assert list(emb.columns) == ["path", "start_s", "end_s"] + [f"emb_{j}" for j in range(DIMS)]
    pd.testing.assert_frame_equal(emb[["path", "start_s", "end_s"]], scores[["path", "start_s", "end_s"]])
    assert (emb.dtypes.iloc[3:] == np.float32).all()
    one = pd.read_parquet(embedding_path(out, "siteA/rec.wav"))
    assert len(one) == len(pd.read_parquet(part_path(out, "siteA/rec.wav"))) == 6  # 13 s at hop 2.5
    wave = sf.read(archive / "siteA/rec.wav", dtype="float32")[0]
    chunk = int(round(CHUNK_S * SAMPLE_RATE))
    for k, row in one.iterrows():
        start = int(round(row.start_s * SAMPLE_RATE))
        window = np.zeros(5 * SAMPLE_RATE, np.float32)
        piece = wave[start : start + len(window)]
        window[: len(piece)] = piece
        chunks = np.stack([window[int(round(o * SAMPLE_RATE)) :][:chunk] for o in predictor.offsets])
        expected = chunk_features(chunks).astype(np.float64).mean(0)
        np.testing.assert_allclose(row.iloc[3:].to_numpy(np.float64), expected, rtol=1e-5, atol=1e-7,
                                   err_msg=f"window {k} at {row.start_s} s")


def test_resume_recomputes_nothing_and_a_missing_embedding_table_redoes_its_file(archive: Path,
                                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(archive, out)
    first = pd.read_parquet(out / "embeddings.parquet")
    again = birdnet()
    summary = run(archive, out, again)
    assert summary.resumed == 3 and summary.analysed == 0 and again.model.chunks == 0
    embedding_path(out, "top.wav").unlink()  # as after a kill between the two renames of a file
    redo = birdnet()
    summary = run(archive, out, redo)
    assert summary.resumed == 2 and summary.analysed == 1 and redo.model.chunks > 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "embeddings.parquet"), first)


def test_shards_merged_equal_a_single_run(archive: Path, tmp_path: Path) -> None:
    run(archive, tmp_path / "single")
    first = run(archive, tmp_path / "sharded", shard=(0, 2))
    assert first.pending > 0 and first.table is None
    last = run(archive, tmp_path / "sharded", shard=(1, 2))
    assert last.table is not None
    for name in ("embeddings.parquet", "detections.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sharded" / name),
                                      pd.read_parquet(tmp_path / "single" / name))
    (tmp_path / "sharded" / "embeddings.parquet").unlink()
    merge_results(tmp_path / "sharded")  # merging on demand writes both tables again
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sharded" / "embeddings.parquet"),
                                  pd.read_parquet(tmp_path / "single" / "embeddings.parquet"))


@pytest.mark.skipif(not HAS_DASK, reason="dask.distributed not installed (the dask extra)")
def test_dask_writes_the_plain_embedding_table(archive: Path, tmp_path: Path) -> None:
    run(archive, tmp_path / "plain")
    summary = run(archive, tmp_path / "dask", engine="dask", workers=1, rebuild=birdnet)
    assert summary.analysed == 3 and summary.table is not None
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dask" / "embeddings.parquet"),
                                  pd.read_parquet(tmp_path / "plain" / "embeddings.parquet"))


def test_a_folder_of_another_embeddings_setting_is_refused(archive: Path, tmp_path: Path) -> None:
    run(archive, tmp_path / "with")
    with pytest.raises(BirdclefError, match="other models or settings"):
        analyze_archive(archive, tmp_path / "with", birdnet(), progress=False)
    analyze_archive(archive, tmp_path / "without", birdnet(), progress=False)
    with pytest.raises(BirdclefError, match="other models or settings"):
        run(archive, tmp_path / "without")
    assert not (tmp_path / "without" / "embeddings").exists()


class NoBirdnet(SinglePart):
    """An exported model's window interface (no BirdNET member)."""

    classes, sample_rate, lead, length, weights, config = CLASSES, 32_000, 0, 5 * 32_000, np.ones(1), RAW

    def score(self, windows: np.ndarray) -> list[np.ndarray]:
        return [np.full((len(windows), len(CLASSES)), 0.5)]

    def settings(self) -> dict:
        return {"backend": "fake"}


def test_embeddings_without_birdnet_are_refused_before_any_output(archive: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    assert window_scorer(NoBirdnet()).embedder is None
    with pytest.raises(BirdclefError, match="--embeddings needs BirdNET.*NoBirdnet"):
        run(archive, tmp_path / "out", NoBirdnet())
    assert not (tmp_path / "out").exists()
    code = main(["analyze", str(archive), "--model", str(tmp_path / "model"), "--embeddings",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("birdclef analyze: error:") and "--embeddings needs BirdNET" in err
    assert "\n" not in err
