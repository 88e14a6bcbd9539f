"""Callbacks that write the run folder: per-epoch metrics rows, what each epoch cost, and the self-describing best.pt."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd

from birdclef.config import Config
from birdclef.models import save_checkpoint
from birdclef.utils.io import write_csv_atomic
from birdclef.utils.process import cpu_seconds


def _metric(trainer: L.Trainer, name: str) -> float:
    value = trainer.callback_metrics.get(name)
    return math.nan if value is None else float(value)


class FoldRecorder(L.Callback):
    """After each epoch (validation has run): append a metrics.csv row and save best.pt on improvement.

    What the epoch cost (training and validation, wall and CPU seconds of this process and its loader workers) goes
    to ``times.csv`` (fold, epoch, stage, wall_s, cpu_s; stage ``distill`` before `scored_from`, else ``labels``),
    apart from metrics.csv so that a resumed run's metrics stay equal to an uninterrupted one's.

    The score is the validation macro ROC-AUC, or minus the validation loss when the fold's
    validation set has no scoreable class. `best_score` travels in last.ckpt, so a resumed fold
    keeps comparing against the best epoch before the interruption.

    Args:
        scored_from: epochs before it get their metrics row but never become best.pt (embedding distillation's
            epochs without labels, whose classifier is untrained).
        metrics: more logged metrics to put in each row (e.g. ``val_cos``), NaN when not logged.
    """

    def __init__(self, fold_dir: Path, fold: int, config: Config, classes: list[str], scored_from: int = 0,
                 metrics: tuple[str, ...] = ()):
        self.fold_dir, self.fold, self.config, self.classes = Path(fold_dir), fold, config, classes
        self.scored_from, self.metrics = scored_from, tuple(metrics)
        self.best_score = -math.inf
        self.best_epoch = -1
        self._epoch_lr = math.nan
        self._epoch_start: tuple[float, float] | None = None

    @property
    def metrics_path(self) -> Path:
        return self.fold_dir / "metrics.csv"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning steps epoch schedulers before on_train_epoch_end: read the epoch's rate here.
        self._epoch_lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._epoch_start = (time.perf_counter(), cpu_seconds())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        row = {
            "fold": self.fold,
            "epoch": epoch,
            "lr": self._epoch_lr,
            "train_loss": _metric(trainer, "train_loss_epoch"),
            "val_loss": _metric(trainer, "val_loss"),
            "val_auc": _metric(trainer, "val_auc"),
            **{name: _metric(trainer, name) for name in self.metrics},
        }
        self._append_row(row, self.metrics_path)
        if self._epoch_start is not None:
            wall, cpu = self._epoch_start
            self._append_row({"fold": self.fold, "epoch": epoch,
                              "stage": "distill" if epoch < self.scored_from else "labels",
                              "wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(cpu_seconds() - cpu, 3)},
                             self.fold_dir / "times.csv")
        score = row["val_auc"] if not math.isnan(row["val_auc"]) else -row["val_loss"]
        if epoch >= self.scored_from and score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            mil = getattr(pl_module, "mil", None)  # a MIL run's pooling travels beside the (unchanged) model
            extra = {"fold": self.fold, **({"mil_pooling": mil.checkpoint_entry()} if mil is not None else {})}
            save_checkpoint(self.fold_dir / "best.pt", pl_module.model, self.config, self.classes, epoch, score,
                            extra=extra)

    @staticmethod
    def _append_row(row: dict[str, Any], path: Path) -> None:
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        if len(old):
            old = old[old["epoch"] < row["epoch"]]  # a resumed epoch replaces its earlier row
        write_csv_atomic(pd.concat([old, pd.DataFrame([row])], ignore_index=True), path)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict["best_score"]
        self.best_epoch = state_dict["best_epoch"]
