"""LightningModule: the reference recipe's training and validation steps.

The Trainer owns the loop, devices, DDP, precision, checkpoints and the progress bar. Every random
draw of a step (mixup, SpecAugment, dropout, stochastic depth) is seeded from (seed, fold, epoch,
batch, rank), so a run resumed from ``last.ckpt`` repeats exactly what the uninterrupted run would
have done; the data side is keyed the same way (:mod:`birdclef.data.dataset`).
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch

from birdclef.config import Config
from birdclef.data.augment import mix_batch, mixup_loss
from birdclef.eval.metrics import macro_roc_auc
from birdclef.models import create_model
from birdclef.train.losses import loss_from_config
from birdclef.train.mil import MilPooling, bag_forward, mix_bags


def validation_auc(target: np.ndarray, probs: np.ndarray) -> float:
    """Macro ROC-AUC of a validation fold, NaN when no class has both positives and negatives."""
    binary = (target > 0).astype(np.int64)
    scoreable = (binary.sum(0) > 0) & (binary.sum(0) < len(binary))
    if not scoreable.any():
        return math.nan
    return macro_roc_auc(binary[:, scoreable], probs[:, scoreable])


class BirdModule(L.LightningModule):
    """Wraps a :class:`~birdclef.models.BirdClassifier` with the configured loss, mixup and AdamW + cosine."""

    def __init__(self, config: Config, classes: list[str], fold: int = 0):
        super().__init__()
        self.config, self.classes, self.fold = config, list(classes), fold
        self.model = create_model(config.model, len(self.classes))
        self.criterion = loss_from_config(config.train)  # used with and without mixup (the reference was not)
        train = config.train
        self.mil = (MilPooling(train.mil_pooling, len(self.classes), train.mil_topk)
                    if config.data.strategy == "mil" else None)
        """With data.strategy=mil: the bag pooling (batches are (bag, target, mask, weight, valid))."""
        self._val_probs: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(wave)

    def _step_rng(self, batch_idx: int) -> np.random.Generator:
        key = [self.config.train.seed, self.fold, self.current_epoch, batch_idx, self.global_rank]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))  # SpecAugment, dropout
        return np.random.default_rng(key)

    def logits(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B, K) clip logits of a batch: the model's on windows, or the pooled bag logits under MIL."""
        if self.mil is None:
            return self.model(batch[0])["clip_logits"]
        return bag_forward(self.model, self.mil, batch[0], batch[4])["clip_logits"]

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        # (B, T) windows or (B, W, T) bags, (B, K), (B, K) bool: known targets, (B,)[, (B, W) valid windows]
        wave, target, mask, weight = batch[:4]
        rng = self._step_rng(batch_idx)
        train = self.config.train
        if train.mixup_alpha > 0 and len(wave) > 1 and rng.random() < train.mixup_prob:
            if self.mil is None:
                mixed = mix_batch(wave, target, train.mixup_alpha, rng, mask)
                logits = self.model(mixed.wave)["clip_logits"]
            else:
                mixed, valid = mix_bags(wave, batch[4], target, train.mixup_alpha, rng, mask)
                logits = bag_forward(self.model, self.mil, mixed.wave, valid)["clip_logits"]
            loss = mixup_loss(self.criterion, logits, mixed, train.mixup_target, weight)
        else:
            loss = self.criterion(self.logits(batch), target, weight, mask)
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=len(wave))
        # The epoch mean is averaged over all DDP ranks (each trains on its own shard).
        self.log("train_loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(wave))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        wave, target, mask, weight = batch[:4]
        logits = self.logits(batch)
        # Every DDP rank validates the whole fold (no distributed sampler), so the sync averages equal values.
        self.log("val_loss", self.criterion(logits, target, weight, mask), on_epoch=True, prog_bar=True, batch_size=len(wave),
                 sync_dist=True)
        self._val_probs.append(torch.sigmoid(logits.float()).cpu())
        self._val_targets.append(target.float().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_probs:
            return
        probs = torch.cat(self._val_probs).numpy()
        target = torch.cat(self._val_targets).numpy()
        self._val_probs.clear()
        self._val_targets.clear()
        self.log("val_auc", validation_auc(target, probs), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        train = self.config.train
        groups = [{"params": list(self.model.parameters())}]
        if self.mil is not None and len(list(self.mil.parameters())):  # the attention temperatures: no decay
            groups.append({"params": list(self.mil.parameters()), "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs, eta_min=train.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
