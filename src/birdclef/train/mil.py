"""Multiple-instance learning: a clip's label supervises the pooled score of a bag of its windows.

The model scores every valid window of a (B, K, T) bag batch on its own (``model(window)["clip_logits"]``,
so every head works and padded windows never reach BatchNorm); a pooling turns the (B, K, C) window
logits into (B, C) bag logits, which the usual loss, masks and weights take. Each pooling is a weighted
sum of the window logits, ``bag[b, c] = sum_k w[b, k, c] * logits[b, k, c]``, and returns its weights ``w``
(0 on padded windows, summing to 1 over the valid ones): which window the model chose.

- ``mean``: ``w = 1 / n`` over the n valid windows.
- ``max``: all weight on the best window of each class (the first one on ties).
- ``topk``: ``1 / k`` on the k best windows of each class (``k = min(train.mil_topk, n)``).
- ``attention``: ``w = softmax_k(alpha_c * logits[b, k, c])`` over the valid windows, with one learned
  temperature ``alpha_c = softplus(raw_c) >= 0`` per class, starting at 1 (AutoPool, McFee et al. 2018): it
  moves between mean (alpha 0) and max (alpha large) as training finds best, class by class. Computed from
  the window logits, it needs nothing from the head, so it works with linear, conv and sed alike.

A bag of one window gives that window's logits exactly with every pooling, so inference and export (a
window is a bag of one) use the plain model: the pooling's parameters are trained, kept in ``last.ckpt``
(part of the LightningModule) and in ``best.pt`` (its ``mil_pooling`` entry, for the chosen-window table),
and ignored by everything that predicts windows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birdclef.config import MIL_POOLINGS
from birdclef.data.augment import MixedBatch

CHECKPOINT_KEY = "mil_pooling"
"""The ``best.pt`` entry that holds a MIL run's pooling (``{"how", "topk", "state"}``)."""


class MilPooling(nn.Module):
    """(B, K, C) window logits and (B, K) valid mask -> ((B, C) bag logits, (B, K, C) window weights).

    Args:
        how: attention, max, topk or mean (module docstring).
        num_classes: C (the attention temperatures are per class).
        topk: windows averaged by ``topk``.
    """

    def __init__(self, how: str, num_classes: int, topk: int = 2):
        super().__init__()
        if how not in MIL_POOLINGS:
            raise ValueError(f"MIL pooling must be one of {MIL_POOLINGS}, got {how!r}")
        self.how, self.topk, self.num_classes = how, int(topk), int(num_classes)
        if how == "attention":  # softplus(log(e - 1)) = 1: the softmax of the logits themselves at the start
            self.raw_alpha = nn.Parameter(torch.full((num_classes,), math.log(math.e - 1.0)))

    @property
    def alpha(self) -> torch.Tensor:
        """(C,) attention temperatures (attention pooling only)."""
        return F.softplus(self.raw_alpha)

    def forward(self, logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.weights(logits, valid)
        return (weights * logits.masked_fill(~valid[..., None], 0.0)).sum(dim=1), weights

    def weights(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, K, C) pooling weights (module docstring); rows of padded windows are 0."""
        if not valid.any(dim=1).all():
            raise ValueError("every bag needs at least one valid window")
        v = valid[..., None].expand_as(logits)
        n = valid.sum(dim=1, keepdim=True)[..., None].to(logits.dtype)  # (B, 1, 1)
        if self.how == "mean":
            return v.to(logits.dtype) / n
        if self.how == "attention":
            scores = (self.alpha.to(logits.dtype) * logits).masked_fill(~v, -math.inf)
            return torch.softmax(scores, dim=1)
        k = torch.clamp(n, max=1 if self.how == "max" else self.topk)
        masked = logits.detach().masked_fill(~v, -math.inf)
        order = torch.argsort(masked, dim=1, descending=True, stable=True)
        rank = torch.argsort(order, dim=1, stable=True)  # 0 = the best window of that class
        return (rank < k).to(logits.dtype) / k

    def checkpoint_entry(self) -> dict[str, Any]:
        """What ``best.pt`` stores of this pooling (builtins and tensors: loads with weights_only=True)."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {"how": self.how, "topk": self.topk, "state": state}

    @classmethod
    def from_checkpoint_entry(cls, entry: dict[str, Any], num_classes: int) -> MilPooling:
        pool = cls(entry["how"], num_classes, entry["topk"])
        pool.load_state_dict(entry["state"])
        return pool


def bag_forward(model: nn.Module, pool: MilPooling, bag: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run `model` on the valid windows of (B, K, T) `bag` and pool them.

    Returns:
        ``{"clip_logits": (B, C) bag logits, "window_logits": (B, K, C) (0 where padded), "weights": (B, K, C)}``.
    """
    out = model(bag[valid])["clip_logits"]  # (N valid, C)
    window = out.new_zeros((*valid.shape, out.shape[-1]))
    window[valid] = out
    pooled, weights = pool(window, valid)
    return {"clip_logits": pooled, "window_logits": window, "weights": weights}


def mix_bags(bag: torch.Tensor, valid: torch.Tensor, target: torch.Tensor, alpha: float, rng: np.random.Generator,
             mask: torch.Tensor | None = None) -> tuple[MixedBatch, torch.Tensor]:
    """Mixup of whole bags: bag b with bag ``perm[b]``, window k with window k, and their targets.

    Draws `lam` then the permutation from `rng` exactly as :func:`~birdclef.data.augment.mix_batch`; a mixed
    window is valid where either bag's window is (a padded window is silence, so it holds the other's).

    Returns:
        (the :class:`MixedBatch` of (B, K, T) bags for :func:`~birdclef.data.augment.mixup_loss`, (B, K) valid).
    """
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(bag.shape[0])).to(bag.device)
    mixed = MixedBatch(lam * bag + (1.0 - lam) * bag[perm], target, target[perm], lam, mask,
                       None if mask is None else mask[perm])
    return mixed, valid | valid[perm]
