"""The run folder both trainers share (the k-fold CNN trainer, :mod:`birdclef.train.kfold`, and the embedding-head
trainer, :mod:`birdclef.birdnet.head_train`): creating and re-opening it, the config a resume must keep, the
environment record, the per-fold results gathered into ``metrics.csv``, ``oof.parquet`` and a
:class:`TrainSummary`, and the background bank both mix under training windows.

    RUN/config.yaml  env.json  data.json  folds.csv  metrics.csv  oof.parquet  summary.json
    RUN/fold{k}/best.pt  metrics.csv  oof.parquet  done.json (its ``kind``)
"""

from __future__ import annotations

import json
import math
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from birdclef.config import Config, config_to_dict, dump_config, load_config
from birdclef.data.augment import BackgroundBank
from birdclef.data.metadata import DatasetLayout
from birdclef.errors import BirdclefWarning, ConfigError, DatasetError
from birdclef.train.module import validation_auc
from birdclef.utils.device import resolve_device
from birdclef.utils.io import write_csv_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic

OOF_NOTE = ("optimistic: each fold's best.pt was chosen on the same held-out fold it predicts; "
            "score the test soundscapes for an unbiased estimate")
"""Shown wherever the out-of-fold score is (CLI, summary.json and the report that reads it)."""

RESUMABLE_KEYS = ("train.folds", "train.num_workers", "train.devices", "train.accelerator", "train.precision",
                  "train.embed_engine", "train.embed_scheduler", "train.embed_workers", "train.embed_chunk_rows")
"""Config keys that may change when a run is resumed (which folds, and where they run)."""


@dataclass
class TrainSummary:
    run_dir: Path
    fold_scores: dict[int, float] = field(default_factory=dict)
    """Best validation score (macro ROC-AUC) of each finished fold."""
    oof_auc: float | None = None
    """Macro ROC-AUC of the out-of-fold predictions of all finished folds (optimistic, see OOF_NOTE)."""
    n_clips: int = 0
    elapsed_s: float = 0.0
    skipped_clips: int = 0
    """Training clips the cache could not decode (listed in the cache's skipped.csv)."""
    cache_dir: Path | None = None
    skipped_background: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) of train_soundscapes that could not be decoded for background mixing."""
    n_pseudo: int = 0
    """Pseudo-labelled soundscape windows in the run's table (0 without ``--pseudo``)."""


def _config_diff(a: Config, b: Config) -> list[str]:
    def flat(d: dict, prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in d.items():
            name = f"{prefix}{key}"
            out.update(flat(value, name + ".") if isinstance(value, dict) else {name: value})
        return out

    fa, fb = flat(config_to_dict(a)), flat(config_to_dict(b))
    return [k for k in sorted(fa) if fa[k] != fb.get(k) and k not in RESUMABLE_KEYS]


def trained_anything(run: Path) -> bool:
    """Whether a run folder holds any training: a finished fold, a best checkpoint or a last.ckpt."""
    return any(any(Path(run).glob(f"fold*/{name}")) for name in ("done.json", "best.pt", "last.ckpt"))


def init_run(run: Path, config: Config, resume: bool) -> None:
    """Create or re-open the run folder; a resumed run must keep its config (except RESUMABLE_KEYS).

    A folder whose run never finished an epoch (it failed at the start: bad data, out of memory) is no run to
    protect: it is started again (with a warning), with or without ``--resume``, whatever its old config.
    """
    cfg_path = run / "config.yaml"
    if cfg_path.is_file() and not trained_anything(run):  # a run that failed before any epoch: replaced
        if not resume or _config_diff(load_config(cfg_path), config):
            warnings.warn(f"{run} holds a run that never finished an epoch (no checkpoint, no finished fold: a "
                          "failed start?): starting it again with this config", BirdclefWarning, stacklevel=2)
    elif cfg_path.is_file():
        if not resume:
            raise ConfigError(f"{run} already holds a run; pass --resume to continue it, or choose another --out")
        changed = _config_diff(load_config(cfg_path), config)
        if changed:
            raise ConfigError(f"cannot resume {run} with a different config (changed: {', '.join(changed)}); "
                              f"only {', '.join(RESUMABLE_KEYS)} may change")
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dump_config(config), cfg_path)
    write_json_atomic(_environment(), run / "env.json")


def _environment() -> dict[str, object]:
    import timm

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "timm": timm.__version__, "lightning": L.__version__, "cpu_threads": torch.get_num_threads(),
            "accelerator": resolve_device("auto").type}


def collect_summary(run: Path, folds: list[int], classes: list[str], targets: np.ndarray, index: pd.DataFrame) -> TrainSummary:
    """Concatenate fold metrics and OOF predictions; score the OOF predictions against their clips' targets."""
    summary = TrainSummary(run)
    done = [f for f in folds if (run / f"fold{f}" / "done.json").is_file()]
    metrics = [pd.read_csv(run / f"fold{f}" / "metrics.csv") for f in done if (run / f"fold{f}" / "metrics.csv").is_file()]
    if metrics:
        write_csv_atomic(pd.concat(metrics, ignore_index=True), run / "metrics.csv")
    for f in done:
        summary.fold_scores[f] = json.loads((run / f"fold{f}" / "done.json").read_text())["best_score"]
    if done:
        oof = pd.concat([pd.read_parquet(run / f"fold{f}" / "oof.parquet") for f in done], ignore_index=True)
        write_parquet_atomic(oof, run / "oof.parquet")
        on = ["filename"] if index["filename"].is_unique else ["filename", "row"]  # the clip's identity
        keys = index[on].assign(position=np.arange(len(index)))
        position = oof[on].merge(keys, on=on, how="left", validate="many_to_one")
        if position["position"].isna().any():
            raise DatasetError(f"{run}/oof.parquet names clips that are not in the cache: "
                               f"{position.loc[position['position'].isna(), 'filename'].tolist()[:5]}")
        auc = validation_auc(targets[position["position"].to_numpy(np.int64)], oof[classes].to_numpy())
        summary.oof_auc = None if math.isnan(auc) else auc
    return summary


def background_bank(config: Config, layout: DatasetLayout) -> BackgroundBank | None:
    """The train_soundscapes excerpts mixed under training windows, or None (``train.background_prob`` 0, no folder)."""
    if config.train.background_prob <= 0 or not layout.train_soundscapes.is_dir():
        return None
    return BackgroundBank(sorted(layout.train_soundscapes.glob("*.ogg")), config.data.sample_rate,
                          config.train.background_max_files)
