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
def _window_logits(model: torch.nn.Module, cache: WaveCache, hop: int, device: torch.device, batch_size: int):
    """Yield (clip, (n,) its windows' start samples, (n, C) logits) for every clip, windows of several clips
    batched together (``batch_size`` windows per forward pass, or one clip's when it has more)."""
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []

    def flush():
        wave = torch.from_numpy(np.concatenate([w for _, w, _ in pending])).to(device)
        with autocast_for(device):
            logits = model(wave)["clip_logits"].float().cpu()
        for (i, _, starts), part in zip(pending, torch.split(logits, [len(s) for _, _, s in pending])):
            yield i, starts, part
        pending.clear()

    for i in range(len(cache)):
        wins, starts = clip_windows(cache.segment(i), cache.window_length, hop)
        if pending and sum(len(s) for *_, s in pending) + len(wins) > batch_size:
            yield from flush()
        pending.append((i, wins, starts))
    if pending:
        yield from flush()


def fold_windows(model: torch.nn.Module, pool: MilPooling, cache: WaveCache, classes: list[str], folds: np.ndarray,
                 fold: int, hop_s: float, device: torch.device, batch_size: int = 64) -> pd.DataFrame:
    """The table (module docstring) of every window of every clip of `cache`, scored by fold `fold`'s model
    (in eval mode; `batch_size` windows per forward pass)."""
    index, column = cache.index, {c: i for i, c in enumerate(classes)}
    hop, pool = max(1, int(round(hop_s * cache.sample_rate))), pool.cpu()
    frames = []
    for i, starts, logits in _window_logits(model, cache, hop, device, batch_size):
        c = column[str(index["primary_label"].iat[i])]
        with torch.no_grad():
            weight = pool.weights(logits[None], torch.ones(1, len(logits), dtype=torch.bool))[0, :, c].numpy()
        start_s = float(index["start_s"].iat[i]) + starts / cache.sample_rate
        frames.append(pd.DataFrame({
            "filename": index["filename"].iat[i], "row": int(index["row"].iat[i]),
            "primary_label": str(index["primary_label"].iat[i]), "fold": fold, "held_out": bool(folds[i] == fold),
            "window": np.arange(len(starts)), "start_s": start_s, "end_s": start_s + cache.window_s,
            "weight": weight, "logit": logits[:, c].numpy(),
            "chosen": np.arange(len(starts)) == int(np.argmax(weight))}))
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
