"""``birdclef pseudo``: one row per window, predict's numbers, transforms, BirdNET's mask, the fold rule, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdclef.archive.file import window_count
from birdclef.cli import main
from birdclef.config import InferConfig, load_config
from birdclef.data.pseudo import RUN_FOLDS, read_provenance, read_pseudo, soundscape_folds
from birdclef.errors import BirdclefError
from birdclef.selftrain import pseudo
from birdclef.selftrain.pseudo import pseudo_label, transform
from birdclef.utils.io import exclusive_lock
from birdclef.zoo.placeholder import PlaceholderModel

pytest.importorskip("timm")

CLASSES = ["aaa", "bbb", "ccc"]
RAW = InferConfig(smoothing=False, power_adjust=False)
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null",
        "data.window_s=5.0"]
DURATIONS = {"a.wav": 12.0, "site/b.wav": 7.5, "site/deep/c.flac": 5.0}


def _signal(seconds: float, seed: int, sr: int = 32_000) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(seed)
    return (0.05 * (1 + np.sin(2 * np.pi * t / 7.0)) * rng.standard_normal(t.size)
            + 0.2 * np.sin(2 * np.pi * (800 + 300 * seed) * t)).astype(np.float32)


@pytest.fixture
def soundscapes(tmp_path: Path) -> Path:
    root = tmp_path / "soundscapes"
    for k, (rel, seconds) in enumerate(DURATIONS.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, _signal(seconds, k), 32_000)
    return root


def _save_fold(run: Path, fold: int, seed: int) -> Path:
    import torch

    from birdclef.models import create_model, save_checkpoint

    config = load_config(None, TINY)
    torch.manual_seed(seed)
    best = run / f"fold{fold}" / "best.pt"
    save_checkpoint(best, create_model(config.model, len(CLASSES)), config, CLASSES, epoch=0, score=0.5)
    (best.parent / "done.json").write_text(json.dumps({"fold": fold}))
    return best


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-fold run whose folds are different random networks (so which one scored a file shows)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    _save_fold(run, 0, seed=0)
    _save_fold(run, 1, seed=1)
    return run


def _expected(run_or_checkpoints: list[Path], audio: Path) -> np.ndarray:
    from birdclef.audio.io import load_audio
    from birdclef.infer.predict import TorchPredictor

    predictor = TorchPredictor(run_or_checkpoints, config=RAW, device="cpu")
    return predictor.predict_file(load_audio(audio, predictor.sample_rate))


def _rows(frame: pd.DataFrame, rel: str) -> np.ndarray:
    return frame.loc[frame["path"] == rel, CLASSES].to_numpy(np.float64)


def _label(soundscapes: Path, out: Path, teachers: list[Path], **kwargs):
    return pseudo_label(soundscapes, out, teachers, device="cpu", progress=False, **kwargs)


def test_one_row_per_window_with_predicts_numbers_folds_and_provenance(soundscapes: Path, teacher: Path,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "pseudo.parquet"
    summary = _label(soundscapes, out, [teacher], n_folds=2, fold_seed=7)
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["path", "start_s", "end_s", "fold", *CLASSES]
    assert sorted(frame["path"].unique()) == sorted(DURATIONS)
    for rel, seconds in DURATIONS.items():
        rows = frame[frame["path"] == rel]
        assert len(rows) == window_count(seconds, 5.0)
        np.testing.assert_allclose(rows["start_s"], 5.0 * np.arange(len(rows)))
        np.testing.assert_allclose(rows["end_s"] - rows["start_s"], 5.0)
        np.testing.assert_allclose(_rows(frame, rel), _expected([teacher], soundscapes / rel), rtol=1e-4, atol=1e-5)
    folds = soundscape_folds(list(DURATIONS), 2, 7)
    assert frame["fold"].tolist() == frame["path"].map(folds).tolist()
    assert summary.n_rows == len(frame) and summary.n_files == 3 and not summary.skipped
    prov = read_provenance(out)
    checkpoints = [str((teacher / f"fold{k}" / "best.pt").resolve()) for k in (0, 1)]
    assert prov["soundscapes"] == str(soundscapes.resolve()) and prov["classes"] == CLASSES
    assert prov["teachers"] == [str(teacher.resolve())] and prov["birdnet"] is False
    assert (prov["power"], prov["thresholds"], prov["hop_s"], prov["n_folds"], prov["fold_seed"]) == (1.0, None, 5.0,
                                                                                                       2, 7)
    assert prov["postprocess"] is False and prov["infer"]["smoothing"] is False
    assert prov["assignment"] == {rel: checkpoints for rel in DURATIONS}
    assert prov["n_masked_classes"] == 0
    labels = read_pseudo(out, CLASSES, check_audio=True)
    assert labels.mask.all() and len(labels) == len(frame)


def test_half_hop_doubles_the_windows(soundscapes: Path, teacher: Path, tmp_path: Path) -> None:
    frame = pd.read_parquet(_label(soundscapes, tmp_path / "p.parquet", [teacher], hop_s=2.5).out)
    for rel, seconds in DURATIONS.items():
        rows = frame[frame["path"] == rel]
        assert len(rows) == window_count(seconds, 2.5)
        np.testing.assert_allclose(rows["start_s"], 2.5 * np.arange(len(rows)))
        np.testing.assert_allclose(rows["end_s"], rows["start_s"] + 5.0)
        # every other window is a 5 s row of predict
        np.testing.assert_allclose(_rows(frame, rel)[::2], _expected([teacher], soundscapes / rel), rtol=1e-4,
                                   atol=1e-5)


def test_thresholds_then_power_by_hand() -> None:
    frame = pd.DataFrame({"path": ["x"] * 3, "start_s": [0.0, 5.0, 10.0], "end_s": [5.0, 10.0, 15.0],
                          "aaa": [0.2, 0.5, np.nan], "bbb": [0.1, 0.9, 0.4]})
    got = transform(frame, ["aaa", "bbb"], power=2.0, thresholds={"aaa": 0.3})
    np.testing.assert_allclose(got["aaa"], [0.0, 0.25, np.nan])  # below 0.3 -> 0; NaN stays a mask
    np.testing.assert_allclose(got["bbb"], [0.01, 0.81, 0.16], rtol=1e-6)  # no threshold: only the power
    one = transform(frame, ["aaa", "bbb"], power=1.0, thresholds=0.45)
    np.testing.assert_allclose(one["bbb"], [0.0, 0.9, 0.0], rtol=1e-6)


def test_a_rerun_with_other_transforms_reuses_the_scores(soundscapes: Path, teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "pseudo.parquet"
    raw = pd.read_parquet(_label(soundscapes, out, [teacher]).out)
    csv = tmp_path / "thr.csv"
    pd.DataFrame({"class": ["aaa", "bbb"], "threshold": [0.5, np.nan]}).to_csv(csv, index=False)
    summary = _label(soundscapes, out, [teacher], power=1 / 0.65, thresholds=csv)
    assert summary.resumed == 3
    got = pd.read_parquet(out)
    aaa = raw["aaa"].to_numpy(np.float64)
    np.testing.assert_allclose(got["aaa"], np.where(aaa < 0.5, 0.0, aaa) ** (1 / 0.65), rtol=1e-5)
    for name in ("bbb", "ccc"):
        np.testing.assert_allclose(got[name], raw[name].to_numpy(np.float64) ** (1 / 0.65), rtol=1e-5)
    prov = read_provenance(out)
    assert prov["thresholds"] == str(csv.resolve()) and prov["threshold_values"] == {"aaa": 0.5}
    assert prov["thresholds_missing"] == ["bbb", "ccc"] and prov["power"] == pytest.approx(1 / 0.65)
    with pytest.raises(BirdclefError, match="classes the teachers do not score .zzz.; the scores are kept"):
        _label(soundscapes, out, [teacher], thresholds={"aaa": 0.5, "zzz": 0.1})


class FakeBirdnetModel(PlaceholderModel):
    """BirdNET's surface (the zoo's placeholder model): knows two of the three classes (ccc is unknown to it)."""

    def __init__(self, path=None, threads=None, batch_size=36):
        super().__init__(["Turdus merula_Eurasian Blackbird", "Erithacus rubecula_European Robin"])
        self.path = Path(path or "fake.tflite")


def _taxonomy(folder: Path) -> Path:
    taxonomy = folder / "taxonomy.csv"
    pd.DataFrame({"primary_label": CLASSES, "scientific_name": ["Turdus merula", "Erithacus rubecula",
                                                                "Rana temporaria"]}).to_csv(taxonomy, index=False)
    return taxonomy


def test_birdnet_unknown_classes_are_masked_not_zero(soundscapes: Path, tmp_path: Path, monkeypatch) -> None:
    from birdclef.birdnet import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "BirdnetModel", FakeBirdnetModel)
    taxonomy = _taxonomy(tmp_path)
    out = tmp_path / "pseudo.parquet"
    summary = pseudo_label(soundscapes, out, [], birdnet=True, taxonomy=taxonomy, progress=False)
    frame = pd.read_parquet(out)
    assert frame["ccc"].isna().all() and frame[["aaa", "bbb"]].notna().all().all()
    assert summary.masked_classes == ["ccc"]
    prov = read_provenance(out)
    assert prov["masked_classes"] == ["ccc"] and prov["n_masked_classes"] == 1
    assert prov["assignment"]["a.wav"] == ["birdnet"] and prov["birdnet_model"] == str(Path("fake.tflite").resolve())
    labels = read_pseudo(out, CLASSES)
    assert not labels.mask[:, 2].any() and labels.mask[:, :2].all()
    filled = pseudo_label(soundscapes, tmp_path / "filled.parquet", [], birdnet=True, taxonomy=taxonomy,
                          unknown_fill=0.5, progress=False)
    assert (pd.read_parquet(filled.out)["ccc"] == 0.5).all() and not filled.masked_classes


def test_a_teacher_blended_with_birdnet_scores_every_class_as_predicts_blend(soundscapes: Path, teacher: Path,
                                                                               tmp_path: Path, monkeypatch) -> None:
    from birdclef.audio.io import load_audio
    from birdclef.birdnet import predictor as predictor_module
    from birdclef.birdnet.predictor import BirdnetPredictor
    from birdclef.infer.blend import BlendPredictor
    from birdclef.infer.predict import TorchPredictor

    monkeypatch.setattr(predictor_module, "BirdnetModel", FakeBirdnetModel)
    taxonomy = _taxonomy(tmp_path)
    out = tmp_path / "pseudo.parquet"
    summary = _label(soundscapes, out, [teacher], weights=[0.3, 0.7], birdnet=True, taxonomy=taxonomy)
    frame = pd.read_parquet(out)
    assert not summary.masked_classes and frame[CLASSES].notna().all().all()
    names = {"aaa": "Turdus merula", "bbb": "Erithacus rubecula", "ccc": "Rana temporaria"}
    blend = BlendPredictor([TorchPredictor([teacher], config=RAW, device="cpu"),
                            BirdnetPredictor(CLASSES, names, RAW, model=FakeBirdnetModel())], [0.3, 0.7], RAW)
    expected = blend.predict_file(load_audio(soundscapes / "a.wav", blend.sample_rate))
    np.testing.assert_allclose(_rows(frame, "a.wav"), expected, rtol=1e-4, atol=1e-5)
    prov = read_provenance(out)
    assert prov["assignment"]["a.wav"][-1] == "birdnet" and prov["weights"] == [0.3, 0.7]
    assert prov["birdnet"] is True and prov["birdnet_model"].endswith("fake.tflite")


def test_the_fold_rule_labels_a_soundscape_with_its_held_out_fold_only(soundscapes: Path, teacher: Path,
                                                                       tmp_path: Path) -> None:
    run = tmp_path / "student"
    shutil.copytree(teacher, run)
    a, b = soundscapes / "a.wav", soundscapes / "site" / "b.wav"
    pd.DataFrame({"path": ["a.wav"], "audio": [str(a.resolve())], "fold": [1]}).to_csv(run / RUN_FOLDS, index=False)
    out = tmp_path / "pseudo.parquet"
    _label(soundscapes, out, [run])
    frame = pd.read_parquet(out)
    fold1 = run / "fold1" / "best.pt"
    np.testing.assert_allclose(_rows(frame, "a.wav"), _expected([fold1], a), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_rows(frame, "site/b.wav"), _expected([run], b), rtol=1e-4, atol=1e-5)
    assert not np.allclose(_expected([fold1], a), _expected([run], a), atol=1e-4)  # the folds really differ
    assignment = read_provenance(out)["assignment"]
    assert assignment["a.wav"] == [str(fold1.resolve())]
    assert assignment["site/b.wav"] == [str((run / f"fold{k}" / "best.pt").resolve()) for k in (0, 1)]
    with pytest.raises(BirdclefError, match="trained on the pseudo-labels of"):
        _label(soundscapes, tmp_path / "other.parquet", [run / "fold0" / "best.pt"])
    (run / "fold1" / "done.json").unlink()
    with pytest.raises(BirdclefError, match="not finished"):
        _label(soundscapes, tmp_path / "third.parquet", [run])


def test_a_killed_job_redoes_only_the_missing_files_and_skips_broken_ones(soundscapes: Path, teacher: Path,
                                                                          tmp_path: Path, monkeypatch) -> None:
    (soundscapes / "site" / "broken.wav").write_bytes(b"RIFF\0\0\0\0not audio")
    real, calls = pseudo.analyze_file, []

    def crash_after_first(scorer, source, rel, dest, hop_s):
        if calls:
            raise RuntimeError("killed")
        calls.append(rel)
        return real(scorer, source, rel, dest, hop_s)

    out = tmp_path / "pseudo.parquet"
    monkeypatch.setattr(pseudo, "analyze_file", crash_after_first)
    with pytest.raises(RuntimeError):
        _label(soundscapes, out, [teacher])
    assert not out.exists() and calls == ["a.wav"]

    def counting(scorer, source, rel, dest, hop_s):
        calls.append(rel)
        return real(scorer, source, rel, dest, hop_s)

    monkeypatch.setattr(pseudo, "analyze_file", counting)
    summary = _label(soundscapes, out, [teacher])
    assert calls == ["a.wav", "site/b.wav", "site/broken.wav", "site/deep/c.flac"]
    assert summary.resumed == 1 and [p for p, _ in summary.skipped] == ["site/broken.wav"]
    skipped = pd.read_csv(summary.skipped_path)
    assert summary.skipped_path == tmp_path / "pseudo.skipped.csv"
    assert skipped["path"].tolist() == ["site/broken.wav"] and skipped["reason"].str.len().gt(0).all()
    monkeypatch.setattr(pseudo, "analyze_file", real)
    clean = pd.read_parquet(_label(soundscapes, tmp_path / "clean.parquet", [teacher]).out)
    pd.testing.assert_frame_equal(pd.read_parquet(out), clean)
    assert "site/broken.wav" not in set(clean["path"])
    with pytest.raises(BirdclefError, match="other teachers or settings"):
        _label(soundscapes, out, [teacher], hop_s=2.5)
    with exclusive_lock(out), pytest.raises(BirdclefError, match="another pseudo job"):
        _label(soundscapes, out, [teacher])


@pytest.mark.parametrize("flags, message", [
    ([], "give at least one --teacher run, or --birdnet"),
    (["--birdnet", "--power", "0"], "argument --power: must be a finite number > 0"),
    (["--birdnet", "--power", "-1.5"], "argument --power: must be a finite number > 0"),
    (["--taxonomy", "t.csv", "--teacher", "."], "--taxonomy: only used with --birdnet"),
    (["--teacher", "nowhere"], "--teacher nowhere: no such run folder"),
    (["--birdnet", "--thresholds", "1.5"], "one threshold must be a probability"),
    (["--birdnet", "--thresholds", "no.csv"], "no.csv: thresholds file not found"),
    (["--birdnet", "--hop", "0"], "argument --hop: must be a finite number >= 0.1"),
    (["--teacher", ".", "--weights", "1", "2"], "--weights: got 2 for 1 teacher(s); give one per --teacher"),
    (["--birdnet", "--folds", "1"], "argument --folds: must be a whole number >= 2"),
    (["--birdnet", "--soundscapes", "nowhere"], "--soundscapes nowhere: folder not found"),
])
def test_cli_bad_flags_are_one_line_errors(soundscapes: Path, tmp_path: Path, capsys, flags, message) -> None:
    code = main(["pseudo", "--soundscapes", str(soundscapes), "--out", str(tmp_path / "p.parquet"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_out_must_be_a_file(soundscapes: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "folder").mkdir()
    code = main(["pseudo", "--birdnet", "--soundscapes", str(soundscapes), "--out", str(tmp_path / "folder")])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder, not a file" in err and len(err.strip().splitlines()) == 1


def test_cli_pseudo_with_a_teacher(soundscapes: Path, teacher: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "p.parquet"
    code = main(["pseudo", "--teacher", str(teacher), "--soundscapes", str(soundscapes), "--out", str(out),
                 "--power", "2", "--device", "cpu", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and f"pseudo-labels: {out}" in text and "from 3 soundscapes" in text
    prov = read_provenance(out)
    assert prov["power"] == 2.0 and (prov["n_folds"], prov["fold_seed"]) == (5, 42)


def test_the_students_split_defaults_to_the_first_teachers(soundscapes: Path, teacher: Path, tmp_path: Path) -> None:
    from birdclef.config import dump_config

    run = tmp_path / "run"
    shutil.copytree(teacher, run)
    stored = load_config(None, TINY + ["data.n_folds=3", "data.fold_seed=9", "train.folds=[0,1,2]"])
    (run / "config.yaml").write_text(dump_config(stored))
    out = _label(soundscapes, tmp_path / "p.parquet", [run / "fold0" / "best.pt"]).out
    prov, frame = read_provenance(out), pd.read_parquet(out)
    assert (prov["n_folds"], prov["fold_seed"]) == (3, 9)
    assert frame["fold"].tolist() == frame["path"].map(soundscape_folds(list(DURATIONS), 3, 9)).tolist()
