"""Reviewed windows back into training (``train --reviews``): hard labels of one class, the rest masked, for
BirdNET embedding heads and the CNN examples table alike."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from birdclef.birdnet.head import EmbeddingHead
from birdclef.birdnet.head_pseudo import add_reviewed
from birdclef.birdnet.head_train import HeadData, fit_head, train_embedding_head
from birdclef.config import load_config
from birdclef.data.pseudo import soundscape_folds
from birdclef.data.reviewed import RUN_RECORD, read_reviewed
from birdclef.errors import ConfigError, DatasetError
from birdclef.review.reviews import Answer, save_answer

from test_birdnet_head import CONFIG, _fake_birdnet
from test_birdnet_head_pseudo import HEAD, N_SOUNDSCAPES, _heldout_auc, world  # noqa: F401 - a fixture

CLASSES = ["syn00", "syn01", "syn02"]


def _reviews(folder: Path, audio: Path, answers: list[tuple[str, str, float, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "archive.json").write_text(json.dumps({"archive": str(audio)}))
    for cls, file, start, answer in answers:
        save_answer(folder, Answer(cls, file, start, start + 5.0, answer, "sim"))
    return folder / "reviews.parquet"


def test_yes_is_a_positive_no_a_negative_of_its_class_only(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(audio / name, np.zeros(32_000 * 10, np.float32), 32_000)
    table = _reviews(tmp_path / "results", audio, [
        ("syn00", "a.wav", 0.0, "no"), ("syn00", "a.wav", 0.0, "yes"),  # changed mind: the latest wins
        ("syn02", "a.wav", 0.0, "no"), ("syn01", "b.wav", 5.0, "yes"), ("syn02", "b.wav", 0.0, "unsure")])
    labels = read_reviewed(table, CLASSES)
    assert labels.table[["path", "start_s"]].values.tolist() == [["a.wav", 0.0], ["b.wav", 5.0]]
    np.testing.assert_array_equal(labels.targets, [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(labels.mask, [[True, False, True], [False, True, False]])
    assert (labels.table["fold"] == -1).all() and labels.table["audio"].iloc[0] == str(audio / "a.wav")
    with pytest.raises(DatasetError, match="not classes of this dataset: \\['syn00'\\]"):
        read_reviewed(table, ["syn01", "syn02"])
    (tmp_path / "results" / "archive.json").unlink()
    with pytest.raises(DatasetError, match="archive.json: not found"):
        read_reviewed(table, CLASSES)


def _hand_made(seed: int = 0) -> tuple[HeadData, dict]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(0.0, 1.0, (40, 3, 6)).astype(np.float32)
    target = (rng.random((40, 3)) < 0.3).astype(np.float32)
    data = HeadData([(np.arange(40), emb)], np.arange(40), target, np.ones(40, np.float32), np.arange(40) % 2)
    mask = np.zeros((12, 3), bool)
    mask[np.arange(12), np.arange(12) % 3] = True  # one answered class per window
    reviewed = {"emb": rng.normal(0.0, 1.0, (12, 3, 6)).astype(np.float32),
                "targets": (rng.random((12, 3)) < 0.5).astype(np.float32), "mask": mask}
    return data, reviewed


def _fit(reviewed: dict, config) -> torch.Tensor:
    data, _ = _hand_made()
    add_reviewed(data, reviewed["emb"], reviewed["targets"], reviewed["mask"], 3.0)
    head = EmbeddingHead(np.zeros((3, 6), np.float32), np.full(3, -2.0, np.float32))
    fit_head(head, data, 0, config)
    return torch.cat([head.weight.detach().flatten(), head.bias.detach()])


def test_reviewed_windows_train_every_fold_and_only_their_answered_class_counts():
    data, reviewed = _hand_made()
    add_reviewed(data, reviewed["emb"], reviewed["targets"], reviewed["mask"], 3.0)
    for fold in (0, 1):
        fit, val = data.split(fold)
        assert set(range(40, 52)) <= set(fit) and not set(val) & set(range(40, 52))  # train always, never validate
        assert set(range(40, 52)) <= set(data.epoch_examples(fold, 1, 7, 1.0))
    assert (data.weight[40:] == 3.0).all() and torch.equal(data.mask[40:], torch.from_numpy(reviewed["mask"]))
    config = load_config(CONFIG, ["train.epochs=4", "train.batch_size=8", "train.lr=0.05"])
    trained = _fit(reviewed, config)
    flipped = dict(reviewed, targets=np.where(reviewed["mask"], reviewed["targets"], 1 - reviewed["targets"]))
    assert torch.equal(_fit(flipped, config), trained)  # unanswered classes: no loss, the same head bit for bit
    answers = dict(reviewed, targets=np.where(reviewed["mask"], 1 - reviewed["targets"], reviewed["targets"]))
    assert (_fit(answers, config) - trained).abs().max() > 1e-3  # a yes turned no moves the head


@pytest.fixture(scope="module")
def reviewed_head(world):  # noqa: F811 - the imported fixture
    """Fold 0 of a head trained with reviews of fold-1 soundscapes only: syn02 yes in the noisy first window,
    no in the clean second one (no clip teaches syn02)."""
    seed = load_config(CONFIG, HEAD).data.fold_seed
    folds = soundscape_folds([f"ss{i}.wav" for i in range(N_SOUNDSCAPES)] + ["broken.wav"], 2, seed)
    answers = [("syn02", f"ss{i}.wav", start, answer) for i in range(N_SOUNDSCAPES) if folds[f"ss{i}.wav"] == 1
               for start, answer in ((0.0, "yes"), (5.0, "no"))]
    table = _reviews(world.root / "reviewed-results", world.folder, answers)
    run = world.root / "reviewed"
    with pytest.MonkeyPatch.context() as mp:
        _fake_birdnet(mp)
        train_embedding_head(load_config(CONFIG, HEAD), world.data, run, progress=False, reviews=table)
    return SimpleNamespace(run=run, table=table, seed=seed, n=len(answers))


def test_a_class_only_reviews_teach_is_learned_on_unreviewed_soundscapes(reviewed_head, world):  # noqa: F811
    assert _heldout_auc(reviewed_head.run, 0, reviewed_head.seed) >= 0.95
    summary = json.loads((reviewed_head.run / "summary.json").read_text())
    assert summary["n_reviewed_windows"] == reviewed_head.n and summary["n_pseudo_windows"] == 0
    record = json.loads((reviewed_head.run / RUN_RECORD).read_text())
    assert record["positives"] == record["negatives"] == reviewed_head.n // 2
    with pytest.MonkeyPatch.context() as mp:
        _fake_birdnet(mp)
        with pytest.raises(ConfigError, match="trains on the reviews"):
            train_embedding_head(load_config(CONFIG, [*HEAD, "train.folds=[0, 1]"]), world.data, reviewed_head.run,
                                 resume=True, progress=False)


def test_reviewed_windows_join_the_cnn_examples_table_in_every_fold(tmp_path):
    from birdclef.data.cache import WaveCache, prepare_cache
    from birdclef.data.examples import build_examples, prepare_pseudo_audio
    from birdclef.data.synth import synthesize_dataset
    from birdclef.train.fold_data import FoldData

    from test_train import TINY

    data = tmp_path / "data"
    synthesize_dataset(data, n_species=3, clips_per_species=4, n_train_soundscapes=2, n_test_soundscapes=1,
                       soundscape_s=10.0, seed=3, progress=False)
    files = sorted(p.name for p in (data / "train_soundscapes").glob("*.ogg"))
    table = _reviews(tmp_path / "results", data / "train_soundscapes",
                     [("syn01", files[0], 0.0, "yes"), ("syn02", files[1], 5.0, "no")])
    config = load_config(None, TINY)
    d = config.data
    prepare_cache(data, tmp_path / "cache", strategy=d.strategy, window_s=d.window_s, sample_rate=d.sample_rate,
                  max_clip_s=d.max_clip_s, num_workers=0, progress=False)
    labels = read_reviewed(table, CLASSES)
    audio = prepare_pseudo_audio(labels, tmp_path / "store", d.sample_rate, d.window_s, progress=False)
    ex = build_examples(WaveCache(tmp_path / "cache"), CLASSES, config, None, audio, labels)
    review = np.flatnonzero(ex.table["source"].to_numpy() == "review")
    assert len(review) == 2 and (ex.table["fold"].to_numpy()[review] == -1).all()
    np.testing.assert_array_equal(ex.mask[review], [[False, True, False], [False, False, True]])
    np.testing.assert_array_equal(ex.targets[review], [[0, 1, 0], [0, 0, 0]])
    for fold in range(d.n_folds):
        fd = FoldData(config, ex, fold, None)
        assert set(review) <= set(fd.train_set.rows) and not set(review) & set(fd.val_set.rows)
        sampler = fd.train_dataloader().sampler
        rows = fd.train_set.rows[[k % len(fd.train_set.rows) for k in sampler]]
        assert set(review) <= set(rows)  # in every epoch
    wave, target, mask, weight = fd.train_set[int(np.flatnonzero(fd.train_set.rows == review[0])[0])]
    assert wave.shape[-1] == int(d.window_s * d.sample_rate) and mask.tolist() == [False, True, False]
