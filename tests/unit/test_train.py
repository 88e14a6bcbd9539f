"""Training: folds, mixup, the configured loss under mixup, eval determinism, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from birdclef.config import load_config
from birdclef.data.augment import add_background, mix_batch, mixed_target, mixup_loss
from birdclef.data.folds import assign_folds
from birdclef.models import load_checkpoint
from birdclef.train.kfold import build_targets, train_kfold
from birdclef.train.losses import create_loss
from birdclef.train.module import BirdModule

TINY = [
    "model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
    "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null",
    "data.window_s=1.0", "train.batch_size=4", "train.num_workers=0", "train.folds=[0]", "data.n_folds=3",
]


def test_folds_are_stratified_and_seeded():
    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 2
    folds = assign_folds(labels, n_folds=5, seed=42)
    assert folds.min() == 0 and folds.max() == 4
    assert all(np.bincount(folds[:10], minlength=5) == 2)  # 10 clips of "a": two per fold
    assert len(set(folds[10:15])) == 5 and len(set(folds[15:])) == 2
    assert (assign_folds(labels, 5, 42) == folds).all() and not (assign_folds(labels, 5, 7) == folds).all()


def test_too_many_folds_for_the_data_is_a_clear_error():
    from birdclef.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.n_folds=5 .* largest has 4"):
        assign_folds(["a"] * 4 + ["b"] * 3, n_folds=5)


def test_mixup_blend_and_max_rules():
    wave = torch.tensor([[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mixed = mix_batch(wave, target, 0.5, np.random.default_rng(0))
    expect = np.random.default_rng(0)
    lam, perm = expect.beta(0.5, 0.5), expect.permutation(3)
    assert mixed.lam == pytest.approx(lam)
    assert torch.allclose(mixed.wave, lam * wave + (1 - lam) * wave[perm])
    assert torch.equal(mixed.target, target) and torch.equal(mixed.partner, target[perm])
    assert torch.allclose(mixed_target(mixed, "blend"), lam * target + (1 - lam) * target[perm])
    assert torch.equal(mixed_target(mixed, "max"), torch.maximum(target, target[perm]))
    with pytest.raises(ValueError, match="blend"):
        mixed_target(mixed, "sum")


@pytest.mark.parametrize("loss", ["bce", "focal_bce"])
def test_weighted_mixup_loss_is_the_lam_weighted_loss_of_both_targets(loss: str):
    """Equal to the loss of the blended target for BCE (linear in the target) but not for focal BCE."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3) * 3
    target = torch.eye(3)[[0, 1, 2, 0]]
    mixed = mix_batch(torch.randn(4, 8), target, 0.5, np.random.default_rng(1))
    fn = create_loss(loss)
    weighted = mixup_loss(fn, logits, mixed, "weighted")
    assert weighted.item() == pytest.approx(
        (mixed.lam * fn(logits, target) + (1 - mixed.lam) * fn(logits, mixed.partner)).item(), rel=1e-6)
    blended = mixup_loss(fn, logits, mixed, "blend")
    assert blended.item() == pytest.approx(fn(logits, mixed_target(mixed, "blend")).item(), rel=1e-6)
    if loss == "bce":
        assert weighted.item() == pytest.approx(blended.item(), rel=1e-5)
    else:
        assert abs(weighted.item() - blended.item()) > 1e-3


def test_background_is_scaled_to_the_requested_gain():
    rng = np.random.default_rng(0)
    clip = rng.normal(0, 0.2, 8000).astype(np.float32)
    bg = rng.normal(0, 0.05, 8000).astype(np.float32)
    mixed = add_background(clip, bg, 0.5)
    added = mixed - clip
    assert np.sqrt(np.mean(added**2)) == pytest.approx(0.5 * np.sqrt(np.mean(clip**2)), rel=1e-3)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")  # training_step called without a Trainer
