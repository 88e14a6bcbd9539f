"""train.distill_head_init: a distilled student's classifier starts as an embedding head composed with its projection
(the composition against a hand computation, the refusals, a tiny run that starts its labels from it and resumes)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from birdclef import cli
from birdclef.birdnet.head import EmbeddingHead
from birdclef.config import load_config
from birdclef.data.metadata import DatasetLayout, load_classes
from birdclef.errors import ConfigError
from birdclef.models import load_checkpoint
from birdclef.train.distill_head_init import HeadInit, HeadStart, compose, head_start
from birdclef.train.embedding_distill import DistillModule
from birdclef.train.kfold import train_kfold
from tests.unit.test_embedding_distill import QUIET, TINY

HEAD = ["model.backbone=foundation", "model.freeze_backbone=true", "model.foundation=[placeholder]",
        "data.n_folds=3", "train.folds=[0]", "train.epochs=3", "train.embed_copies=0", "train.num_workers=0",
        "train.batch_size=8", "train.lr=0.01"]
STUDENT = TINY + QUIET + ["train.distill_epochs=1", "train.epochs=1", "train.embed_copies=0"]


@pytest.fixture(scope="module")
def head_run(tiny_dataset: Path, tmp_path_factory) -> Path:
    """A linear embedding head on the placeholder teacher, fold 0 of the students' 3-fold split."""
    run = tmp_path_factory.mktemp("head") / "run"
    train_kfold(load_config(None, HEAD), tiny_dataset, run, progress=False)
    return run


def test_the_composed_classifier_is_the_head_applied_to_the_scaled_projection():
    config = load_config(None, STUDENT + ["train.distill_head_init=x"])
    module = DistillModule(config, ["a", "b", "c"], 0, teacher_dim=32).eval()
    rng = np.random.default_rng(0)
    start = HeadStart(rng.normal(size=(3, 32)).astype(np.float32), rng.normal(size=3).astype(np.float32),
                      Path("head.pt"), 4, center=rng.normal(size=32).astype(np.float32))
    init = HeadInit(start)
    student, target = torch.randn(6, 32), torch.randn(6, 32)
    init.accumulate(student[:4], target[:4])
    init.accumulate(student[4:], target[4:])
    student64, target64 = student.double(), target.double()
    scale = float((student64 * target64).sum() / (student64 * student64).sum())  # least squares: argmin |t - s p|^2
    init.apply(module.model.head.fc, module.projection)
    assert init.record["scale"] == pytest.approx(scale, rel=1e-6) and init.record["centred"]
    feats = torch.randn(5, module.model.num_features, 2, 3)  # (B, C, F', T')
    head = EmbeddingHead(start.weight, start.bias).eval()
    with torch.no_grad():
        student_logits = module.model.forward_head(feats)["clip_logits"]
        embedding = scale * module.projection(feats.mean(dim=(2, 3))) + torch.from_numpy(start.center)
        assert torch.allclose(student_logits, head(embedding), atol=1e-4)
    with pytest.raises(ConfigError, match="takes 16-d embeddings, the teacher gives 32-d"):
        compose(HeadStart(start.weight[:, :16], start.bias, Path("head.pt"), 4), module.projection, 1.0)


def test_what_cannot_be_composed_is_refused_with_its_name(head_run: Path, tiny_dataset: Path, tmp_path: Path):
    classes = load_classes(DatasetLayout.from_root(tiny_dataset))
    ok = load_config(None, STUDENT + [f"train.distill_head_init={head_run}"])
    assert head_start(ok, classes, 0).weight.shape == (len(classes), 32)
    reversed_ = head_start(ok, classes[::-1], 0)  # a subset or another order takes the rows by name
    assert np.array_equal(reversed_.weight, head_start(ok, classes, 0).weight[::-1])
    with pytest.raises(ConfigError, match="hears placeholder, this run's teacher is train.distill_teacher=birdnet"):
        head_start(load_config(None, STUDENT + [f"train.distill_head_init={head_run}",
                                                "train.distill_teacher=birdnet"]), classes, 0)
    with pytest.raises(ConfigError, match="does not score 1 of this run's 4 classes: synXX"):
        head_start(ok, classes + ["synXX"], 0)
    with pytest.raises(ConfigError, match="data.n_folds=3, this config with 4"):
        head_start(load_config(None, STUDENT + [f"train.distill_head_init={head_run}", "data.n_folds=4"]), classes, 0)
    with pytest.raises(ConfigError, match="fold 1 is not finished"):
        head_start(ok, classes, 1)
    state = torch.load(head_run / "fold0" / "best.pt", weights_only=True)
    torch.save({**state, "hidden": 256}, tmp_path / "mlp.pt")
    mlp = load_config(None, STUDENT + [f"train.distill_head_init={tmp_path / 'mlp.pt'}"])
    with pytest.raises(ConfigError, match="mlp.pt: an MLP head"):
        head_start(mlp, classes, 0)
    with pytest.raises(ConfigError, match="train.distill_head_init sets a linear classifier .*model.head=sed"):
        load_config(None, STUDENT + ["train.distill_head_init=x", "model.head=sed"])
    with pytest.raises(ConfigError, match="train.distill_head_init needs train.distill_epochs > 0"):
        load_config(None, STUDENT + ["train.distill_head_init=x", "train.distill_epochs=0"])
    with pytest.raises(ConfigError, match="train.distill_head_init needs train.distill_teacher"):
        load_config(None, ["train.distill_head_init=x"])
    with pytest.raises(ConfigError, match="not an embedding-head run"):
        head_start(load_config(None, STUDENT + [f"train.distill_head_init={tmp_path}"]), classes, 0)
    assert cli.main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), "--no-progress", "--set",
                     *STUDENT, f"train.distill_head_init={head_run}", "train.distill_teacher=birdnet"]) == 2
    assert not (tmp_path / "r" / "distill").exists()  # refused before the teacher


