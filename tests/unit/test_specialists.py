"""Taxon specialists (:mod:`birdclef.data.subset`): a run on a subset of the classes, trained on the full run's
folds, and blended back into the full class list with NaN where it does not score (:mod:`birdclef.zoo.build`).

The synthetic data (seed 3, 5 species x 4 clips): syn00 Aves, syn01 Mammalia (one of its clips lists syn03 as a
secondary label), syn02 Amphibia, syn03 Insecta, syn04 Aves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from birdclef.audio.io import load_audio
from birdclef.cli import main
from birdclef.config import load_config
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.examples import build_examples
from birdclef.data.folds import assign_folds
from birdclef.data.metadata import DatasetLayout, load_classes
from birdclef.data.subset import resolve_subset
from birdclef.errors import BirdclefError, ConfigError, DatasetError
from birdclef.zoo.build import PredictorSpec, build_predictor
from birdclef.zoo.runs import Run

ALL = ["syn00", "syn01", "syn02", "syn03", "syn04"]
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null",
        "data.window_s=1.0", "train.batch_size=4", "train.num_workers=0", "train.folds=[0]", "data.n_folds=3",
        "train.epochs=1", "train.background_prob=0"]
HEAD = ["model.backbone=foundation", "model.freeze_backbone=true", "model.foundation=[placeholder]",
        "data.n_folds=3", "train.folds=[0]", "train.embed_copies=0", "train.num_workers=0", "train.epochs=2",
        "infer.birdnet_hop_s=1.0"]
RAW = ("infer.smoothing=false", "infer.power_adjust=false")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from birdclef.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("synth")
    synthesize_dataset(out, n_species=5, clips_per_species=4, n_train_soundscapes=1, n_test_soundscapes=1,
                       soundscape_s=15.0, seed=3, progress=False)
    assert load_classes(DatasetLayout.from_root(out)) == ALL
    return out


def _train(data: Path, out: Path, *flags: str, sets: list[str] = TINY) -> Path:
    assert main(["train", "--data", str(data), "--out", str(out), "--no-progress", *flags, "--set", *sets]) == 0
    return out


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A full tiny CNN run, an Insecta specialist (negatives kept) and one without the negatives."""
    root = tmp_path_factory.mktemp("runs")
    return {"full": _train(data, root / "full"),
            "insecta": _train(data, root / "insecta", "--classes", "insecta"),
            "dropped": _train(data, root / "dropped", "--classes", "Insecta", sets=TINY + ["data.class_negatives=false"])}


def _taxonomy(data: Path) -> Path:
    return data / "taxonomy.csv"


# ------------------------------------------------------------------ which classes


def test_a_subset_is_named_by_taxon_group_labels_or_both(data: Path) -> None:
    insects = resolve_subset(["INSECTA"], ALL, _taxonomy(data))
    assert insects.classes == ("syn03",) and insects.groups == ("Insecta",) and not insects.is_full
    assert list(insects.columns) == [3]
    mixed = resolve_subset(["syn04", "Amphibia", "syn00"], ALL, _taxonomy(data))
    assert mixed.classes == ("syn00", "syn02", "syn04")  # the data's order, whatever the order named
    assert mixed.groups == ("Amphibia",) and mixed.labels == ("syn04", "syn00")
    assert resolve_subset(["Aves"], ALL, _taxonomy(data)).classes == ("syn00", "syn04")
    full = resolve_subset([], ALL, _taxonomy(data))
    assert full.is_full and full.classes == tuple(ALL)
    targets = np.eye(5, dtype=np.float32)
    assert full.select(targets) is targets and mixed.select(targets).shape == (5, 3)


def test_unknown_names_are_one_line_listing_valid_groups_and_labels(data: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match=r"data.classes: unknown 'Bugs', 'syn99'; give taxon groups Amphibia, "
                                          r"Aves, Insecta, Mammalia, or primary labels such as syn00, syn01"):
        resolve_subset(["Bugs", "Aves", "syn99"], ALL, _taxonomy(data))
    with pytest.raises(ConfigError, match="no taxon groups"):
        resolve_subset(["Aves"], ALL, None)
    with pytest.raises(ConfigError, match="data.classes"):
        load_config(None, ["data.classes=[Aves, ' ']"])
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--classes", "Insecta,Bugs",
                 "--no-progress", "--set", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("birdclef train: error: data.classes: unknown 'Bugs'") and "\n" not in err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_a_subset_without_any_clip_is_refused(data: Path, tmp_path: Path) -> None:
    taxonomy = pd.read_csv(_taxonomy(data))
    taxonomy.loc[len(taxonomy)] = {**taxonomy.iloc[0].to_dict(), "primary_label": "lonely", "class_name": "Reptilia"}
    taxonomy.to_csv(tmp_path / "taxonomy.csv", index=False)
    subset = resolve_subset(["Reptilia"], [*ALL, "lonely"], tmp_path / "taxonomy.csv")
    with pytest.raises(DatasetError, match=r"data.classes \['Reptilia'\]: none of its 1 classes \(lonely\) has a "
                                           "training clip"):
        subset.check_clips(np.zeros((3, 1)), tmp_path)


