"""Pseudo-labels in embedding distillation (windows as teacher rows, the fold rule, no new teacher work for windows
the unlabelled folder holds, the run record and its resume rule), unlabelled rows in label epochs (cosine only, no
BCE), and the pseudo mass cap (hand-computed factors, the loss with scaled masks, wired in the CNN, head and
distilled paths)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from birdclef import cli
from birdclef.birdnet.head import EmbeddingHead
from birdclef.birdnet.head_train import HeadData, fit_head
from birdclef.config import load_config
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.examples import build_examples, build_targets, prepare_pseudo_audio
from birdclef.data.folds import assign_folds
from birdclef.data.metadata import DatasetLayout, load_classes
from birdclef.data.pseudo import (MASS_RECORD, RUN_FOLDS, RUN_RECORD, mass_record, pseudo_mass_factors, read_pseudo,
                                  write_pseudo)
from birdclef.data.reviewed import read_reviewed
from birdclef.review.reviews import Answer, save_answer
from birdclef.train.distill_data import DistillData, DistillRows
from birdclef.train.distill_pseudo import labelled_windows
from birdclef.train.embedding_distill import DistillModule, cosine_distance, cosine_weight
from birdclef.train.fold_data import FoldData
from birdclef.train.losses import create_loss
from birdclef.train.run_folder import background_bank
from birdclef.train.teacher import prepare_teacher, source_stores
from birdclef.zoo.placeholder import PlaceholderModel
from test_embedding_distill import QUIET, TINY

CLASSES = ["syn00", "syn01", "syn02"]


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A dataset with three 10 s train soundscapes (three soundscape folds), a pseudo table of their 5 s rows
    (windows at 0 and 5 s: rows the teacher embeds anyway) and one with a 2.5 s hop (three windows it does not)."""
    from birdclef.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("dpseudo")
    data = out / "data"
    synthesize_dataset(data, n_species=3, clips_per_species=4, n_train_soundscapes=3, n_test_soundscapes=1,
                       soundscape_s=10.0, seed=3, progress=False)
    files = sorted(p.name for p in (data / "train_soundscapes").glob("*.ogg"))
    rng = np.random.default_rng(0)

    def table(starts: tuple[float, ...], name: str) -> Path:
        rows = [{"path": f, "start_s": s, "end_s": s + 5.0, "fold": 0} for f in files for s in starts]
        frame = pd.DataFrame(rows)
        for k, c in enumerate(CLASSES):
            frame[c] = rng.random(len(frame)).astype(np.float32)
        frame.loc[frame.index % 2 == 0, "syn01"] = np.nan  # masked cells
        return write_pseudo(frame, CLASSES, {"soundscapes": str((data / "train_soundscapes").resolve())},
                            out / name)

    return SimpleNamespace(data=data, files=files, rows=table((0.0, 5.0), "rows.parquet"),
                           hop=table((0.0, 2.5, 5.0), "hop.parquet"))


