"""`birdclef package`: the bundle installs into a fresh venv with pip --no-index and writes a valid submission.

Packaging fetches the wheels from the package registry (what a user does on a connected machine);
the test skips when that is not reachable. Installing and running are offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import chirp, noise, write_ogg

from birdclef.config import InferConfig, load_config
from birdclef.errors import BirdclefError
from birdclef.export.export import check_target, export_model
from birdclef.export.package import SCRIPT_NAME, package_model
from birdclef.models import create_model, save_checkpoint

CLASSES = ["aaa", "bbb", "ccc"]
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null"]


def base_python() -> str:
    """The interpreter the project's venv was made from (a venv's own python can make venvs too)."""
    return str(Path(sys.base_prefix) / "bin" / "python3") if (Path(sys.base_prefix) / "bin" / "python3").exists() else sys.executable


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(cmd[:4])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.mark.slow
def test_packaged_script_runs_offline_in_a_fresh_venv(tmp_path: Path):
    try:
        check_target("onnx", "fp32")
    except BirdclefError as exc:
        pytest.skip(f"onnx export not available: {exc}")
    config = load_config(None, TINY)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "fold0" / "best.pt", create_model(config.model, 3), config, CLASSES, 0, 0.5)
    (tmp_path / "run" / "fold0" / "done.json").write_text(json.dumps({"fold": 0}))
    data = tmp_path / "data"
    write_ogg(data / "test_soundscapes" / "TS_1.ogg", noise(12.0, seed=1) + 0.3 * chirp(12.0, 1_000, 3_000, noise=0.0))
    write_ogg(data / "test_soundscapes" / "TS_2.ogg", noise(10.0, seed=2))
    sample = pd.DataFrame({"row_id": ["TS_1_5", "TS_1_10", "TS_1_15", "TS_2_5", "TS_2_10"], **{c: 0.0 for c in CLASSES}})
    sample.to_csv(data / "sample_submission.csv", index=False)
    export_model([tmp_path / "run"], format="onnx", out=tmp_path / "model", parity_audio=data / "test_soundscapes",
                 parity_count=2, config=InferConfig())
    try:
        report = package_model([tmp_path / "model"], tmp_path / "bundle")
    except BirdclefError as exc:
        pytest.skip(f"wheels could not be fetched from the package registry: {exc}")
    bundle = report.out
    assert {SCRIPT_NAME, "requirements.txt", "wheels", "models", "README.txt"} <= {p.name for p in bundle.iterdir()}
    assert not any(r.split("==")[0].lower() in ("torch", "timm", "lightning") for r in report.requirements)

    env = tmp_path / "env"
    run([base_python(), "-m", "venv", str(env)])
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(bundle / "wheels")]
    run([*pip, "-r", str(bundle / "requirements.txt")])
    run([*pip, "--no-deps", *map(str, (bundle / "wheels").glob("birdclef-*.whl"))])
    out = tmp_path / "submission.csv"
    run([str(env / "bin" / "python"), str(bundle / SCRIPT_NAME), "--soundscapes", str(data / "test_soundscapes"),
         "--out", str(out)], cwd=tmp_path)

    sub = pd.read_csv(out)
    assert list(sub.columns) == ["row_id", *CLASSES]
    assert sub["row_id"].tolist() == sample["row_id"].tolist()
    values = sub[CLASSES].to_numpy()
    assert ((values >= 0) & (values <= 1)).all() and values.std() > 0
    has_torch = run([str(env / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"])
    assert has_torch.stdout.strip() == "True"  # the inference install has no torch
