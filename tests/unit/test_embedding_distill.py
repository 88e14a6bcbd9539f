"""Embedding distillation (train.distill_teacher): the cosine loss and its schedule, the cached teacher (computed
once, the very audio the student hears), a student that learns the teacher, and an export without the projection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from birdclef import cli
from birdclef.birdnet.head_inputs import HeadInputs
from birdclef.config import load_config
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.metadata import DatasetLayout, load_classes
from birdclef.errors import ConfigError
from birdclef.train.distill_data import DistillData, DistillRows
from birdclef.train.embedding_distill import DistillModule, cosine_distance, cosine_weight
from birdclef.train.kfold import train_kfold
from birdclef.train.run_folder import background_bank
from birdclef.train.teacher import prepare_teacher, teacher_config
from birdclef.zoo.placeholder import PlaceholderModel
from tests.conftest import chirp, write_ogg

TINY = [
    "model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
    "model.frontend.n_fft=1024", "model.frontend.hop_length=1024", "model.frontend.image_size=null",
    "train.batch_size=4", "train.num_workers=0", "train.folds=[0]", "data.n_folds=3",
    "train.distill_teacher=placeholder",
]
QUIET = ["model.spec_augment.time_mask_prob=0", "model.spec_augment.freq_mask_prob=0",
         "model.spec_augment.brightness_prob=0", "model.drop_path_rate=0", "train.mixup_prob=0"]
"""No student-side noise: the rise test measures learning, not augmentation."""


def test_cosine_distance_equals_hand_values():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    teacher = torch.tensor([[0.0, 2.0], [5.0, 5.0], [4.0, 3.0]])
    # 1 - cos: orthogonal 1, parallel 0, (3,4).(4,3) / 25 = 24/25 -> 1/25
    assert cosine_distance(student, teacher).item() == pytest.approx((1.0 + 0.0 + 1.0 / 25.0) / 3.0, abs=1e-6)
    assert cosine_distance(student, -student).item() == pytest.approx(2.0, abs=1e-6)


def test_cosine_weight_is_none_while_distilling_then_decays_to_the_end_weight():
    train = load_config(None, ["train.distill_teacher=placeholder", "train.distill_epochs=2", "train.epochs=5",
                               "train.distill_weight=0.4", "train.distill_weight_end=0.0",
                               "train.distill_decay=linear"]).train
    assert cosine_weight(train, 0) is None and cosine_weight(train, 1) is None
    assert [cosine_weight(train, e) for e in range(2, 7)] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0])
    cosine = load_config(None, ["train.distill_teacher=placeholder", "train.distill_epochs=0", "train.epochs=3",
                                "train.distill_weight=0.4", "train.distill_weight_end=0.1"]).train
    assert [cosine_weight(cosine, e) for e in range(3)] == pytest.approx([0.4, 0.1 + 0.3 * 0.5, 0.1])
    one = load_config(None, ["train.distill_teacher=placeholder", "train.epochs=1"]).train
    assert cosine_weight(one, one.distill_epochs) == pytest.approx(one.distill_weight)


def test_config_refuses_what_distillation_cannot_do(tiny_dataset: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="train.distill_teacher"):
        load_config(None, ["train.distill_teacher=placeholder", "model.backbone=foundation",
                           "model.freeze_backbone=true", "model.foundation=[placeholder]"])
    with pytest.raises(ConfigError, match="train.distill_decay"):
        load_config(None, ["train.distill_teacher=placeholder", "train.distill_decay=step"])
    with pytest.raises(ConfigError, match="data.window_s must be 5"):
        train_kfold(load_config(None, TINY + ["data.window_s=3"]), tiny_dataset, tmp_path / "run", progress=False)
    assert cli.main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "x"), "--unlabelled",
                     str(tmp_path)]) == 2  # --unlabelled without a teacher


def _teacher(dataset: Path, root: Path, overrides: list[str]):
    config = load_config(None, TINY + overrides)
    layout = DatasetLayout.from_root(dataset)
    prepare_cache(dataset, root / "cache", num_workers=0, progress=False)
    cache, bank = WaveCache(root / "cache"), background_bank(config, layout)
    return config, layout, cache, bank, prepare_teacher(config, dataset, cache, bank, root / "distill", progress=False)


def test_a_training_row_is_the_audio_its_cached_target_was_computed_from(tiny_dataset: Path, tmp_path: Path):
    config, layout, cache, bank, teacher = _teacher(tiny_dataset, tmp_path, ["train.embed_copies=2",
                                                                            "train.background_prob=0.7",
                                                                            "train.distill_center=true"])
    assert [s.name for s in teacher.sources] == ["clips", str(tiny_dataset / "train_soundscapes")]
    assert teacher.embedding_size == 32 and all(s.n_copies == 2 for s in teacher.sources)
    classes = load_classes(layout)
    labels = np.zeros((len(cache.index), len(classes)), np.float32)
    items = np.array([[s, r] for s, source in enumerate(teacher.sources) for r in range(len(source))])
    rows = DistillRows(teacher, items, labels, np.ones(len(labels), np.float32), config, bank, train=True, seed=5)
    inputs = HeadInputs.from_config(teacher_config(config))
    mixed = 0
    for key in range(len(items)):
        wave, _, mask, _, target = rows[3 * len(items) + key]  # epoch 3
        clean = rows.teacher.sources[items[key, 0]].row(int(items[key, 1]), 0, config, bank)[0]
        mixed += not np.array_equal(wave.numpy(), clean)
        again = inputs.embed([wave.numpy()]).astype(np.float32).mean(axis=1)[0]  # what the teacher makes of it
        assert np.allclose(again - teacher.center, target.numpy(), atol=2e-3), key
        assert mask.all() == (items[key, 0] == 0)  # clips know their labels, unlabelled rows nothing
    assert 0 < mixed < len(items)  # some rows drew a mixed copy, some a copy that left them clean
    clean = np.concatenate([s.targets[0].astype(np.float32) for s in teacher.sources])
    assert np.abs(clean.mean(axis=0)).max() < 1e-3 < np.abs(teacher.center).max()  # centred targets


@pytest.fixture(scope="module")
def counted(tiny_dataset: Path, tmp_path_factory) -> dict:
    """A two-fold CLI run trained as one fold, then resumed with both, counting the teacher's windows."""
    root = tmp_path_factory.mktemp("counted")
    extra = root / "more"
    for i in range(2):
        write_ogg(extra / f"walk_{i}.ogg", chirp(12.0, 1_000 * (i + 1), 3_000 * (i + 1), seed=i))
    windows = {"n": 0}
    original = PlaceholderModel.infer

    def counting(self, batch):
        windows["n"] += len(batch)
        return original(self, batch)

    mp = pytest.MonkeyPatch()
    mp.setattr(PlaceholderModel, "infer", counting)
    run = root / "run"
    args = ["train", "--data", str(tiny_dataset), "--out", str(run), "--unlabelled", str(extra), "--no-progress",
            "--set", *TINY, "train.distill_epochs=1", "train.epochs=1", "train.embed_copies=1",
            "train.background_prob=0.5"]
    try:
        assert cli.main(args) == 0
        first = windows["n"]
        assert cli.main(args + ["train.folds=[0,1]", "--resume"]) == 0
    finally:
        mp.undo()
    return {"run": run, "first": first, "total": windows["n"], "extra": extra}