class _Count:
    """Counts the windows the placeholder teacher embeds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.n, original = 0, PlaceholderModel.infer

        def counting(model, batch):
            self.n += len(batch)
            return original(model, batch)

        monkeypatch.setattr(PlaceholderModel, "infer", counting)


def _setup(data: Path, root: Path, table: Path | None, overrides: list[str],
           reviews: Path | None = None) -> SimpleNamespace:
    config = load_config(None, TINY + QUIET + ["train.embed_copies=0", *overrides])
    layout = DatasetLayout.from_root(data)
    prepare_cache(data, root / "cache", num_workers=0, progress=False)
    cache, bank = WaveCache(root / "cache"), background_bank(config, layout)
    classes = load_classes(layout)
    labels = None if table is None else read_pseudo(table, classes, config.data.n_folds, config.data.fold_seed)
    stores = source_stores(config, data, cache, root / "distill", progress=False)
    reviewed = None if reviews is None else read_reviewed(reviews, classes)
    stores, windows = labelled_windows(config, stores, labels, reviewed, root / "distill", progress=False)
    teacher = prepare_teacher(config, data, cache, bank, root / "distill", progress=False, stores=stores)
    targets, weights = build_targets(cache.index, classes, 1.0, False)
    folds = assign_folds(cache.index["primary_label"].astype(str).tolist(), 3, config.data.fold_seed)
    return SimpleNamespace(config=config, teacher=teacher, labels=labels, windows=windows, targets=targets,
                           weights=weights, folds=folds, bank=bank)


def test_pseudo_windows_are_teacher_rows_and_label_epochs_follow_the_fold_rule(soundscapes, tmp_path: Path,
                                                                                monkeypatch):
    count = _Count(monkeypatch)
    _setup(soundscapes.data, tmp_path, None, [])
    before = count.n
    s = _setup(soundscapes.data, tmp_path, soundscapes.rows, ["train.distill_epochs=1", "train.pseudo_ratio=0.5",
                                                              "train.pseudo_weight=0.3"])
    assert count.n == before > 0  # every window is a row the teacher had embedded: nothing new
    assert len(s.teacher.sources) == 2 and s.windows.matched == len(s.windows) == 6
    assert (s.windows.source == 1).all() and len(set(s.windows.row.tolist())) == 6
    data = DistillData(s.config, s.teacher, s.targets, s.weights, s.folds, 0, s.bank, s.windows)
    table = s.labels.table
    assert data.n_pseudo == min(round(0.5 * len(data.label_items)), int((table["fold"] != 0).sum()))
    assert data.n_pseudo > 0
    rows = DistillRows(s.teacher, data.stage_items(1), s.targets, s.weights, s.config, s.bank, True, 5, s.windows)
    seen = set()
    for epoch in range(1, 6):
        items = data.stage_items(epoch)
        assert np.array_equal(items, data.stage_items(epoch))  # seeded by (seed, epoch): a resume draws the same
        assert np.array_equal(items[: len(data.label_items)], data.label_items)
        windows = items[items[:, 2] >= 0, 2]
        assert len(windows) == data.n_pseudo and (table["fold"].to_numpy()[windows] != 0).all()  # the fold rule
        seen.update(windows.tolist())
    assert seen == set(np.flatnonzero(table["fold"].to_numpy() != 0).tolist())  # the whole pool, over epochs
    assert not (data.stage_items(0)[:, 2] >= 0).any()  # a distillation epoch: no labels beyond the clips'
    items = data.stage_items(1)
    for i in np.flatnonzero(items[:, 2] >= 0):
        w = int(items[i, 2])
        wave, target, mask, weight, emb = rows[len(items) + i]
        assert np.array_equal(target.numpy(), s.labels.targets[w])
        assert np.array_equal(mask.numpy() > 0, s.labels.mask[w])
        assert weight.item() == pytest.approx(0.3)
        source = s.teacher.sources[1]
        clip, window = int(source.clips[items[i, 1]]), int(source.windows[items[i, 1]])
        name = str((Path(source.name).resolve() / source.cache.index["filename"].iloc[clip]))
        assert (str(Path(table["audio"].iloc[w]).resolve()), window * 5.0) == (name, table["start_s"].iloc[w])
        assert np.array_equal(emb.numpy(), source.targets[0][items[i, 1]].astype(np.float32))


def test_windows_no_source_holds_become_a_source_of_their_own(soundscapes, tmp_path: Path, monkeypatch):
    _setup(soundscapes.data, tmp_path, None, [])
    count = _Count(monkeypatch)
    s = _setup(soundscapes.data, tmp_path, soundscapes.hop, [])
    assert s.windows.matched == 6 and len(s.windows) == 9 and len(s.teacher.sources) == 3
    extra = s.teacher.sources[2]
    assert len(extra) == 3 and s.teacher.rows_computed == 3 and count.n > 0  # the three 2.5 s windows, only
    table = s.labels.table
    for w in np.flatnonzero(s.windows.source == 2):
        assert table["start_s"].iloc[w] == 2.5
        wave, _ = extra.row(int(s.windows.row[w]), 0, s.config, s.bank)
        from birdclef.audio.io import load_audio

        full = load_audio(table["audio"].iloc[w], s.config.data.sample_rate)
        start = int(2.5 * s.config.data.sample_rate)
        assert np.allclose(wave, full[start : start + len(wave)], atol=1e-3)  # the table's window (float16 store)


def test_reviewed_windows_are_in_every_label_epoch_of_every_fold(soundscapes, tmp_path: Path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "archive.json").write_text(json.dumps({"archive": str(soundscapes.data / "train_soundscapes")}))
    for cls, file, start, answer in (("syn00", soundscapes.files[0], 0.0, "yes"),
                                     ("syn02", soundscapes.files[1], 5.0, "no")):
        save_answer(results, Answer(cls, file, start, start + 5.0, answer, "sim"))
    s = _setup(soundscapes.data, tmp_path, soundscapes.rows, ["train.review_weight=2.5"],
               reviews=results / "reviews.parquet")
    assert len(s.windows) == 8 and s.windows.matched == 8 and int((~s.windows.drawn).sum()) == 2
    for fold in range(3):
        data = DistillData(s.config, s.teacher, s.targets, s.weights, s.folds, fold, s.bank, s.windows)
        items = data.stage_items(s.config.train.distill_epochs)
        reviewed = items[(items[:, 2] >= 0) & ~s.windows.drawn[np.maximum(items[:, 2], 0)]]
        assert sorted(reviewed[:, 2].tolist()) == [6, 7]  # both, whatever their soundscape's fold
        rows = DistillRows(s.teacher, reviewed, s.targets, s.weights, s.config, s.bank, False, 0, s.windows)
        target, mask, weight = (torch.stack([rows[i][j] for i in range(2)]) for j in (1, 2, 3))
        by_window = dict(zip(reviewed[:, 2].tolist(), range(2)))
        assert target[by_window[6]].tolist() == [1, 0, 0] and mask[by_window[6]].tolist() == [1, 0, 0]
        assert target[by_window[7]].tolist() == [0, 0, 0] and mask[by_window[7]].tolist() == [0, 0, 1]
        assert weight.tolist() == [2.5, 2.5]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a training step called by hand
def test_unlabelled_rows_in_label_epochs_train_the_cosine_term_only(soundscapes, tmp_path: Path):
    s = _setup(soundscapes.data, tmp_path, None, ["train.distill_epochs=0", "train.distill_label_unlabelled=0.5",
                                                   "train.distill_weight=0.7"])
    data = DistillData(s.config, s.teacher, s.targets, s.weights, s.folds, 0, s.bank)
    n_labelled = len(data.label_items)
    assert data.n_unlabelled == round(0.5 * n_labelled) > 0
    items = data.stage_items(0)
    assert len(items) == n_labelled + data.n_unlabelled and (items[n_labelled:, 0] > 0).all()
    assert not np.array_equal(items[n_labelled:], data.stage_items(1)[n_labelled:]) or len(data.unlabelled_items) \
        == data.n_unlabelled  # another draw each epoch (unless the draw is the whole pool)
    rows = DistillRows(s.teacher, items, s.targets, s.weights, s.config, s.bank, False, 0)
    batch = [torch.stack(t) for t in zip(*(rows[i] for i in range(len(items))))]
    wave, target, mask, weight, teacher = batch
    assert (mask[n_labelled:] == 0).all() and (mask[:n_labelled] == 1).all()
    module = DistillModule(s.config, CLASSES, 0, s.teacher.embedding_size).eval()  # eval: no BN drift between calls
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        feats = module.model.forward_features(wave)
        logits = module.model.forward_head(feats)["clip_logits"]
        cos = cosine_distance(module.project(feats), F.normalize(teacher, dim=1))  # every row of the batch
        bce = module.criterion(logits[:n_labelled], target[:n_labelled], weight[:n_labelled], mask[:n_labelled])
    assert cosine_weight(s.config.train, 0) == pytest.approx(0.7)
    assert loss.item() == pytest.approx((bce + 0.7 * cos).item(), rel=1e-5)  # masked rows add no BCE, dilute none


def test_mass_factors_equal_hand_values():
    labelled = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0]], np.float32)  # M = (2, 3, 0) with unit weights
    pool = np.array([[0.8, 0.4, 0.5], [0.4, 0.0, 0.5]], np.float32)
    mask = np.array([[True, True, True], [True, False, True]])
    pool[1, 1] = 0.9  # a masked cell counts for nothing
    factors = pseudo_mass_factors(labelled, np.ones(4, np.float32), pool, mask, 0.5, 10, 1.0)
    # P = 10 * 0.5 * mean: (3.0, 1.0, 2.5); class 0: 3 > 2 -> 2/3; class 1: 1 <= 3 -> 1; class 2: M = 0 -> 1
    assert factors == pytest.approx([2.0 / 3.0, 1.0, 1.0])
    assert pseudo_mass_factors(labelled, np.ones(4), pool, mask, 0.5, 10, 1.5) == pytest.approx([1.0, 1.0, 1.0])
    halved = pseudo_mass_factors(labelled, np.full(4, 0.5), pool, mask, 0.5, 10, 1.0)  # M = (1, 1.5, 0)
    assert halved == pytest.approx([1.0 / 3.0, 1.0, 1.0])
    assert mass_record(factors, CLASSES, 1.0) == {"cap": 1.0, "classes_capped": 1, "min_factor": pytest.approx(2 / 3),
                                                  "factors": {"syn00": pytest.approx(2 / 3, abs=1e-6)}}


def test_the_loss_of_scaled_masks_equals_a_hand_computation():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0], [3.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 0.2]])
    weight = torch.tensor([1.0, 0.5, 2.0])
    mask = torch.tensor([[1.0, 1.0], [0.25, 1.0], [0.0, 0.5]])  # a clip, a capped pseudo row, a masked one
    p = 1.0 / (1.0 + np.exp(-logits.numpy().astype(np.float64)))
    t = target.numpy().astype(np.float64)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    m = weight.numpy()[:, None] * mask.numpy()
    assert create_loss("bce")(logits, target, weight, mask).item() == pytest.approx((m * bce).sum() / m.sum(), rel=1e-6)


def test_mixing_scaled_masks_keeps_the_bool_rule_with_min_and_max():
    from birdclef.data.augment import MixedBatch, max_targets, mixed_mask

    target, other = torch.tensor([1.0, 0.3, 0.0, 0.2]), torch.tensor([0.0, 1.0, 0.4, 0.1])
    mask, other_mask = torch.tensor([1.0, 0.5, 0.25, 0.0]), torch.tensor([0.5, 1.0, 1.0, 1.0])
    merged, known = max_targets(target, mask, other, other_mask)
    # and = min, or = max: (1) a known positive of the first, (2) of the second, (3) both known, (4) one unknown
    assert merged.tolist() == pytest.approx([1.0, 1.0, 0.4, 0.2]) and known.tolist() == [1.0, 1.0, 0.25, 0.0]
    assert torch.equal(max_targets(target, mask > 0, other, other_mask > 0)[1], torch.tensor([True, True, True, False]))
    batch = MixedBatch(torch.zeros(1, 4), target[None], other[None], 0.5, mask[None], other_mask[None])
    assert mixed_mask(batch, "blend").tolist() == [[0.5, 0.5, 0.25, 0.0]]


def _pseudo_examples(soundscapes, tmp_path: Path, cap: str):
    config = load_config(None, ["model.backbone=test_efficientnet", "model.pretrained=false", "train.num_workers=0",
                                "data.n_folds=3", "train.folds=[0]", "train.pseudo_ratio=2.0",
                                f"train.pseudo_mass_cap={cap}",
                                "train.pseudo_weight=2.0"])
    d = config.data
    prepare_cache(soundscapes.data, tmp_path / "cache", num_workers=0, progress=False)
    cache = WaveCache(tmp_path / "cache")
    labels = read_pseudo(soundscapes.rows, CLASSES, d.n_folds, d.fold_seed)
    audio = prepare_pseudo_audio(labels, tmp_path / "pseudo_cache", d.sample_rate, d.window_s, progress=False)
    return config, build_examples(cache, CLASSES, config, labels, audio)


def test_the_cap_reaches_the_cnn_path(soundscapes, tmp_path: Path):
    config, ex = _pseudo_examples(soundscapes, tmp_path, "0.2")
    data = FoldData(config, ex, 0, None)
    clips, pool = ex.rows("clip", 0, held_out=False), ex.rows("pseudo", 0, held_out=False)
    expected = pseudo_mass_factors(ex.targets[clips], ex.weights[clips], ex.targets[pool], ex.mask[pool], 2.0,
                                   data.n_pseudo, 0.2)
    assert np.array_equal(data.pseudo_factors, expected) and expected.min() < 1.0
    positions = {int(r): i for i, r in enumerate(data.train_set.rows)}
    for row in (int(clips[0]), int(pool[0]), int(pool[1])):
        mask = data.train_set[positions[row]][2]
        scale = expected if ex.is_pseudo(row) else 1.0
        assert mask.dtype == torch.float32 and np.allclose(mask.numpy(), ex.mask[row] * scale)
    plain = FoldData(load_config(None, ["train.num_workers=0", "data.n_folds=3", "train.folds=[0]"]), ex, 0, None)
    assert plain.pseudo_factors is None and plain.train_set[0][2].dtype == torch.bool  # no cap: as before


def test_the_cap_reaches_the_head_path():
    rng = np.random.default_rng(0)
    emb = rng.normal(0.0, 1.0, (40, 3, 6)).astype(np.float32)
    target = (rng.random((40, 3)) < 0.3).astype(np.float32)

    def data() -> HeadData:
        out = HeadData([(np.arange(40), emb)], np.arange(40), target, np.ones(40, np.float32), np.arange(40) % 2)
        gen = np.random.default_rng(1)
        out.add_pseudo(gen.normal(0.0, 1.0, (20, 3, 6)).astype(np.float32), gen.random((20, 3)).astype(np.float32),
                       gen.random((20, 3)) < 0.7, np.arange(20) // 10, 2.0)
        return out

    capped = data()
    masks, factors = capped.fold_mask(0, 1.0, 0.3)
    pool, fit = np.flatnonzero(capped.pseudo & (capped.fold != 0)), capped.split(0)[0]
    expected = pseudo_mass_factors(target[capped.rows[fit]], np.ones(len(fit)), capped.target.numpy()[pool],
                                   capped.mask.numpy()[pool], 2.0, 10, 0.3)
    assert np.array_equal(factors, expected) and expected.min() < 1.0
    assert torch.equal(masks[capped.pseudo], capped.mask[capped.pseudo].float() * torch.from_numpy(expected))
    assert torch.equal(masks[~capped.pseudo], torch.ones((40, 3)))
    from test_birdnet_head import CONFIG

    config = load_config(CONFIG, ["train.epochs=3", "train.batch_size=8", "train.lr=0.05"])

    def fit(data: HeadData, cfg) -> tuple[torch.Tensor, dict]:
        head = EmbeddingHead(np.zeros((3, 6), np.float32), np.full(3, -2.0, np.float32))
        best = fit_head(head, data, 0, cfg)[0]
        return torch.cat([head.weight.detach().flatten(), head.bias.detach()]), best

    with_cap, best = fit(capped, load_config(CONFIG, ["train.epochs=3", "train.batch_size=8", "train.lr=0.05",
                                                      "train.pseudo_mass_cap=0.3"]))
    assert np.array_equal(best["factors"], expected)
    by_hand = data()
    by_hand.mask = masks  # the scaled masks given directly, no cap: the same training
    assert torch.equal(fit(by_hand, config)[0], with_cap)
    assert (fit(data(), config)[0] - with_cap).abs().max() > 1e-4  # and the cap did change it


@pytest.fixture(scope="module")
def distilled_runs(soundscapes, tmp_path_factory) -> SimpleNamespace:
    """The teacher's cache filled beside a wave cache (as a run without a table would fill it), then a distilled
    run with the pseudo table sharing that cache, counting what the teacher embeds, then a resume of it with
    another table."""
    root = tmp_path_factory.mktemp("druns")
    overrides = [*TINY, "train.distill_epochs=1", "train.epochs=1", "train.embed_copies=0", "train.pseudo_ratio=0.5",
                 "train.distill_label_unlabelled=0.5", "train.pseudo_mass_cap=0.5"]
    mp = pytest.MonkeyPatch()
    count = _Count(mp)
    try:
        config = load_config(None, overrides)
        prepare_cache(soundscapes.data, root / "cache", num_workers=0, progress=False)
        cache = WaveCache(root / "cache")
        prepare_teacher(config, soundscapes.data, cache, background_bank(config, DatasetLayout.from_root(
            soundscapes.data)), root / "cache" / "distill", progress=False)
        first = count.n
        base = ["train", "--data", str(soundscapes.data), "--cache", str(root / "cache"), "--out", str(root / "run"),
                "--no-progress"]
        assert cli.main([*base, "--pseudo", str(soundscapes.rows), "--set", *overrides]) == 0
        second = count.n - first
        refused = cli.main([*base, "--pseudo", str(soundscapes.hop), "--resume", "--set", *overrides])
    finally:
        mp.undo()
    return SimpleNamespace(run=root / "run", first=first, second=second, refused=refused)


def test_a_distilled_run_trains_on_pseudo_labels_and_records_them(distilled_runs, soundscapes):
    run = distilled_runs.run
    assert distilled_runs.first > 0 and distilled_runs.second == 0  # the teacher's cache held every window
    record = json.loads((run / RUN_RECORD).read_text())
    assert record["table"] == str(soundscapes.rows.resolve()) and record["rows"] == 6
    folds = pd.read_csv(run / RUN_FOLDS)
    assert sorted(folds["path"]) == soundscapes.files and sorted(folds["fold"]) == [0, 1, 2]
    teacher = json.loads((run / "teacher.json").read_text())
    assert teacher["labelled_windows"] == {"windows": 6, "pseudo": 6, "reviewed": 0, "matched_to_unlabelled_rows": 6,
                                           "embedded_as_own_source": 0}
    assert (run / "fold0" / "done.json").is_file()
    mass = json.loads((run / "fold0" / MASS_RECORD).read_text())
    assert mass["cap"] == 0.5 and 0 < mass["min_factor"] <= 1.0
    assert json.loads((run / "summary.json").read_text())["n_pseudo"] == 6
    assert distilled_runs.refused == 2  # another table on resume: a one-line error, exit 2


@pytest.mark.parametrize("setting, key", [("train.pseudo_mass_cap=0", "train.pseudo_mass_cap"),
                                          ("train.pseudo_mass_cap=inf", "train.pseudo_mass_cap"),
                                          ("train.distill_label_unlabelled=-0.5", "train.distill_label_unlabelled"),
                                          ("train.distill_label_unlabelled=nan", "train.distill_label_unlabelled")])
def test_config_refuses_a_bad_cap_or_unlabelled_share(setting: str, key: str):
    from birdclef.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        load_config(None, [setting])
    assert load_config(None, ["train.pseudo_mass_cap=null"]).train.pseudo_mass_cap is None