@pytest.mark.parametrize("mode", ["weighted", "blend"])
def test_configured_focal_loss_is_used_under_mixup(monkeypatch: pytest.MonkeyPatch, mode: str):
    """The reference fell back to plain BCE when mixup was on; here the configured loss must apply.

    The default (``weighted``, the reference's mixup criterion) calls it on both targets.
    """
    config = load_config(None, TINY + ["train.loss=focal_bce", "train.mixup_prob=1.0", f"train.mixup_target={mode}"])
    assert load_config(None, []).train.mixup_target == "weighted"
    module = BirdModule(config, ["a", "b", "c"])
    seen = []
    real_forward = module.criterion.forward

    def spy(logits, target, weight=None, mask=None):
        seen.append((logits.detach().clone(), target.clone()))
        return real_forward(logits, target, weight, mask)

    monkeypatch.setattr(module.criterion, "forward", spy)
    target = torch.eye(3)[[0, 1, 2, 0]]
    loss = module.training_step((torch.randn(4, 32_000), target, torch.ones(4, 3, dtype=torch.bool), torch.ones(4)), 0)
    logits = seen[0][0]
    focal, bce = create_loss("focal_bce"), create_loss("bce")
    if mode == "weighted":
        assert len(seen) == 2 and torch.equal(seen[0][1], target) and not torch.equal(seen[1][1], target)
        rng = np.random.default_rng([config.train.seed, 0, 0, 0, 0])  # the step's key: seed, fold, epoch, batch, rank
        rng.random()  # the mixup_prob draw
        lam = rng.beta(config.train.mixup_alpha, config.train.mixup_alpha)
        expected = lam * focal(logits, target) + (1 - lam) * focal(logits, seen[1][1])
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    else:
        assert len(seen) == 1 and not torch.equal(seen[0][1], target)  # the loss saw the blended (soft) target
        assert loss.item() == pytest.approx(focal(logits, seen[0][1]).item(), rel=1e-6)
        assert abs(loss.item() - bce(logits, seen[0][1]).item()) > 1e-4


def test_model_is_deterministic_in_eval():
    config = load_config(None, TINY)
    module = BirdModule(config, ["a", "b"]).eval()
    wave = torch.randn(2, 32_000)
    with torch.no_grad():
        assert torch.equal(module(wave)["clip_logits"], module(wave)["clip_logits"])


class StopAfterEpochs(L.Callback):
    """Stops training after `n` epochs, as a kill between epochs would."""

    def __init__(self, n: int):
        self.n = n

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.n:
            trainer.should_stop = True


