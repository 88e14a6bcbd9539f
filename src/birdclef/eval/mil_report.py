"""The report section of a MIL run (``data.strategy=mil``): which windows of its training clips it chose.

Reads ``RUN/mil_windows.csv`` (:mod:`birdclef.train.mil_windows`) and the clips' audio from the dataset
``RUN/data.json`` names; draws, for the clips whose choice is clearest, the spectrogram with each window's
weight (:func:`birdclef.eval.plots.plot_window_weights`). Problems become notes, never errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from birdclef.audio.io import SAMPLE_RATE, load_audio
from birdclef.errors import AudioError
from birdclef.eval.plots import plot_window_weights

RUN_TABLE = "mil_windows.csv"


def pick_clips(table: pd.DataFrame, n: int) -> list[int]:
    """`row`s of the `n` clips with at least two windows whose chosen window has the highest weight."""
    chosen = table[table["chosen"].astype(bool)].set_index("row")
    sizes = table.groupby("row").size()
    chosen = chosen[sizes.reindex(chosen.index) >= 2]
    return chosen.sort_values("weight", ascending=False, kind="stable").index[:n].tolist()


def mil_section(run: Path, out_dir: Path, esc, img, note, max_clips: int = 3) -> str:
    """HTML of the section ('' when the run has no chosen-window table). `esc`, `img`, `note`: the page's helpers."""
    path = Path(run) / RUN_TABLE
    if not path.is_file():
        return ""
    legend = ("Each training clip is a bag of windows; the bars are the weight the pooling gave each window for "
              f"the clip's label (they sum to 1), the red one is the window chosen. Table: {path}")
    parts = ["<h2>Multiple-instance learning: chosen windows</h2>", f"<p>{esc(legend)}</p>"]
    try:
        table = pd.read_csv(path)
        data_root = Path(json.loads((Path(run) / "data.json").read_text())["data_root"])
    except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return "\n".join([*parts, note(f"chosen windows not drawn: {exc}")])
    for i, row in enumerate(pick_clips(table, max_clips)):
        clip = table[table["row"] == row]
        filename, label = str(clip["filename"].iat[0]), str(clip["primary_label"].iat[0])
        parts.append(f"<h3>{esc(filename)} ({esc(label)})</h3>")
        try:
            wave = load_audio(data_root / "train_audio" / filename, SAMPLE_RATE, duration_s=float(clip["end_s"].max()))
        except AudioError as exc:
            parts.append(note(f"skipped: {exc}"))
            continue
        name = f"mil_windows_{i:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', filename)}.png"
        plot_window_weights(wave, SAMPLE_RATE, clip, out_dir / name, f"{filename} ({label})")
        parts.append(img(name, f"mel spectrogram of {filename} and its window weights"))
    return "\n".join(parts)
