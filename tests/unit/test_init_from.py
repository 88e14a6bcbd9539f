"""``train.init_from`` (a fold starts from the same fold of a trained run) and ``selftrain --start`` /
``--student-init`` (an embedding-distilled run as round 0, its students starting from it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from birdclef import cli
from birdclef.config import load_config
from birdclef.errors import ConfigError
from birdclef.models import load_checkpoint
from birdclef.selftrain.rounds import SelfTrainSettings, run_selftrain
from birdclef.train.init_from import init_checkpoint, load_init
from birdclef.train.kfold import train_kfold
from birdclef.train.module import BirdModule

TINY = [
    "model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
    "model.frontend.n_fft=1024", "model.frontend.hop_length=1024", "model.frontend.image_size=null",
    "train.batch_size=4", "train.num_workers=0", "train.folds=[0,1]", "data.n_folds=3", "train.epochs=1",
    "train.accelerator=cpu",
]
DISTIL = ["train.distill_teacher=placeholder", "train.distill_epochs=1", "train.embed_copies=0"]


@pytest.fixture(scope="module")
def distilled(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folds 0 and 1 of a tiny CNN distilled from the weightless placeholder teacher, then one label epoch."""
    run = tmp_path_factory.mktemp("init") / "distilled"
    train_kfold(load_config(None, TINY + DISTIL), tiny_dataset, run, progress=False)
    return run


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_each_fold_starts_from_the_same_fold_of_the_run(distilled: Path, tiny_dataset: Path):
    from birdclef.data.metadata import DatasetLayout, load_classes

    classes = load_classes(DatasetLayout.from_root(tiny_dataset))
    config = load_config(None, TINY + [f"train.init_from={distilled}"])
    for fold in (0, 1):
        model = BirdModule(config, classes, fold).model
        fresh = _state(model)
        assert load_init(model, config, classes, fold) == distilled / f"fold{fold}" / "best.pt"
        saved = load_checkpoint(distilled / f"fold{fold}" / "best.pt").model.state_dict()
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)
        assert any(not torch.equal(fresh[k], saved[k]) for k in saved)  # it did change the model
    other = load_checkpoint(distilled / "fold1" / "best.pt").model.state_dict()
    model = BirdModule(config, classes, 0).model
    load_init(model, config, classes, 0)
    assert any(not torch.equal(model.state_dict()[k], other[k]) for k in other)  # fold 0 is not fold 1's
    one_file = load_config(None, TINY + [f"train.init_from={distilled / 'fold1' / 'best.pt'}"])
    assert init_checkpoint(one_file, 0) == init_checkpoint(one_file, 1) == distilled / "fold1" / "best.pt"
    assert init_checkpoint(load_config(None, TINY), 0) is None


def test_a_specialist_starts_from_a_full_run_with_its_classes_rows(distilled: Path, tiny_dataset: Path):
    from birdclef.data.metadata import DatasetLayout, load_classes

    classes = load_classes(DatasetLayout.from_root(tiny_dataset))
    config = load_config(None, TINY + [f"train.init_from={distilled}"])
    mine = [classes[2], classes[0]]  # a subset, in another order
    model = BirdModule(config, mine, 0).model
    load_init(model, config, mine, 0)
    full = load_checkpoint(distilled / "fold0" / "best.pt").model.state_dict()
    loaded = model.state_dict()
    assert torch.equal(loaded["head.fc.weight"], full["head.fc.weight"][[2, 0]])
    assert torch.equal(loaded["head.fc.bias"], full["head.fc.bias"][[2, 0]])
    assert all(torch.equal(loaded[k], full[k]) for k in full if not k.startswith("head.fc."))