class EpochLog(L.Callback):
    """Records the epochs a fit actually runs."""

    def __init__(self):
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def test_resumed_run_equals_uninterrupted_run(tiny_dataset: Path, tmp_path: Path):
    # A worker process: its iterator prefetches at creation, before Lightning sets the resumed epoch.
    config = load_config(None, TINY + ["train.epochs=3", "train.background_prob=0.5", "train.num_workers=1"])
    cache = tmp_path / "cache"
    full = train_kfold(config, tiny_dataset, tmp_path / "full", cache_dir=cache, progress=False)

    part = tmp_path / "part"
    first = train_kfold(config, tiny_dataset, part, cache_dir=cache, progress=False, callbacks=[StopAfterEpochs(1)])
    assert first.fold_scores == {} and not (part / "fold0" / "done.json").exists()
    assert (part / "fold0" / "last.ckpt").is_file()
    with pytest.raises(Exception, match="--resume"):
        train_kfold(config, tiny_dataset, part, cache_dir=cache, progress=False)
    log = EpochLog()
    resumed = train_kfold(config, tiny_dataset, part, cache_dir=cache, resume=True, progress=False, callbacks=[log])
    assert log.epochs == [1, 2]  # continued from last.ckpt, not retrained from scratch

    assert resumed.fold_scores == pytest.approx(full.fold_scores)
    a, b = _weights(tmp_path / "full" / "fold0" / "best.pt"), _weights(part / "fold0" / "best.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = pd.read_csv(tmp_path / "full" / "metrics.csv"), pd.read_csv(part / "metrics.csv")
    assert len(ma) == 3 and ma["epoch"].tolist() == [0, 1, 2]
    # Cosine from lr to min_lr over 3 epochs, as each epoch trained with it.
    lr, min_lr = config.train.lr, config.train.min_lr
    expected = [min_lr + (lr - min_lr) * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    assert ma["lr"].tolist() == pytest.approx(expected)
    pd.testing.assert_frame_equal(ma, mb)


def test_run_folder_contents_and_checkpoint_reload(tiny_dataset: Path, tmp_path: Path):
    config = load_config(None, TINY + ["train.epochs=1", "model.head=sed", "train.loss=focal_bce"])
    run = tmp_path / "run"
    summary = train_kfold(config, tiny_dataset, run, progress=False)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "env.json", "folds.csv", "metrics.csv", "oof.parquet", "summary.json", "fold0"} <= names
    assert {"best.pt", "last.ckpt", "oof.parquet", "done.json", "metrics.csv"} <= {p.name for p in (run / "fold0").iterdir()}
    oof = pd.read_parquet(run / "oof.parquet")
    folds = pd.read_csv(run / "folds.csv")
    assert len(oof) == (folds["fold"] == 0).sum() and oof[["fold"]].eq(0).all().all()
    loaded = load_checkpoint(run / "fold0" / "best.pt")
    classes = pd.read_csv(tiny_dataset / "sample_submission.csv").columns[1:].tolist()
    assert loaded.classes == classes and loaded.config.model.head == "sed"
    assert summary.oof_auc is None or 0.0 <= summary.oof_auc <= 1.0


def test_oof_is_keyed_by_clip_when_a_file_is_skipped_and_max_files_is_set(tmp_path: Path):
    """Cache positions shift past a broken file and under max_files; OOF rows must still name their clip."""
    import json

    from birdclef.data.synth import synthesize_dataset
    from birdclef.train.module import validation_auc

    data = tmp_path / "data"
    synthesize_dataset(data, n_species=3, clips_per_species=5, n_train_soundscapes=1, n_test_soundscapes=1,
                       soundscape_s=10.0, seed=4, progress=False)
    table = pd.read_csv(data / "train.csv")
    (data / "train_audio" / table["filename"][0]).write_bytes(b"not audio")  # skipped by the cache
    config = load_config(None, TINY + ["train.epochs=1", "data.max_files=13", "train.folds=[0, 1]"])
    summary = train_kfold(config, data, tmp_path / "run", progress=False)

    index = pd.read_parquet(tmp_path / "run" / "cache" / "index.parquet")
    assert table["filename"][0] not in set(index["filename"]) and len(index) == 12
    oof = pd.read_parquet(tmp_path / "run" / "oof.parquet")
    joined = oof.merge(index[["filename", "row"]], on="filename", suffixes=("", "_cache"), validate="one_to_one")
    assert len(joined) == len(oof) and (joined["row"] == joined["row_cache"]).all()
    labels = table.set_index("filename")["primary_label"]
    assert (oof["primary_label"].to_numpy() == labels[oof["filename"]].to_numpy()).all()
    classes = pd.read_csv(data / "sample_submission.csv").columns[1:].tolist()
    clips = table.set_index("filename").loc[oof["filename"]].reset_index()  # train.csv rows, found by clip
    truth, _ = build_targets(clips, classes, config.data.secondary_label_weight, rating_weight=False)
    assert summary.oof_auc == pytest.approx(validation_auc(truth, oof[classes].to_numpy()))
    assert "optimistic" in json.loads((tmp_path / "run" / "summary.json").read_text())["oof_note"]


@pytest.mark.parametrize(("override", "key"), [("train.loss=focall", "train.loss"), ("model.head=attn", "model.head"),
                                               ("model.backbone=efficientnet_b9x", "model.backbone")])
def test_misspelt_names_fail_before_the_run_folder_is_made(tiny_dataset: Path, tmp_path: Path, override: str, key: str):
    from birdclef.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        train_kfold(load_config(None, TINY + [override]), tiny_dataset, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_train_cli_reports_broken_clips_broken_background_and_data_warnings(
        tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from birdclef import cli

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    table = pd.read_csv(data / "train.csv")
    table.loc[0, "secondary_labels"] = "['not_a_class']"
    table.to_csv(data / "train.csv", index=False)
    (data / "train_audio" / table.loc[1, "filename"]).write_bytes(b"not audio")
    background = sorted((data / "train_soundscapes").glob("*.ogg"))[0]
    background.write_bytes(b"OggS broken")
    code = cli.main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--no-progress", "--set", *TINY,
                     "train.epochs=1", "train.background_prob=0.5"])
    out, err = capsys.readouterr()
    assert code == 0
    assert f"birdclef train: warning: {data / 'train.csv'}: unknown_secondary_label: 1" in err
    assert f"skipped 1 broken training clips: see {tmp_path / 'run' / 'cache' / 'skipped.csv'}" in out
    assert f"skipped background soundscape {background}: " in out
