"""A synthetic `analyze` results folder for the review tests: real WAV recordings and a scores table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from conftest import SR, chirp

CLASSES = ["amerob", "norcar"]
FILES = ["site1/20240501_060000.wav", "site2/20240502_050000.wav", "site2/20240503_050000.wav"]
DURATION_S = 60.0


def make_results(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(results folder, archive folder): 3 one-minute WAVs, 5 s windows, two classes with seeded scores."""
    archive, results = root / "archive", root / "results"
    rows = []
    rng = np.random.default_rng(seed)
    for i, rel in enumerate(FILES):
        path = archive / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, chirp(DURATION_S, 1500 + 500 * i, 5000, seed=i), SR, subtype="PCM_16")
        for start in np.arange(0.0, DURATION_S, 5.0):
            rows.append({"path": rel, "start_s": float(start), "end_s": float(start + 5.0),
                         "amerob": rng.uniform(), "norcar": rng.beta(0.5, 2.0)})
    results.mkdir(parents=True)
    table = pd.DataFrame(rows)
    for c in CLASSES:
        table[c] = table[c].astype(np.float32)
    table.to_parquet(results / "detections.parquet", index=False)
    (results / "settings.json").write_text(json.dumps({"predictor": {"backend": "synthetic"}, "sample_rate": SR,
                                                       "hop_s": 5.0}))
    (results / "archive.json").write_text(json.dumps({"archive": str(archive.resolve())}))
    return results, archive
