"""Every config of the reference ladder trains end to end (real backbones, random init, tiny data)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

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


@pytest.mark.parametrize("name", ["baseline", "v3", "v4", "sed", "cpu-small"])
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
