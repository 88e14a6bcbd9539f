"""Teachers label the training clips too (``selftrain --label-clips``, ``pseudo --soundscapes A --soundscapes B``):
several folders in one table, and each window of a labelled clip in its clip's fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdclef import cli
from birdclef.config import load_config
from birdclef.data.cache import WaveCache, prepare_cache
from birdclef.data.examples import build_examples, prepare_pseudo_audio
from birdclef.data.folds import assign_folds
from birdclef.data.pseudo import clip_fold_map, read_provenance, read_pseudo, soundscape_folds, write_pseudo
from birdclef.errors import BirdclefError
from birdclef.selftrain import rounds as rounds_module
from birdclef.selftrain.pseudo import pseudo_label
from birdclef.selftrain.rounds import SelfTrainSettings
from test_pseudo import _save_fold
from test_train import TINY

pytest.importorskip("timm")

CLASSES = ["syn00", "syn01", "syn02"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 species x 5 clips, 3 unlabelled 10 s train soundscapes."""
    from birdclef.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("clips") / "data"
    synthesize_dataset(out, n_species=3, clips_per_species=5, n_train_soundscapes=3, n_test_soundscapes=1,
                       soundscape_s=10.0, seed=4, progress=False)
    return out


def test_two_folders_share_their_common_root_and_score_as_each_alone(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    rng = np.random.default_rng(0)
    for rel in ("ss/a.wav", "ss/b.wav", "clips/x/c.wav"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, (0.1 * rng.standard_normal(32_000 * 6)).astype(np.float32), 32_000)
    teacher = tmp_path / "teacher"
    _save_fold(teacher, 0, seed=0)
    both = pseudo_label([root / "ss", root / "clips"], tmp_path / "both.parquet", [teacher], device="cpu",
                        progress=False)
    alone = pseudo_label(root / "ss", tmp_path / "alone.parquet", [teacher], device="cpu", progress=False)
    frame, single = pd.read_parquet(both.out), pd.read_parquet(alone.out)
    assert read_provenance(both.out)["soundscapes"] == str(root.resolve())
    assert sorted(frame["path"].unique()) == ["clips/x/c.wav", "ss/a.wav", "ss/b.wav"] and both.n_files == 3
    assert sorted(single["path"].unique()) == ["a.wav", "b.wav"]  # one folder: its own root, as before
    mine = frame[frame["path"].str.startswith("ss/")].reset_index(drop=True)
    np.testing.assert_allclose(mine[["aaa", "bbb", "ccc"]], single[["aaa", "bbb", "ccc"]], rtol=1e-5, atol=1e-6)
    table = read_pseudo(both.out, ["aaa", "bbb", "ccc"])  # every row's audio is found under the common root
    assert set(table.table["audio"]) == {str(root.resolve() / p) for p in ("clips/x/c.wav", "ss/a.wav", "ss/b.wav")}
    with pytest.raises(BirdclefError, match="--soundscapes .*nowhere: folder not found"):
        pseudo_label([root / "ss", tmp_path / "nowhere"], tmp_path / "x.parquet", [teacher], progress=False)


def _clip_table(data: Path, out: Path) -> Path:
    """Two windows of every train soundscape and of every training clip, the table rooted at `data`."""
    rows = []
    for audio in sorted((data / "train_soundscapes").glob("*.ogg")) + sorted((data / "train_audio").rglob("*.ogg")):
        rows += [{"path": audio.relative_to(data).as_posix(), "start_s": s, "end_s": s + 5.0, "fold": 0,
                  "syn00": 0.5, "syn01": 0.25, "syn02": 0.0} for s in (0.0, 2.5)]
    return write_pseudo(pd.DataFrame(rows), CLASSES, {"soundscapes": str(data.resolve())}, out)


def test_a_window_of_a_training_clip_trains_only_the_folds_its_clip_trains(data: Path, tmp_path: Path) -> None:
    config = load_config(None, TINY)
    d = config.data
    prepare_cache(data, tmp_path / "cache", strategy=d.strategy, window_s=d.window_s, sample_rate=d.sample_rate,
                  max_clip_s=d.max_clip_s, num_workers=0, progress=False)
    cache = WaveCache(tmp_path / "cache")
    folds = assign_folds(cache.index["primary_label"].astype(str).tolist(), d.n_folds, d.fold_seed)
    own = clip_fold_map(data / "train_audio", cache.index["filename"].astype(str), folds)
    table = _clip_table(data, tmp_path / "pseudo.parquet")
    plain, labels = read_pseudo(table, CLASSES, d.n_folds, d.fold_seed), read_pseudo(table, CLASSES, d.n_folds,
                                                                                      d.fold_seed, clip_folds=own)
    clip_of = {str((data / "train_audio" / f).resolve()): k for f, k in zip(cache.index["filename"], folds)}
    is_clip = labels.table["path"].str.startswith("train_audio/").to_numpy()
    assert is_clip.sum() == 2 * len(cache) and (~is_clip).sum() == 6
    assert labels.table.loc[is_clip, "fold"].tolist() == [clip_of[str(Path(a).resolve())]
                                                          for a in labels.table.loc[is_clip, "audio"]]
    ss = soundscape_folds(labels.table["path"].tolist(), d.n_folds, d.fold_seed)  # the split of every file
    assert labels.table.loc[~is_clip, "fold"].tolist() == [ss[p] for p in labels.table.loc[~is_clip, "path"]]
    assert (plain.table["fold"] != labels.table["fold"]).any()  # without the clip folds, they would not hold

    audio = prepare_pseudo_audio(labels, tmp_path / "pseudo_cache", d.sample_rate, d.window_s, progress=False)
    examples = build_examples(cache, CLASSES, config, labels, audio)
    for fold in range(d.n_folds):
        trained = examples.table.iloc[examples.rows("pseudo", fold, held_out=False)]
        held = {str((data / "train_audio" / f).resolve()) for f, k in zip(cache.index["filename"], folds) if k == fold}
        assert not {str(Path(a).resolve()) for a in trained["audio"]} & held


@pytest.mark.slow
def test_selftrain_label_clips_labels_the_clips_and_records_their_folds(data: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "st"
    argv = ["selftrain", "--data", str(data), "--out", str(out), "--rounds", "1", "--label-clips", "--hop", "2.5",
            "--device", "cpu", "--no-progress", "--set", *TINY, "train.epochs=1", "train.folds=[0]",
            "train.pseudo_ratio=1"]
    assert cli.main(argv) == 0
    assert "train_soundscapes and " in capsys.readouterr().out  # the log names both folders
    table = pd.read_parquet(out / "round1" / "pseudo.parquet")
    assert read_provenance(out / "round1" / "pseudo.parquet")["soundscapes"] == str(data.resolve())
    clips = pd.read_csv(data / "train.csv")["filename"]
    assert {f"train_audio/{f}" for f in clips} <= set(table["path"])
    assert any(p.startswith("train_soundscapes/") for p in table["path"])
    folds = pd.read_csv(out / "round1" / "run" / "folds.csv")
    recorded = pd.read_csv(out / "round1" / "run" / "pseudo_folds.csv")
    clip_fold = {str((data / "train_audio" / f).resolve()): k for f, k in zip(folds["filename"], folds["fold"])}
    on_clips = recorded[recorded["audio"].isin(clip_fold)]
    assert len(on_clips) == len(folds) and (on_clips["fold"] == on_clips["audio"].map(clip_fold)).all()
    stored = json.loads((out / "selftrain.json").read_text())
    assert stored["settings"]["label_clips"] is True


def test_a_job_stored_before_label_clips_resumes_and_a_changed_flag_is_refused(data: Path, tmp_path: Path) -> None:
    config, out = load_config(None, TINY), tmp_path / "st"
    out.mkdir()
    rounds_module._check_settings(out, config, data, SelfTrainSettings())
    record = json.loads((out / "selftrain.json").read_text())
    del record["settings"]["label_clips"]  # as a job written before the setting existed stored it
    (out / "selftrain.json").write_text(json.dumps(record))
    rounds_module._check_settings(out, config, data, SelfTrainSettings(rounds=2))  # no change: resumes
    with pytest.raises(BirdclefError, match="changed: label_clips"):
        rounds_module._check_settings(out, config, data, SelfTrainSettings(label_clips=True))
