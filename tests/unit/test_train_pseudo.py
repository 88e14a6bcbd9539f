"""Self-training on the Lightning path: clips and pseudo-labelled soundscape windows as one table of examples,
the fold rule, masked losses through the training step, mixup masks, and ``train --pseudo`` end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from birdclef import cli
from birdclef.audio.io import load_audio
from birdclef.config import load_config
from birdclef.data.augment import MixedBatch, max_targets, mix_batch, mixed_mask, mixed_target, mixup_loss
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.dataset import WindowDataset
from birdclef.data.examples import build_examples, build_targets, prepare_pseudo_audio
from birdclef.data.pseudo import read_pseudo, soundscape_folds, write_pseudo
from birdclef.errors import ConfigError, DatasetError
from birdclef.models import load_checkpoint
from birdclef.train.fold_data import FoldData
from birdclef.train.kfold import train_kfold
from birdclef.train.losses import create_loss
from birdclef.train.module import BirdModule
from test_train import TINY, EpochLog, StopAfterEpochs

CLASSES = ["syn00", "syn01", "syn02"]
SOFT = {"syn00": 0.7, "syn01": np.nan, "syn02": 0.2}
"""Every pseudo row's targets: syn01 is masked (no teacher scores it)."""


@pytest.fixture(scope="module")
def pseudo_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset with 3 train soundscapes of 10 s, a pseudo table of their 6 windows)."""
    from birdclef.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("pseudo")
    data = out / "data"
    synthesize_dataset(data, n_species=3, clips_per_species=4, n_train_soundscapes=3, n_test_soundscapes=1,
                       soundscape_s=10.0, seed=3, progress=False)
    return data, _table(data, out / "pseudo.parquet", SOFT)


def _table(data: Path, out: Path, values: dict[str, float]) -> Path:
    files = sorted(p.name for p in (data / "train_soundscapes").glob("*.ogg"))
    frame = pd.DataFrame([{"path": f, "start_s": s, "end_s": s + 5.0, "fold": 0, **values}
                          for f in files for s in (0.0, 5.0)])
    return write_pseudo(frame, CLASSES, {"soundscapes": str((data / "train_soundscapes").resolve())}, out)


def _examples(data: Path, table: Path, tmp_path: Path, *overrides: str):
    config = load_config(None, [*TINY, *overrides])
    d = config.data
    prepare_cache(data, tmp_path / "cache", strategy=d.strategy, window_s=d.window_s, sample_rate=d.sample_rate,
                  max_clip_s=d.max_clip_s, num_workers=0, progress=False)
    cache = WaveCache(tmp_path / "cache")
    labels = read_pseudo(table, CLASSES, d.n_folds, d.fold_seed)
    audio = prepare_pseudo_audio(labels, tmp_path / "pseudo_cache", d.sample_rate, d.window_s, progress=False)
    return config, cache, labels, build_examples(cache, CLASSES, config, labels, audio)


def test_examples_table_holds_clips_then_pseudo_windows(pseudo_data, tmp_path: Path):
    data, table = pseudo_data
    config, cache, labels, ex = _examples(data, table, tmp_path, "train.pseudo_weight=0.25", "data.rating_weight=true")
    n = len(cache)
    assert ex.n_clips == n and len(ex) == n + 6
    assert ex.table["source"].tolist() == ["clip"] * n + ["pseudo"] * 6
    targets, weights = build_targets(cache.index, CLASSES, config.data.secondary_label_weight, True)
    assert np.array_equal(ex.targets[:n], targets) and ex.mask[:n].all()
    assert np.array_equal(ex.weights[:n], weights) and (ex.weights[n:] == np.float32(0.25)).all()
    assert ex.table["cache_row"].tolist()[:n] == list(range(n))
    pseudo = ex.table.iloc[n:]
    folds = soundscape_folds(pseudo["audio"].map(lambda a: Path(a).name).tolist(), 3, config.data.fold_seed)
    assert pseudo["fold"].tolist() == [folds[Path(a).name] for a in pseudo["audio"]]
    assert sorted(set(pseudo["fold"])) == [0, 1, 2]  # three files, three folds
    assert np.allclose(ex.targets[n:], [[0.7, 0.0, 0.2]] * 6)
    assert ex.mask[n:].tolist() == [[True, False, True]] * 6
    # A 1 s model takes the second centred on each 5 s row: 2..3 s, then 7..8 s of the file.
    wave = load_audio(pseudo["audio"].iloc[1], config.data.sample_rate)
    sr = config.data.sample_rate
    assert np.array_equal(ex.wave(n + 1), wave[7 * sr : 8 * sr].astype(np.float16).astype(np.float32))


def test_pseudo_audio_is_decoded_once_and_a_broken_recording_is_named(pseudo_data, tmp_path: Path):
    data, table = pseudo_data
    labels = read_pseudo(table, CLASSES, 3, 42)
    store = prepare_pseudo_audio(labels, tmp_path / "store", 32_000, 1.0, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in store.path.iterdir()}
    again = prepare_pseudo_audio(labels, tmp_path / "store", 32_000, 1.0, progress=False)
    assert again.path == store.path and {p.name: p.stat().st_mtime_ns for p in again.path.iterdir()} == stamps
    assert store.path.name.startswith(labels.sha256[:16]) and len(store.files) == 3

    broken = tmp_path / "sc"
    broken.mkdir()
    for f in (data / "train_soundscapes").glob("*.ogg"):
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "SYN_SOUNDSCAPE_001.ogg").write_bytes(b"not audio")
    labels.table["audio"] = [str(broken / Path(a).name) for a in labels.table["audio"]]
    with pytest.raises(DatasetError, match=r"pseudo.parquet: recording .*SYN_SOUNDSCAPE_001.ogg cannot be decoded"):
        prepare_pseudo_audio(labels, tmp_path / "other", 32_000, 1.0, progress=False)


def test_fold_k_trains_on_other_soundscape_folds_and_validates_on_its_clips(pseudo_data, tmp_path: Path):
    data, table = pseudo_data
    config, cache, _, ex = _examples(data, table, tmp_path, "train.pseudo_ratio=0.25")
    for fold in range(3):
        fd = FoldData(config, ex, fold, None)
        train_rows, val_rows = fd.train_set.rows, fd.val_set.rows
        sources, folds = ex.table["source"].to_numpy(), ex.table["fold"].to_numpy()
        assert (folds[train_rows] != fold).all() and (sources[train_rows] == "pseudo").sum() == 4
        assert (sources[val_rows] == "clip").all() and (folds[val_rows] == fold).all()
        assert set(val_rows) == set(np.flatnonzero((sources == "clip") & (folds == fold)))
        assert (folds[fd.train_set.mix_rows] != fold).all()
        assert fd.n_pseudo == min(round(0.25 * fd.n_clips), 4) == 2
        drawn = []
        for epoch in range(6):
            sampler = fd.train_dataloader().sampler
            sampler.set_epoch(epoch)
            keys = list(sampler)
            assert keys == list(sampler)  # seeded by (seed, epoch)
            positions = [k - epoch * len(train_rows) for k in keys]
            rows = train_rows[positions]
            assert len(rows) == fd.n_clips + 2 and (sources[rows] == "clip").sum() == fd.n_clips
            drawn.append(frozenset(rows[sources[rows] == "pseudo"]))
        assert len(set(drawn)) > 1  # a different subset of the pool in different epochs
        wave, target, mask, weight = fd.val_set[0]
        assert mask.all() and weight == ex.weights[val_rows[0]]


def test_soundscape_mixup_combines_targets_by_max_and_keeps_known_positives(pseudo_data, tmp_path: Path):
    data, table = pseudo_data
    config, cache, _, ex = _examples(data, table, tmp_path)
    clips = np.flatnonzero(ex.table["source"] == "clip")
    one_pseudo = np.array([ex.n_clips])
    mixed = WindowDataset(ex, clips, train=True, seed=1, mix_rows=one_pseudo, mix_prob=1.0)
    plain = WindowDataset(ex, clips, train=True, seed=1)
    for i, row in enumerate(clips):
        wave, target, mask, weight = mixed[i]
        clip_t = ex.targets[row]
        assert np.allclose(target.numpy(), np.maximum(clip_t, [0.7, 0.0, 0.2]))
        # syn01 is masked in the pseudo window: known only where the clip is a known syn01 positive.
        assert mask.tolist() == [True, bool(clip_t[1] >= 1), True]
        assert weight == ex.weights[row] and not torch.equal(wave, plain[i][0])
    pseudo_item = WindowDataset(ex, one_pseudo, train=True, seed=1, mix_rows=one_pseudo, mix_prob=1.0)[0]
    assert pseudo_item[2].tolist() == [True, False, True]  # soundscape mixup adds to clips only


def test_mixup_masks_by_hand():
    t = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.6, 1.0]])
    m = torch.tensor([[True, True, False], [False, False, True]])
    both, known = max_targets(t[0:1], m[0:1], t[1:2], m[1:2])
    assert torch.allclose(both, torch.tensor([[1.0, 0.6, 1.0]]))
    # class 0 and 2: a known positive on one side is present in the mix; class 1: 0 vs unknown is unknown.
    assert known.tolist() == [[True, False, True]]
    mixed = MixedBatch(torch.zeros(2, 4), t, t.flip(0), 0.25, m, m.flip(0))
    assert mixed_mask(mixed, "blend").tolist() == [[False, False, False]] * 2  # no class is known on both sides
    assert mixed_mask(mixed, "max").tolist() == [[True, False, True]] * 2
    assert torch.allclose(mixed_target(mixed, "max"), torch.tensor([[1.0, 0.6, 1.0]] * 2))
    logits, fn = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]), create_loss("bce")
    expected = 0.25 * fn(logits, t, None, m) + 0.75 * fn(logits, t.flip(0), None, m.flip(0))
    assert mixup_loss(fn, logits, mixed, "weighted").item() == pytest.approx(expected.item(), rel=1e-6)
    by_max = fn(logits, mixed_target(mixed, "max"), None, torch.tensor([[True, False, True]] * 2))
    assert mixup_loss(fn, logits, mixed, "max").item() == pytest.approx(by_max.item(), rel=1e-6)
    batch = mix_batch(torch.zeros(2, 4), t, 0.5, np.random.default_rng(0), m)
    rng = np.random.default_rng(0)
    rng.beta(0.5, 0.5)
    assert torch.equal(batch.mask, m) and torch.equal(batch.partner_mask, m[rng.permutation(2)])
    assert mix_batch(torch.zeros(2, 4), t, 0.5, np.random.default_rng(0)).partner_mask is None


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")  # training_step called without a Trainer
@pytest.mark.parametrize("mixup", ["none", "weighted", "blend", "max"])
def test_masked_targets_contribute_no_loss_or_gradient(mixup: str):
    extra = ["train.mixup_prob=0"] if mixup == "none" else ["train.mixup_prob=1", f"train.mixup_target={mixup}"]
    module = BirdModule(load_config(None, [*TINY, "train.loss=focal_bce", *extra]), CLASSES).train()
    torch.manual_seed(0)
    wave, weight = torch.randn(4, 32_000), torch.tensor([1.0, 0.5, 0.25, 1.0])
    target = torch.tensor([[1.0, 0, 0], [0.7, 0, 0.2], [0, 1, 0], [0.1, 0.4, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, True], [True, True, True], [False, True, False]])
    other = target.clone()
    other[~mask] = torch.tensor([1.0, 0.9, 0.5])  # only the unknown targets change

    def run(t: torch.Tensor):
        m = copy.deepcopy(module)
        loss = m.training_step((wave, t, mask, weight), 0)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    (la, ga), (lb, gb) = run(target), run(other)
    assert torch.equal(la, lb) and ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    if mixup != "max":  # (under max a known target can be dominated by its partner's)
        known = target.clone()
        known[3, 1] = 0.9
        assert not torch.equal(run(known)[0], la)  # a known target does count


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def test_train_pseudo_cli_then_resume_equals_uninterrupted_and_another_table_is_refused(
        pseudo_data, tmp_path: Path, capsys: pytest.CaptureFixture):
    data, table = pseudo_data
    settings = [*TINY, "train.epochs=2", "train.pseudo_mix_prob=0.5", "train.pseudo_ratio=0.5",
                "train.background_prob=0.5"]
    full, cache = tmp_path / "full", tmp_path / "cache"
    argv = ["train", "--data", str(data), "--cache", str(cache), "--no-progress", "--device", "cpu",
            "--pseudo", str(table), "--set", *settings]
    assert cli.main([*argv, "--out", str(full)]) == 0
    folds = pd.read_csv(full / "pseudo_folds.csv")
    record = json.loads((full / "pseudo.json").read_text())
    labels = read_pseudo(table, CLASSES, 3, 42)
    assert record["sha256"] == labels.sha256 and record["rows"] == 6 and len(folds) == 3
    assert dict(zip(folds["path"], folds["fold"])) == soundscape_folds(folds["path"].tolist(), 3, 42)
    assert json.loads((full / "summary.json").read_text())["n_pseudo"] == 6
    assert (full / "fold0" / "best.pt").is_file() and len(pd.read_csv(full / "metrics.csv")) == 2
    oof = pd.read_parquet(full / "oof.parquet")
    assert set(oof["filename"]) <= set(pd.read_csv(data / "train.csv")["filename"])  # clips only

    config = load_config(None, [*settings, "train.num_workers=1"])  # a worker prefetches before the resumed epoch
    part = tmp_path / "part"
    train_kfold(config, data, part, cache_dir=cache, progress=False, callbacks=[StopAfterEpochs(1)], pseudo=table)
    assert not (part / "fold0" / "done.json").exists()
    log = EpochLog()
    train_kfold(config, data, part, cache_dir=cache, resume=True, progress=False, callbacks=[log], pseudo=table)
    assert log.epochs == [1]
    a, b = _weights(full / "fold0" / "best.pt"), _weights(part / "fold0" / "best.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(full / "metrics.csv"), pd.read_csv(part / "metrics.csv"))

    other = _table(data, tmp_path / "other.parquet", {**SOFT, "syn00": 0.9})
    capsys.readouterr()
    assert cli.main([*argv[:-len(settings) - 3], "--pseudo", str(other), "--resume", "--out", str(full)]) == 2
    err = capsys.readouterr().err
    assert "other.parquet" in err and str(table.resolve()) in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match=r"trained with the pseudo-label table .*pseudo.parquet; pass --pseudo"):
        train_kfold(config, data, full, cache_dir=cache, resume=True, progress=False)
    plain = tmp_path / "plain"
    train_kfold(load_config(None, [*TINY, "train.epochs=1"]), data, plain, cache_dir=cache, progress=False)
    with pytest.raises(ConfigError, match="without pseudo-labels"):
        train_kfold(load_config(None, [*TINY, "train.epochs=1"]), data, plain, cache_dir=cache, resume=True,
                    progress=False, pseudo=table)