def test_negatives_kept_or_dropped_change_the_examples_not_the_folds(data: Path, tmp_path: Path) -> None:
    prepare_cache(data, tmp_path / "cache", window_s=1.0, num_workers=0, progress=False)
    cache = WaveCache(tmp_path / "cache")
    config = load_config(None, TINY)
    folds = assign_folds(cache.index["primary_label"].astype(str).tolist(), 3, config.data.fold_seed)
    full = build_examples(cache, ALL, config)
    kept = build_examples(cache, ALL, config, subset=resolve_subset(["Insecta"], ALL, _taxonomy(data)))
    dropped = build_examples(cache, ALL, config,
                             subset=resolve_subset(["Insecta"], ALL, _taxonomy(data), negatives=False))
    for examples in (full, kept, dropped):
        assert (examples.table["fold"].to_numpy() == folds).all()  # the full run's split, clip by clip
    assert kept.targets.shape == (20, 1) and np.array_equal(kept.targets[:, 0], full.targets[:, 3])
    insect = full.targets[:, 3] > 0  # syn03's 4 clips and the syn01 clip naming it as a secondary label
    assert insect.sum() == 5 and (cache.index["primary_label"][insect] == "syn01").sum() == 1
    for fold in range(3):
        for held_out in (False, True):
            rows = kept.rows("clip", fold, held_out)
            assert np.array_equal(rows, full.rows("clip", fold, held_out))
            assert np.array_equal(dropped.rows("clip", fold, held_out), rows[insect[rows]])


# ------------------------------------------------------------------ training


def test_a_specialist_run_holds_only_its_classes_and_records_them(data: Path, runs: dict[str, Path]) -> None:
    full, insecta, dropped = runs["full"], runs["insecta"], runs["dropped"]
    assert Run.open(full).classes == ALL and Run.open(full).subset is None
    assert not (full / "classes.json").exists()
    for run in (insecta, dropped):
        state = torch.load(run / "fold0" / "best.pt", map_location="cpu", weights_only=True)
        assert state["classes"] == ["syn03"] and Run.open(run).classes == ["syn03"]
        assert list(pd.read_parquet(run / "oof.parquet").columns[-1:]) == ["syn03"]
        assert pd.read_csv(run / "folds.csv").equals(pd.read_csv(full / "folds.csv"))
    record = Run.open(insecta).subset
    assert record["groups"] == ["Insecta"] and record["all_classes"] == ALL and record["class_negatives"] is True
    assert (record["n_clips"], record["n_train_clips"]) == (20, 20)
    assert json.loads((dropped / "classes.json").read_text())["n_train_clips"] == 5
    assert json.loads((dropped / "summary.json").read_text())["specialist"] == ["Insecta"]
    assert load_config(insecta / "config.yaml").data.classes == ("insecta",)
    folds = pd.read_csv(full / "folds.csv")
    held_out = set(folds.loc[folds["fold"] == 0, "filename"])
    assert set(pd.read_parquet(insecta / "oof.parquet")["filename"]) == held_out  # other taxa validate as negatives
    oof = pd.read_parquet(dropped / "oof.parquet")  # only the held-out clips that have an insect
    assert set(oof["filename"]) < held_out and set(oof["primary_label"]) <= {"syn03", "syn01"}


# ------------------------------------------------------------------ blending back


def _probs(folder: Path, *runs: Path, **spec) -> tuple[np.ndarray, list[str]]:
    """(W, K) probabilities of `folder`'s test soundscape, and their classes."""
    predictor = build_predictor(PredictorSpec(runs=tuple(runs), overrides=RAW, device="cpu", **spec),
                                nan_ok=True).predictor
    wave = load_audio(next((folder / "test_soundscapes").glob("*.ogg")), predictor.sample_rate)
    return predictor.predict_file(wave), list(predictor.classes)