def test_teacher_embeddings_are_computed_once_and_reused_across_folds_and_resume(counted: dict):
    run = counted["run"]
    record = json.loads((run / "teacher.json").read_text())
    rows = sum(s["rows"] for s in record["sources"])
    assert [s["name"] for s in record["sources"]][-1] == str(counted["extra"].resolve())
    assert record["sources"][-1]["rows"] == 4  # two 12 s files: two full rows each (a 2 s tail is too short)
    mixed = sum(sum(s["mixed_rows"]) for s in record["sources"])
    assert 0 < mixed < rows and record["rows_computed"] == rows + mixed  # every clean row and each mixed one, once
    assert counted["first"] > 0 and counted["total"] == counted["first"]  # fold 1 and the resume added none
    assert (run / "fold0" / "done.json").is_file() and (run / "fold1" / "done.json").is_file()
    config = load_config(run / "config.yaml")
    assert str(counted["extra"].resolve()) in config.train.distill_unlabelled
    assert (run / "LICENSE-NOTE.txt").read_text().startswith("The CNNs of this run were trained to reproduce")
    assert record["centred"] is False  # the default: the raw cosine


@pytest.fixture(scope="module")
def distilled(tiny_dataset: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("distilled") / "run"
    config = load_config(None, TINY + QUIET + ["train.lr=1e-2", "train.distill_epochs=6", "train.epochs=1",
                                               "train.embed_copies=0", "train.distill_center=true"])  # no free mean
    train_kfold(config, tiny_dataset, run, progress=False)
    return run


def _cosines(run: Path, dataset: Path, trained: bool) -> tuple[float, float]:
    """Mean cosine to the (centred) teacher of fold 0's student over the clean rows it distilled on (all of them in
    one batch, BatchNorm on batch statistics: a few dozen steps leave running statistics that only fit the last
    stage's clips) and over its held-out rows (eval mode, as validation): as built, before any step (the fold's
    seed), or as trained (last.ckpt keeps the projection)."""
    from birdclef.data.examples import build_targets
    from birdclef.data.folds import assign_folds

    config = load_config(run / "config.yaml")
    layout = DatasetLayout.from_root(dataset)
    cache, bank = WaveCache(run / "cache"), background_bank(config, layout)
    teacher = prepare_teacher(config, dataset, cache, bank, run / "distill", progress=False)
    classes = load_classes(layout)
    labels, weights = build_targets(cache.index, classes, 1.0, False)
    folds = assign_folds(cache.index["primary_label"].astype(str).tolist(), 3, config.data.fold_seed)
    data = DistillData(config, teacher, labels, weights, folds, 0, bank)
    L.seed_everything(config.train.seed, verbose=False)
    module = DistillModule(config, classes, 0, teacher.embedding_size)
    if trained:
        module.load_state_dict(torch.load(run / "fold0" / "last.ckpt", weights_only=False)["state_dict"])
    means = []
    for items, training in ((data.val_items, False), (data.distill_items, True)):  # train mode updates BN stats
        rows = DistillRows(teacher, items, labels, weights, config, bank, train=False, seed=0)
        wave = torch.stack([rows[i][0] for i in range(len(rows))])
        target = torch.stack([rows[i][4] for i in range(len(rows))])
        with torch.no_grad():
            emb = module.train(training).project(module.model.forward_features(wave))  # QUIET: no augmentation
        means.append(float(torch.nn.functional.cosine_similarity(emb, target, dim=1).mean()))
    return means[1], means[0]


def test_the_student_learns_the_teachers_embeddings(distilled: Path, tiny_dataset: Path):
    (fit_start, val_start), (fit_end, val_end) = (_cosines(distilled, tiny_dataset, t) for t in (False, True))
    assert fit_end > fit_start + 0.5 and fit_end > 0.7, (fit_start, fit_end)  # the rows it heard
    assert val_end > val_start + 0.1, (val_start, val_end)  # and some of it carries to clips it never heard
    metrics = pd.read_csv(distilled / "fold0" / "metrics.csv")
    assert metrics["val_cos"].notna().all() and metrics["train_cos"].iloc[5] > metrics["train_cos"].iloc[0]
    assert json.loads((distilled / "fold0" / "done.json").read_text())["best_epoch"] == 6  # a label epoch


def test_export_drops_the_projection_and_passes_parity(distilled: Path, tiny_dataset: Path, tmp_path: Path):
    from birdclef.export.export import export_model
    from birdclef.models import load_checkpoint

    best = load_checkpoint(distilled / "fold0" / "best.pt")
    assert not any("projection" in k for k in best.model.state_dict())
    report = export_model([distilled], format="onnx", out=tmp_path / "model",
                          parity_audio=tiny_dataset / "train_soundscapes", parity_count=1)
    assert report.written and report.parity.passed
    graph = onnx.load(str(next((tmp_path / "model").glob("*.onnx")))).graph
    outputs = [(o.name, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]) for o in graph.output]
    assert len(outputs) == 1 and outputs[0][1][-1] == len(best.classes), outputs  # class scores only
