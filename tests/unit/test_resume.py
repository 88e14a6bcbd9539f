"""Resume after a real ``kill -9`` of ``birdclef train`` (in epoch 2, after epoch 1's last.ckpt), an
unreadable last.ckpt, and no orphaned children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from birdclef.config import load_config
from birdclef.errors import BirdclefWarning
from birdclef.models import load_checkpoint
from birdclef.train.kfold import train_kfold
from test_train import EpochLog, StopAfterEpochs

TINY = [
    "model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
    "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null",
    "data.window_s=1.0", "train.batch_size=4", "train.folds=[0]", "data.n_folds=3", "train.epochs=2",
]

HOLD = '''
"""`birdclef train` that parks itself at batch HOLD_BATCH of epoch HOLD_EPOCH after touching HOLD_MARKER."""
import os, sys, time
from pathlib import Path
import lightning as L
import birdclef.train.kfold as kfold

class Hold(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, idx):
        if trainer.current_epoch == int(os.environ["HOLD_EPOCH"]) and idx == int(os.environ["HOLD_BATCH"]):
            Path(os.environ["HOLD_MARKER"]).touch()
            time.sleep(600)

train = kfold.train_kfold
kfold.train_kfold = lambda *a, **k: train(*a, **{**k, "callbacks": [Hold()]})
from birdclef.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _command(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--cache", str(cache), "--no-progress", "--device", "cpu",
            "--num-workers", "2", *extra]


def _env(**extra: str) -> dict[str, str]:
    # One thread per process in every run, so runs compare like for like.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def _gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes of `procs` still running (not zombies) after waiting up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def test_kill_9_in_epoch_2_then_resume_equals_uninterrupted_run(tiny_dataset: Path, tmp_path: Path):
    cache, settings = tmp_path / "cache", ["--set", *TINY, "train.background_prob=0.5"]
    full = tmp_path / "full"
    done = subprocess.run([sys.executable, "-m", "birdclef", *_command(tiny_dataset, full, cache, *settings)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    part, marker, script = tmp_path / "part", tmp_path / "held", tmp_path / "hold.py"
    script.write_text(HOLD)
    proc = subprocess.Popen([sys.executable, str(script), *_command(tiny_dataset, part, cache, *settings)],
                            env=_env(HOLD_EPOCH="1", HOLD_BATCH="1", HOLD_MARKER=str(marker)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"training never reached epoch 2: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "expected DataLoader worker processes"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # torch's own worker watchdog needs 5 s or more; dying with the parent takes no polling.
    assert not _gone(children, timeout=30.0), "DataLoader workers outlived kill -9 of their parent"

    state = torch.load(part / "fold0" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and len(pd.read_csv(part / "fold0" / "metrics.csv")) == 1  # killed after epoch 1
    assert not (part / "fold0" / "done.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "birdclef", *_command(tiny_dataset, part, cache, "--resume")],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    pd.testing.assert_frame_equal(pd.read_csv(full / "metrics.csv"), pd.read_csv(part / "metrics.csv"))
    a, b = _weights(full / "fold0" / "best.pt"), _weights(part / "fold0" / "best.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_truncated_last_ckpt_restarts_the_fold_with_a_warning(tiny_dataset: Path, tmp_path: Path):
    config = load_config(None, TINY + ["train.num_workers=0"])
    run, cache = tmp_path / "run", tmp_path / "cache"
    train_kfold(config, tiny_dataset, run, cache_dir=cache, progress=False, callbacks=[StopAfterEpochs(1)])
    ckpt = run / "fold0" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # what a kill in the middle of a plain torch.save leaves

    log = EpochLog()
    with pytest.warns(BirdclefWarning, match=r"last.ckpt: unreadable .*set aside as last.ckpt.corrupt and fold 0 "
                      r"restarts from epoch 0"):
        summary = train_kfold(config, tiny_dataset, run, cache_dir=cache, resume=True, progress=False, callbacks=[log])
    assert log.epochs == [0, 1]  # restarted from epoch 0, not a traceback
    assert (run / "fold0" / "last.ckpt.corrupt").read_bytes() == data[: len(data) // 2]
    assert list(summary.fold_scores) == [0] and (run / "fold0" / "done.json").is_file()
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1]