def test_a_start_that_does_not_fit_is_a_clear_error(distilled: Path, tiny_dataset: Path, tmp_path: Path):
    from birdclef.data.metadata import DatasetLayout, load_classes

    classes = load_classes(DatasetLayout.from_root(tiny_dataset))
    with pytest.raises(ConfigError, match="fold 2 is not finished"):
        init_checkpoint(load_config(None, TINY + [f"train.init_from={distilled}"]), 2)
    with pytest.raises(ConfigError, match="data.n_folds=3, this config with 4"):
        init_checkpoint(load_config(None, TINY + [f"train.init_from={distilled}", "data.n_folds=4"]), 0)
    with pytest.raises(ConfigError, match="no such run folder"):
        init_checkpoint(load_config(None, TINY + [f"train.init_from={tmp_path / 'none'}"]), 0)
    config = load_config(None, TINY + [f"train.init_from={distilled}"])
    with pytest.raises(ConfigError, match="trained on 3 classes, this run has 4: 1 differ .*e.g. other"):
        load_init(BirdModule(config, classes + ["other"], 0).model, config, classes + ["other"], 0)
    wide = load_config(None, TINY + [f"train.init_from={distilled}", "model.frontend.n_mels=48",
                                     "model.head=sed"])
    with pytest.raises(ConfigError, match="does not fit this config.s .*head sed"):
        load_init(BirdModule(wide, classes, 0).model, wide, classes, 0)
    head = TINY + [f"train.init_from={distilled}", "model.backbone=foundation", "model.freeze_backbone=true",
                   "model.foundation=[placeholder]"]
    with pytest.raises(ConfigError, match="frozen embeddings"):
        train_kfold(load_config(None, head), tiny_dataset, tmp_path / "head", progress=False)
    assert cli.main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), "--set",
                     *TINY, f"train.init_from={distilled}", "train.folds=[2]"]) == 2


def test_a_distilled_run_is_round_zero_and_its_students_start_from_it(distilled: Path, tiny_dataset: Path,
                                                                     tmp_path: Path):
    out = tmp_path / "st"
    settings = SelfTrainSettings(rounds=1, start=str(distilled), student_init="start", hop_s=5.0)
    summary = run_selftrain(load_config(None, TINY), tiny_dataset, out, settings, device="cpu", progress=False,
                            log=lambda *_: None)
    zero, first = summary.rounds
    assert zero.student == str(distilled.resolve()) and not (out / "round0" / "run").exists()  # scored, not trained
    assert first.teachers == [str(distilled.resolve())] and first.pseudo["rows"] > 0
    stored = yaml.safe_load((Path(first.student) / "config.yaml").read_text())
    assert stored["train"]["init_from"] == str(distilled.resolve())
    with pytest.raises(ConfigError, match="other settings .*student_init"):
        run_selftrain(load_config(None, TINY), tiny_dataset, out,
                      SelfTrainSettings(rounds=1, start=str(distilled), hop_s=5.0), progress=False,
                      log=lambda *_: None)


def test_student_init_needs_a_cnn_and_a_start_of_every_fold(distilled: Path, tiny_dataset: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="--student-init must be one of"):
        SelfTrainSettings(student_init="warm")
    head = load_config(None, TINY + ["model.backbone=foundation", "model.freeze_backbone=true",
                                     "model.foundation=[placeholder]"])
    with pytest.raises(ConfigError, match="--student-init best: the config trains a head"):
        run_selftrain(head, tiny_dataset, tmp_path / "a", SelfTrainSettings(student_init="best"), progress=False,
                      log=lambda *_: None)
    three = load_config(None, TINY + ["train.folds=[0,1,2]"])
    with pytest.raises(ConfigError, match="--start with --student-init start: .*fold 2 is not finished"):
        run_selftrain(three, tiny_dataset, tmp_path / "b", SelfTrainSettings(start=str(distilled),
                                                                             student_init="start"),
                      progress=False, log=lambda *_: None)


def test_each_epoch_records_its_stage_and_cost(distilled: Path):
    import pandas as pd

    times = pd.read_csv(distilled / "fold0" / "times.csv")
    assert times["epoch"].tolist() == [0, 1] and times["stage"].tolist() == ["distill", "labels"]
    assert (times["wall_s"] > 0).all() and (times["cpu_s"] > 0).all()
    metrics = pd.read_csv(distilled / "fold0" / "metrics.csv")
    assert "wall_s" not in metrics.columns  # metrics stay equal between a resumed and an uninterrupted run