FROZEN = STUDENT + ["train.lr=1e-12", "train.min_lr=0", "train.distill_center=true"]
"""A vanishing learning rate: the classifier best.pt keeps is the one the label epoch started from."""


@pytest.fixture(scope="module")
def cli_run(head_run: Path, tiny_dataset: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("student") / "run"
    assert cli.main(["train", "--data", str(tiny_dataset), "--out", str(run), "--no-progress", "--set", *FROZEN,
                     f"train.distill_head_init={head_run}"]) == 0
    return run


def test_a_cli_run_starts_its_labels_from_the_composed_head(cli_run: Path, head_run: Path, tiny_dataset: Path):
    done = json.loads((cli_run / "fold0" / "done.json").read_text())
    record = done["head_init"]
    assert record["checkpoint"] == str((head_run / "fold0" / "best.pt").resolve()) and done["best_epoch"] == 1
    assert np.isfinite(record["scale"]) and record["scale"] != 1.0 and record["centred"]  # 1.0: no sums (fallback)
    config = load_config(cli_run / "config.yaml")
    module = DistillModule(config, load_classes(DatasetLayout.from_root(tiny_dataset)), 0, teacher_dim=32)
    module.load_state_dict(torch.load(cli_run / "fold0" / "last.ckpt", weights_only=False)["state_dict"])
    teacher = json.loads((cli_run / "teacher.json").read_text())
    assert teacher["centred"]
    fc = load_checkpoint(cli_run / "fold0" / "best.pt").model.head.fc
    start = head_start(config, module.classes, 0)  # without the centre: W_h c is the rest of the bias
    weight, bias = compose(start, module.projection, record["scale"])
    assert torch.allclose(fc.weight.double(), weight, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(fc.bias.double(), bias, rtol=1e-4, atol=1e-6)  # the centre moved it


class _Boundary(L.Callback):
    """Keeps the classifier, the projection and the head rows as the first label epoch starts (after the module's
    hook, so at its first batch), and stops after `stop_after` epochs, as a kill between epochs would."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after, self.seen = stop_after, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == pl_module.config.train.distill_epochs and batch_idx == 0:
            head = pl_module.model.head.fc
            self.seen = (head.weight.detach().clone(), head.bias.detach().clone(), pl_module.head_init)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.stop_after is not None and trainer.current_epoch + 1 >= self.stop_after:
            trainer.should_stop = True


def test_a_run_resumed_at_the_boundary_composes_the_same_head(cli_run: Path, head_run: Path, tiny_dataset: Path,
                                                              tmp_path: Path):
    config = load_config(None, FROZEN + [f"train.distill_head_init={head_run}"])
    first, second = _Boundary(stop_after=1), _Boundary()
    train_kfold(config, tiny_dataset, tmp_path / "cut", progress=False, callbacks=[first])
    assert first.seen is None and not (tmp_path / "cut" / "fold0" / "done.json").exists()
    train_kfold(config, tiny_dataset, tmp_path / "cut", resume=True, progress=False, callbacks=[second])
    weight, bias, init = second.seen
    module = DistillModule(config, load_classes(DatasetLayout.from_root(tiny_dataset)), 0, teacher_dim=32)
    module.load_state_dict(torch.load(tmp_path / "cut" / "fold0" / "last.ckpt", weights_only=False)["state_dict"])
    expected = compose(init.start, module.projection, init.record["scale"])  # the lr leaves the projection as it was
    assert torch.allclose(weight.double(), expected[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(bias.double(), expected[1], rtol=1e-4, atol=1e-6)
    records = [json.loads((r / "fold0" / "done.json").read_text())["head_init"] for r in (cli_run, tmp_path / "cut")]
    assert records[0] == records[1]  # the scale sums of the distillation epoch survived the interruption
    whole, cut = (load_checkpoint(r / "fold0" / "best.pt").model.head.fc for r in (cli_run, tmp_path / "cut"))
    assert torch.equal(whole.weight, cut.weight) and torch.equal(whole.bias, cut.bias)
