"""The windows a MIL run chose: every window of every clip with its pooling weight for the clip's label.

After a fold of a ``data.strategy=mil`` run finishes, its best model scores every window of every cached
clip (all of them, not only a bag's K) and writes ``RUN/fold{k}/mil_windows.parquet``; the run folder's
``RUN/mil_windows.csv`` takes, for each clip, the windows of the lowest finished fold that trained on it
(else of one that held it out: ``held_out`` says which). Columns::

    filename row primary_label fold held_out window start_s end_s weight logit chosen

``weight`` is the pooling's weight of the window for the clip's primary label (:mod:`birdclef.train.mil`;
the weights of a clip sum to 1), ``logit`` the model's score of that label in that window, ``chosen`` marks
the window of highest weight (the first on ties): what ``data.strategy=table`` with
``data.window_table=RUN/mil_windows.csv`` trains on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from birdclef.data.bags import clip_windows
from birdclef.data.cache import WaveCache
from birdclef.train.mil import MilPooling
from birdclef.utils.device import autocast_for
from birdclef.utils.io import write_csv_atomic, write_parquet_atomic

FOLD_TABLE, RUN_TABLE = "mil_windows.parquet", "mil_windows.csv"
COLUMNS = ("filename", "row", "primary_label", "fold", "held_out", "window", "start_s", "end_s", "weight", "logit",
           "chosen")


@torch.no_grad()
def clip_window_scores(model: torch.nn.Module, pool: MilPooling, windows: np.ndarray, device: torch.device,
                       batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """((n, C) window logits, (n, C) pooling weights) of one clip's (n, T) windows, `model` in eval mode."""
    chunks = []
    for begin in range(0, len(windows), batch_size):
        with autocast_for(device):
            wave = torch.from_numpy(windows[begin : begin + batch_size]).to(device)
            chunks.append(model(wave)["clip_logits"].float().cpu())
    logits = torch.cat(chunks)
    weights = pool.cpu().weights(logits[None], torch.ones(1, len(logits), dtype=torch.bool))[0]
    return logits.numpy(), weights.numpy()


def fold_windows(model: torch.nn.Module, pool: MilPooling, cache: WaveCache, classes: list[str], folds: np.ndarray,
                 fold: int, hop_s: float, device: torch.device) -> pd.DataFrame:
    """The table (module docstring) of every window of every clip of `cache`, scored by fold `fold`'s model."""
    index, column = cache.index, {c: i for i, c in enumerate(classes)}
    length, hop = cache.window_length, max(1, int(round(hop_s * cache.sample_rate)))
    frames = []
    for i in range(len(index)):
        wins, starts = clip_windows(cache.segment(i), length, hop)
        logits, weights = clip_window_scores(model, pool, wins, device)
        c = column[str(index["primary_label"].iat[i])]
        start_s = float(index["start_s"].iat[i]) + starts / cache.sample_rate
        frames.append(pd.DataFrame({
            "filename": index["filename"].iat[i], "row": int(index["row"].iat[i]),
            "primary_label": str(index["primary_label"].iat[i]), "fold": fold, "held_out": bool(folds[i] == fold),
            "window": np.arange(len(wins)), "start_s": start_s, "end_s": start_s + cache.window_s,
            "weight": weights[:, c], "logit": logits[:, c],
            "chosen": np.arange(len(wins)) == int(np.argmax(weights[:, c]))}))
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)]


def write_fold_windows(fold_dir: Path, model, pool: MilPooling, cache: WaveCache, classes: list[str],
                       folds: np.ndarray, fold: int, hop_s: float, device: torch.device) -> Path:
    """Write ``fold_dir/mil_windows.parquet`` (:func:`fold_windows`)."""
    return write_parquet_atomic(fold_windows(model, pool, cache, classes, folds, fold, hop_s, device),
                                Path(fold_dir) / FOLD_TABLE)


def write_run_windows(run: Path, folds: list[int]) -> Path | None:
    """Write ``run/mil_windows.csv`` from the finished folds' tables (None when no fold has one)."""
    parts = [pd.read_parquet(p) for f in sorted(folds) if (p := Path(run) / f"fold{f}" / FOLD_TABLE).is_file()]
    if not parts:
        return None
    table = pd.concat(parts, ignore_index=True)
    source = table.sort_values(["held_out", "fold"], kind="stable").drop_duplicates("row")[["row", "fold"]]
    table = table.merge(source, on=["row", "fold"]).sort_values(["row", "window"], kind="stable")
    return write_csv_atomic(table.reset_index(drop=True), Path(run) / RUN_TABLE)