def test_a_blend_scores_a_specialist_s_classes_with_it_and_the_rest_with_the_full_run(data: Path,
                                                                                      runs: dict[str, Path]) -> None:
    full, _ = _probs(data, runs["full"])
    alone, own = _probs(data, runs["insecta"])
    assert own == ["syn03"] and alone.shape == (3, 1)
    blend, classes = _probs(data, runs["insecta"], runs["full"], weights=(1.0, 3.0))
    assert classes == ALL  # the full run's order, whichever run comes first
    insect = ALL.index("syn03")
    others = [k for k in range(5) if k != insect]
    np.testing.assert_allclose(blend[:, insect], 0.25 * alone[:, 0] + 0.75 * full[:, insect], rtol=1e-6)
    np.testing.assert_allclose(blend[:, others], full[:, others], rtol=1e-6)
    replaced, _ = _probs(data, runs["full"], runs["insecta"], weights=(0.0, 1.0))  # the full run as a fallback
    np.testing.assert_allclose(replaced[:, insect], alone[:, 0], rtol=1e-6)
    np.testing.assert_allclose(replaced[:, others], full[:, others], rtol=1e-6)


def test_a_specialist_alone_with_data_leaves_the_other_classes_unscored(data: Path, runs: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    alone, _ = _probs(data, runs["insecta"])
    probs, classes = _probs(data, runs["insecta"], data=data)
    assert classes == ALL and np.isnan(probs[:, [0, 1, 2, 4]]).all()
    np.testing.assert_allclose(probs[:, 3], alone[:, 0], rtol=1e-6)
    with pytest.raises(BirdclefError, match="4 classes would be NaN in the CSV .* taxon specialists .* --unknown-fill"):
        build_predictor(PredictorSpec(runs=(runs["insecta"],), data=data, device="cpu"))
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(runs["insecta"]), "--data", str(data), "--unknown-fill", "0.5",
                 "--soundscapes", str(data / "test_soundscapes"), "--out", str(out), "--no-progress",
                 "--num-workers", "0", "--set", *RAW]) == 0
    sub = pd.read_csv(out)
    assert list(sub.columns[1:]) == ALL and (sub[["syn00", "syn01", "syn02", "syn04"]] == 0.5).all().all()


def test_a_run_with_classes_outside_data_is_refused(data: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    pd.DataFrame(columns=["row_id", "syn00", "syn01"]).to_csv(other / "sample_submission.csv", index=False)
    with pytest.raises(BirdclefError, match=r"--data .* lists 2 classes, the runs were trained on 5: 0 only in "
                                            r"--data \(-\), 3 only in the runs \(syn02, syn03, syn04\)"):
        build_predictor(PredictorSpec(runs=(runs["insecta"], runs["full"]), data=other, device="cpu"))


def test_a_head_specialist_on_the_placeholder_blends_with_a_cnn_run(data: Path, runs: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    head = _train(data, tmp_path / "head", "--classes", "Amphibia,syn00", sets=HEAD)
    state = torch.load(head / "fold0" / "best.pt", map_location="cpu", weights_only=True)
    assert state["classes"] == ["syn00", "syn02"] and Run.open(head).kind == "birdnet_head"
    assert pd.read_csv(head / "folds.csv").equals(pd.read_csv(runs["full"] / "folds.csv"))
    full, _ = _probs(data, runs["full"])
    alone, own = _probs(data, head)
    assert own == ["syn00", "syn02"]
    blend, classes = _probs(data, runs["full"], head)
    assert classes == ALL
    np.testing.assert_allclose(blend[:, [0, 2]], 0.5 * full[:, [0, 2]] + 0.5 * alone, rtol=1e-5)
    np.testing.assert_allclose(blend[:, [1, 3, 4]], full[:, [1, 3, 4]], rtol=1e-6)


def test_distillation_keeps_other_classes_as_negatives() -> None:
    with pytest.raises(ConfigError, match="data.class_negatives"):
        load_config(None, ["train.distill_teacher=placeholder", "data.classes=[Insecta]",
                           "data.class_negatives=false"])
    assert load_config(None, ["train.distill_teacher=placeholder", "data.classes=[Insecta]"]).data.classes == ("Insecta",)



def test_a_specialist_exports_on_its_own_and_not_fused_with_a_full_run(data: Path, runs: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    from birdclef.export.export import export_model
    from birdclef.export.runtime import ExportedPredictor

    with pytest.raises(BirdclefError, match="export: the runs score different classes"):
        export_model([runs["full"], runs["insecta"]], format="onnx", out=tmp_path / "both",
                     parity_audio=data / "test_soundscapes", parity_count=1)
    assert not (tmp_path / "both").exists()
    export_model([runs["insecta"]], format="onnx", out=tmp_path / "insecta", parity_audio=data / "test_soundscapes",
                 parity_count=1)
    assert ExportedPredictor(tmp_path / "insecta").classes == ["syn03"]
