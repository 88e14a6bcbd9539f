"""One rule for the infer settings: the run's stored ones by default, -c / --set on top, for every verb."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import noise, write_ogg
from test_predict import TINY, make_run

from birdclef import cli
from birdclef.config import InferConfig, dump_config, load_config
from birdclef.errors import ConfigError
from birdclef.infer.postprocess import smooth
from birdclef.infer.predict import TorchPredictor
from birdclef.infer.settings import resolve_infer

NO_POST = ["infer.smoothing=false", "infer.power_adjust=false"]


def trained(root: Path, infer: list[str], seed: int = 0, with_yaml: bool = True) -> Path:
    """A tiny run whose stored config (config.yaml and checkpoint) carries `infer` overrides."""
    run = make_run(root, 1, seed=seed, extra=infer)
    if with_yaml:
        (run / "config.yaml").write_text(dump_config(load_config(None, TINY + infer)))
    return run


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_ogg(tmp_path / "sc" / "S0.ogg", noise(20.0, seed=3))
    return tmp_path / "sc"


def predict_cli(tmp_path: Path, name: str, *args: str) -> pd.DataFrame:
    out = tmp_path / f"{name}.csv"
    assert cli.main(["predict", *args, "--soundscapes", str(tmp_path / "sc"), "--out", str(out), "--device", "cpu",
                     "--num-workers", "0", "--no-progress"]) == 0
    return pd.read_csv(out).set_index("row_id")


def test_run_trained_without_smoothing_predicts_without_it_until_set(tmp_path: Path, folder: Path):
    run = trained(tmp_path / "run", NO_POST)
    default = predict_cli(tmp_path, "default", "--run", str(run))
    on = predict_cli(tmp_path, "on", "--run", str(run), "--set", "infer.smoothing=true")
    raw = TorchPredictor([run], config=InferConfig(smoothing=False, power_adjust=False), device="cpu")
    from birdclef.audio.io import load_audio

    expected = raw.predict_file(load_audio(folder / "S0.ogg"))
    np.testing.assert_allclose(default.to_numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(on.to_numpy(), smooth(expected), rtol=1e-5, atol=1e-7)
    assert not np.allclose(on.to_numpy(), default.to_numpy())


def test_config_yaml_wins_over_defaults_and_yaml_file_overrides_apply(tmp_path: Path):
    run = trained(tmp_path / "run", NO_POST + ["infer.batch_size=3"])
    resolved = resolve_infer(runs=[run])
    assert (resolved.config.smoothing, resolved.config.batch_size) == (False, 3)
    assert resolved.source == str(run / "config.yaml") and not resolved.notes
    (tmp_path / "o.yaml").write_text("infer:\n  power_adjust: true\n")
    both = resolve_infer(runs=[run], config_file=tmp_path / "o.yaml", overrides=["infer.batch_size=5"]).config
    assert (both.smoothing, both.power_adjust, both.batch_size) == (False, True, 5)
    fold_checkpoint = resolve_infer(runs=[run / "fold0" / "best.pt"]).config  # RUN/foldK/best.pt: the run's yaml
    assert fold_checkpoint.batch_size == 3


def test_run_without_config_yaml_uses_its_checkpoint_config(tmp_path: Path):
    run = trained(tmp_path / "run", ["infer.smoothing=false"], with_yaml=False)
    assert resolve_infer(runs=[run]).config.smoothing is False
    assert TorchPredictor([run], device="cpu").config.smoothing is False  # library default: the same rule


def test_blend_uses_first_runs_settings_and_notes_a_difference(tmp_path: Path):
    a = trained(tmp_path / "a", ["infer.smoothing=false"], seed=1)
    b = trained(tmp_path / "b", ["infer.smoothing=true"], seed=2)
    resolved = resolve_infer(runs=[a, b])
    assert resolved.config.smoothing is False and len(resolved.notes) == 1 and str(b) in resolved.notes[0]
    assert not resolve_infer(runs=[a, a]).notes


def test_broken_stored_config_and_bad_override_are_one_line_errors(tmp_path: Path, capsys):
    run = trained(tmp_path / "run", [])
    with pytest.raises(ConfigError, match="infer.smoothing"):
        resolve_infer(runs=[run], overrides=["infer.smoothing=maybe"])
    (run / "config.yaml").write_text("infer:\n  smoothin: true\n")
    with pytest.raises(ConfigError, match=r"config.yaml: unknown config key 'infer.smoothin'"):
        resolve_infer(runs=[run])
    (run / "config.yaml").write_text("infer: [1, 2\n")
    assert cli.main(["predict", "--run", str(run), "--soundscapes", str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 2
    assert "cannot read the run's config" in capsys.readouterr().err


def test_model_folder_settings_for_the_torch_backend(tmp_path: Path, folder: Path):
    run = trained(tmp_path / "run", [])  # the run itself smooths; the export stored smoothing off
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"")
    meta = {"format": "onnx", "precision": "fp32", "classes": ["aaa", "bbb", "ccc"], "sample_rate": 32000,
            "input_window_s": 5.0, "weights": [1.0], "runs": [{"path": str(run)}],
            "infer": {"smoothing": False, "power_adjust": False}}
    (model / "metadata.json").write_text(json.dumps(meta))
    assert resolve_infer(model=model).config.smoothing is False
    via_model = predict_cli(tmp_path, "m", "--model", str(model), "--backend", "torch")
    via_run = predict_cli(tmp_path, "r", "--run", str(run), *["--set", *NO_POST])
    np.testing.assert_allclose(via_model.to_numpy(), via_run.to_numpy(), rtol=1e-6)


def test_export_verb_resolves_the_same_way(tmp_path: Path, monkeypatch):
    import birdclef.export.export as export

    run = trained(tmp_path / "run", NO_POST)
    seen = {}

    class Report:
        written = True

        def summary(self):
            return "exported"

    def fake_export(runs, weights, **kwargs):
        seen.update(kwargs)
        return Report()

    monkeypatch.setattr(export, "export_model", fake_export)
    assert cli.main(["export", "--run", str(run), "--out", str(tmp_path / "m"), "--set", "infer.batch_size=4"]) == 0
    assert (seen["config"].smoothing, seen["config"].power_adjust, seen["config"].batch_size) == (False, False, 4)
