"""Self-training the BirdNET embedding head on pseudo-labelled soundscape windows (``train --pseudo``).

The fake BirdNET of test_birdnet_head.py embeds a chunk as its spectral power share in 12 bands of 2 kHz.
The student's dataset is the synthetic one without syn02's clips, so syn02 is a class no clip teaches.
Its pseudo-labelled soundscapes (48 kHz WAV, 10 s) hold a 19 kHz tone plus broadband noise in their first
window (teacher: syn02 0.9) and a clean 23 kHz tone in the second (syn02 0); syn00 is NaN (masked).
The clips (32 kHz sources) have no energy above 16 kHz and all are syn02 negatives, so a head trained on
clips alone pushes syn02 down wherever clips have energy, i.e. on the noise of the positive windows.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from birdclef.birdnet import head_pseudo
from birdclef.birdnet.head import EmbeddingHead, load_head, pool_logits
from birdclef.birdnet.head_train import HeadData, fit_head, train_embedding_head
from birdclef.birdnet.model import SAMPLE_RATE
from birdclef.birdnet.predictor import chunk_offsets, row_chunks
from birdclef.config import load_config
from birdclef.data.pseudo import RUN_FOLDS, RUN_RECORD, soundscape_folds, write_pseudo
from birdclef.errors import ConfigError, DatasetError
from birdclef.metrics import macro_roc_auc

from test_birdnet_head import CONFIG, SMALL, FakeBirdnet, _fake_birdnet

CLASSES = ["syn00", "syn01", "syn02"]
N_SOUNDSCAPES = 8
HEAD = [*SMALL, "model.init_from_birdnet=false", "train.lr=0.01", "train.epochs=5"]


def _soundscape(seed: int) -> np.ndarray:
    """10 s at 48 kHz: a 19 kHz tone in broadband noise, then a clean 23 kHz tone."""
    t = np.arange(5 * SAMPLE_RATE) / SAMPLE_RATE
    noise = np.random.default_rng(seed).normal(0.0, 0.1, t.size)
    return np.concatenate([0.3 * np.sin(2 * np.pi * 19_000 * t) + noise,
                           0.3 * np.sin(2 * np.pi * 23_000 * t)]).astype(np.float32)


def _table(folder: Path, out: Path, syn02: tuple[float, float] = (0.9, 0.0), syn00: float = np.nan) -> Path:
    rows = []
    for i in range(N_SOUNDSCAPES):
        for start, p in zip((0.0, 5.0), syn02):
            rows.append({"path": f"ss{i}.wav", "start_s": start, "end_s": start + 5, "fold": -1,
                         "syn00": syn00, "syn01": 0.0, "syn02": p})
    rows += [{"path": "broken.wav", "start_s": s, "end_s": s + 5, "fold": -1, "syn00": np.nan, "syn01": 0.0,
              "syn02": 0.5} for s in (0.0, 5.0)]
    return write_pseudo(pd.DataFrame(rows), CLASSES, {"soundscapes": str(folder)}, out)


@pytest.fixture(scope="module")
def world(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The dataset without syn02 clips, the soundscapes and their pseudo table."""
    root = tmp_path_factory.mktemp("pseudo-head")
    data = root / "data"
    data.mkdir()
    for item in tiny_dataset.iterdir():
        if item.name != "train.csv":
            (data / item.name).symlink_to(item)
    train = pd.read_csv(tiny_dataset / "train.csv")
    train[train["primary_label"] != "syn02"].to_csv(data / "train.csv", index=False)
    folder = root / "soundscapes"
    folder.mkdir()
    for i in range(N_SOUNDSCAPES):
        sf.write(folder / f"ss{i}.wav", _soundscape(i), SAMPLE_RATE)
    (folder / "broken.wav").write_bytes(b"not audio at all")
    return SimpleNamespace(root=root, data=data, folder=folder, table=_table(folder, root / "pseudo.parquet"))


