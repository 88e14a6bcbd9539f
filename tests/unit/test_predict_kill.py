"""`birdclef predict` killed with SIGKILL mid-job, then re-run: nothing finished is lost or redone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import noise, write_ogg
from test_predict import make_run

pytestmark = pytest.mark.slow

# The real CLI in a child process; each soundscape's prediction is slowed so that the kill lands
# mid-job, and every predicted file is logged so the re-run can be checked for redone work.
CHILD = """
import sys, time
from birdclef.infer import predict
real = predict.TorchPredictor.predict_file
def slowed(self, wave):
    time.sleep(float(sys.argv[1]))
    with open(sys.argv[2], "a") as log:
        log.write("call\\n")
    return real(self, wave)
predict.TorchPredictor.predict_file = slowed
from birdclef.cli import main
sys.exit(main(sys.argv[3:]))
"""


def child(delay: float, log: Path, run: Path, folder: Path, out: Path) -> list[str]:
    args = ["predict", "--run", str(run), "--soundscapes", str(folder), "--out", str(out), "--device", "cpu",
            "--num-workers", "0", "--no-progress", "--set", "infer.power_adjust=false"]
    return [sys.executable, "-c", CHILD, str(delay), str(log), *args]


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path: Path):
    run = make_run(tmp_path / "run", 1, seed=11)
    folder = tmp_path / "sc"
    for k in range(10):
        write_ogg(folder / f"K{k:02d}.ogg", noise(10.0, seed=k))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, parts = tmp_path / "sub.csv", tmp_path / ".sub.csv.parts"
    victim = subprocess.Popen(child(0.4, tmp_path / "killed.log", run, folder, out), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list(parts.glob("part-*.parquet"))) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    finished = len(list(parts.glob("part-*.parquet")))
    assert 3 <= finished < 10 and not out.exists()

    resumed = subprocess.run(child(0.0, tmp_path / "resumed.log", run, folder, out), env=env,
                             capture_output=True, text=True, check=True)
    assert f"{finished} resumed" in resumed.stdout
    assert calls(tmp_path / "resumed.log") == 10 - finished  # finished files are not predicted again
    fresh = subprocess.run(child(0.0, tmp_path / "fresh.log", run, folder, tmp_path / "fresh.csv"), env=env,
                           capture_output=True, text=True, check=True)
    assert "20 rows from 10 soundscapes" in fresh.stdout and calls(tmp_path / "fresh.log") == 10
    assert out.read_bytes() == (tmp_path / "fresh.csv").read_bytes()
    assert not parts.exists() and not (tmp_path / ".sub.csv.lock").exists()