def _count_embedded(mp: pytest.MonkeyPatch) -> list[int]:
    """Patch head_pseudo's embedding call to count the pseudo windows it embeds."""
    counted, real = [], head_pseudo.embed_rows
    mp.setattr(head_pseudo, "embed_rows", lambda model, waves, *a: counted.append(len(waves)) or real(model, waves, *a))
    return counted


def _record_draws(mp: pytest.MonkeyPatch) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Patch HeadData.epoch_examples to record (fold, training positions, pseudo-row flags) of each call."""
    draws, real = [], HeadData.epoch_examples

    def spy(self, fold, epoch, seed, ratio):
        positions = real(self, fold, epoch, seed, ratio)
        draws.append((fold, positions - int(np.argmax(self.pseudo)), self.pseudo[positions]))
        return positions

    mp.setattr(HeadData, "epoch_examples", spy)
    return draws


@pytest.fixture(scope="module")
def student(world: SimpleNamespace) -> SimpleNamespace:
    """Fold 0 trained with the pseudo table, then resumed for fold 1; embedding counts and draws recorded."""
    run = world.root / "student"
    out = SimpleNamespace(run=run, config=load_config(CONFIG, HEAD))
    with pytest.MonkeyPatch.context() as mp:
        _fake_birdnet(mp)
        out.first, out.draws = _count_embedded(mp), _record_draws(mp)
        train_embedding_head(out.config, world.data, run, progress=False, pseudo=world.table)
    with pytest.MonkeyPatch.context() as mp:
        _fake_birdnet(mp)
        out.again, out.resume_draws = _count_embedded(mp), _record_draws(mp)
        FakeBirdnet.chunks_seen = 0
        resumed = load_config(CONFIG, [*HEAD, "train.folds=[0, 1]"])
        train_embedding_head(resumed, world.data, run, resume=True, progress=False, pseudo=world.table)
        out.chunks_on_resume = FakeBirdnet.chunks_seen
    return out


def test_pseudo_windows_are_embedded_once_and_reused_on_resume(student: SimpleNamespace) -> None:
    assert sum(student.first) == 2 * N_SOUNDSCAPES  # every decodable window, the broken file skipped
    assert (student.run / "fold1" / "done.json").is_file()
    assert student.again == [] and student.chunks_on_resume == 0  # clip and pseudo embeddings both cached
    summary = json.loads((student.run / "summary.json").read_text())
    assert summary["n_pseudo_windows"] == 2 * N_SOUNDSCAPES
    assert len(summary["skipped_pseudo"]) == 1 and "broken.wav" in summary["skipped_pseudo"][0]
    [cache] = (student.run / "embeddings").glob("pseudo-*.npz")
    with np.load(cache) as data:
        assert data["emb"].shape == (2 * N_SOUNDSCAPES, len(chunk_offsets(0.5)), 12)


def test_a_fold_never_trains_on_pseudo_windows_of_its_own_soundscapes(student: SimpleNamespace,
                                                                      world: SimpleNamespace) -> None:
    table = pd.read_parquet(world.table)
    with np.load(next((student.run / "embeddings").glob("pseudo-*.npz"))) as data:
        paths = table["path"].to_numpy()[data["rows"]]
    folds = soundscape_folds(table["path"].tolist(), 2, student.config.data.fold_seed)
    for draws, fold in ((student.draws, 0), (student.resume_draws, 1)):
        assert {f for f, _, _ in draws} == {fold}
        drawn = [paths[offset[is_pseudo]] for _, offset, is_pseudo in draws[1:]]  # draws[0]: the step count
        assert all(len(d) > 0 for d in drawn)
        assert {folds[p] for d in drawn for p in d} == {1 - fold}


def test_the_run_records_its_table_and_soundscape_folds(student: SimpleNamespace, world: SimpleNamespace) -> None:
    record = json.loads((student.run / RUN_RECORD).read_text())
    assert record["sha256"] == hashlib.sha256(world.table.read_bytes()).hexdigest()
    assert record["table"] == str(world.table.resolve())
    files = pd.read_csv(student.run / RUN_FOLDS)
    expected = soundscape_folds([f"ss{i}.wav" for i in range(N_SOUNDSCAPES)] + ["broken.wav"], 2,
                                student.config.data.fold_seed)
    assert dict(zip(files["path"], files["fold"])) == expected
    assert set(files["audio"]) == {str((world.folder / p).resolve()) for p in expected}


def _heldout_auc(run: Path, fold: int, seed: int) -> float:
    """Macro ROC-AUC of syn02 by the run's fold-`fold` head on the windows of that fold's soundscapes."""
    head, _ = load_head(run / f"fold{fold}" / "best.pt")
    folds = soundscape_folds([f"ss{i}.wav" for i in range(N_SOUNDSCAPES)] + ["broken.wav"], 2, seed)
    held = [i for i in range(N_SOUNDSCAPES) if folds[f"ss{i}.wav"] == fold]
    chunks = np.concatenate([row_chunks(_soundscape(i), SAMPLE_RATE, 2, chunk_offsets(0.5)) for i in held])
    emb = torch.from_numpy(FakeBirdnet().infer(chunks)[1]).reshape(2 * len(held), len(chunk_offsets(0.5)), -1)
    with torch.no_grad():
        scores = pool_logits(head(emb), "max")[:, 2].numpy()
    return macro_roc_auc(np.tile([[1.0], [0.0]], (len(held), 1)), scores[:, None])


def test_a_class_only_the_pseudo_labels_teach_is_learned(student: SimpleNamespace, world: SimpleNamespace) -> None:
    baseline = world.root / "baseline"
    with pytest.MonkeyPatch.context() as mp:
        _fake_birdnet(mp)
        train_embedding_head(student.config, world.data, baseline, progress=False)
    assert not (baseline / RUN_RECORD).exists()
    assert json.loads((student.run / "fold0" / "done.json").read_text())["best_epoch"] > 0
    seed = student.config.data.fold_seed
    taught, untaught = _heldout_auc(student.run, 0, seed), _heldout_auc(baseline, 0, seed)
    assert taught >= 0.95 and untaught <= 0.5, (taught, untaught)
    with pytest.MonkeyPatch.context() as mp:  # a run trained without pseudo-labels refuses to take some now
        _fake_birdnet(mp)
        with pytest.raises(ConfigError, match="finished folds \\(fold0\\) trained without pseudo-labels"):
            train_embedding_head(student.config, world.data, baseline, resume=True, progress=False,
                                 pseudo=world.table)


def test_resume_with_another_table_or_none_is_refused(student: SimpleNamespace, world: SimpleNamespace) -> None:
    other = _table(world.folder, world.root / "other.parquet", syn02=(0.8, 0.1))
    old_sha = hashlib.sha256(world.table.read_bytes()).hexdigest()
    new_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    before = (student.run / RUN_RECORD).read_text()
    with pytest.MonkeyPatch.context() as mp:
        _fake_birdnet(mp)
        with pytest.raises(ConfigError) as refused:
            train_embedding_head(student.config, world.data, student.run, resume=True, progress=False, pseudo=other)
        with pytest.raises(ConfigError, match=f"trains on the pseudo-label table .*pseudo.parquet.*{old_sha}"):
            train_embedding_head(student.config, world.data, student.run, resume=True, progress=False)
    message = str(refused.value)
    assert str(other) in message and new_sha in message and str(world.table.resolve()) in message
    assert old_sha in message
    assert (student.run / RUN_RECORD).read_text() == before


def test_a_window_that_is_not_5_s_is_a_dataset_error(world: SimpleNamespace, tmp_path: Path, monkeypatch) -> None:
    _fake_birdnet(monkeypatch)
    frame = pd.DataFrame({"path": ["ss0.wav"], "start_s": [0.0], "end_s": [3.0], "fold": [0], "syn02": [0.5]})
    table = write_pseudo(frame, ["syn02"], {"soundscapes": str(world.folder)}, tmp_path / "short.parquet")
    with pytest.raises(DatasetError, match="row 0 \\(ss0.wav at 0.0 s\\) spans 3 s; the head trains on 5 s"):
        train_embedding_head(load_config(CONFIG, HEAD), world.data, tmp_path / "run", pseudo=table)
    assert not (tmp_path / "run").exists()


def _hand_made(seed: int = 0) -> tuple[HeadData, dict]:
    """40 clip rows (2 folds) and 20 pseudo rows (2 soundscape folds) of random 6-d embeddings, 3 classes."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(0.0, 1.0, (40, 3, 6)).astype(np.float32)
    target = (rng.random((40, 3)) < 0.3).astype(np.float32)
    data = HeadData([(np.arange(40), emb)], np.arange(40), target, np.ones(40, np.float32), np.arange(40) % 2)
    pseudo = {"emb": rng.normal(0.0, 1.0, (20, 3, 6)).astype(np.float32),
              "targets": rng.random((20, 3)).astype(np.float32), "mask": rng.random((20, 3)) < 0.5,
              "folds": np.arange(20) // 10}
    return data, pseudo


def _fit(pseudo: dict, config) -> torch.Tensor:
    data, _ = _hand_made()
    data.add_pseudo(pseudo["emb"], pseudo["targets"], pseudo["mask"], pseudo["folds"], 2.0)
    head = EmbeddingHead(np.zeros((3, 6), np.float32), np.full(3, -2.0, np.float32))
    fit_head(head, data, 0, config)
    return torch.cat([head.weight.detach().flatten(), head.bias.detach()])


def test_masked_pseudo_targets_contribute_no_loss() -> None:
    config = load_config(CONFIG, ["train.epochs=4", "train.batch_size=8", "train.lr=0.05"])
    _, pseudo = _hand_made()
    trained = _fit(pseudo, config)
    flipped = dict(pseudo, targets=np.where(pseudo["mask"], pseudo["targets"], 1.0 - pseudo["targets"]))
    assert torch.equal(_fit(flipped, config), trained)  # only masked targets changed: the same head, bit for bit
    known = dict(pseudo, targets=np.where(pseudo["mask"], 1.0 - pseudo["targets"], pseudo["targets"]))
    assert (_fit(known, config) - trained).abs().max() > 1e-3  # known targets do train the head


def test_each_epoch_draws_a_seeded_share_of_the_other_folds_pseudo_rows() -> None:
    data, pseudo = _hand_made()
    data.add_pseudo(pseudo["emb"], pseudo["targets"], pseudo["mask"], pseudo["folds"], 2.0)
    assert data.mask[:40].all() and torch.equal(data.mask[40:], torch.from_numpy(pseudo["mask"]))
    for fold in (0, 1):
        clips = data.split(fold)[0]
        assert not data.pseudo[clips].any() and len(clips) == 20
        draws = [data.epoch_examples(fold, epoch, 7, 0.25) for epoch in (1, 2, 3)]
        for drawn in draws:
            extra = drawn[data.pseudo[drawn]]
            assert len(extra) == 5 and len(set(extra)) == 5 and set(data.fold[extra]) == {1 - fold}
            np.testing.assert_array_equal(drawn[:20], clips)
        assert any(set(a) != set(b) for a, b in zip(draws, draws[1:]))  # a new draw each epoch
        np.testing.assert_array_equal(data.epoch_examples(fold, 2, 7, 0.25), draws[1])  # seeded
        assert len(data.epoch_examples(fold, 1, 7, 5.0)) == 20 + 10  # capped by the fold's pseudo rows
        np.testing.assert_array_equal(data.epoch_examples(fold, 1, 7, 0.0), clips)
    assert (data.weight[40:] == 2.0).all() and (data.rows[40:] == -1).all()
