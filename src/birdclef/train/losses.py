"""Multi-label classification losses, registered by name (``train.loss`` in the config).

Every loss is called as ``loss(logits, target, sample_weight=None, mask=None)``:

- ``logits``: (B, K) raw scores; ``target``: (B, K) in [0, 1]. Soft targets (mixup blends,
  distillation probabilities, secondary-label weights) are used as they are.
- ``sample_weight``: optional (B,) non-negative weights (e.g. xeno-canto rating). The result is
  the weighted mean over samples, ``sum_b w_b * l_b / sum_b w_b``, where ``l_b`` is the mean over
  classes, so the loss scale does not depend on the weights' scale. Without weights it is the
  plain mean over all B * K elements.
- ``mask``: optional (B, K) bool / 0-1: False marks a target nobody knows (a class the pseudo-label
  teacher cannot score). Masked elements contribute no loss and do not count in the mean: the result
  is ``sum_bk w_b m_bk l_bk / sum_bk w_b m_bk`` (without a mask, the formula above).

Example:
    >>> loss_fn = create_loss("focal_bce", alpha=0.25, gamma=2.0)
    >>> loss = loss_fn(torch.zeros(2, 3), torch.ones(2, 3))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from birdclef.config import TrainConfig
from birdclef.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


def weighted_mean(elementwise: torch.Tensor, sample_weight: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a (B, K) element-wise loss to a scalar.

    Args:
        elementwise: (B, K) loss per sample and class.
        sample_weight: optional (B,) non-negative weights.
        mask: optional (B, K): nonzero where the target is known; masked elements count for nothing.

    Returns:
        Scalar: ``sum_bk w_b m_bk l_bk / sum_bk w_b m_bk`` (w = 1, m = 1 when not given); 0 when every
        element is masked.

    Raises:
        ValueError: `sample_weight` is not of shape (B,) or `mask` not of shape (B, K).
    """
    if sample_weight is None and mask is None:
        return elementwise.mean()
    weight = torch.ones_like(elementwise)
    if sample_weight is not None:
        if sample_weight.shape != elementwise.shape[:1]:
            raise ValueError(f"sample_weight must have shape ({elementwise.shape[0]},), "
                             f"got {tuple(sample_weight.shape)}")
        weight = weight * sample_weight.to(elementwise.dtype)[:, None]
    if mask is not None:
        if mask.shape != elementwise.shape:
            raise ValueError(f"mask must have shape {tuple(elementwise.shape)}, got {tuple(mask.shape)}")
        weight = weight * mask.to(elementwise.dtype)
    return (weight * elementwise).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).eps)


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape != target.shape:
        raise ValueError(f"expected (batch, classes) logits and a target of the same shape, "
                         f"got {tuple(logits.shape)} and {tuple(target.shape)}")


def sigmoid_focal_elementwise(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
                              gamma: float = 2.0) -> torch.Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017; ``torchvision.ops.sigmoid_focal_loss``).

    ``FL = alpha_t * (1 - p_t) ** gamma * BCE`` with ``p_t = p * t + (1 - p) * (1 - t)`` and
    ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``; ``alpha < 0`` disables the alpha balance, and
    ``gamma = 0, alpha = -1`` gives plain BCE. Soft targets enter both formulas linearly.

    Args:
        logits: (B, K) raw scores.
        target: (B, K) targets in [0, 1].
        alpha: weight of positives in (0, 1), or negative for none.
        gamma: focusing exponent >= 0.

    Returns:
        (B, K) loss per element.
    """
    target = target.to(logits.dtype)
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


@LOSSES.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy with logits, mean over elements (or sample-weighted, see module doc)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) logits and targets, optional (B,) weights and (B, K) mask -> scalar loss."""
        _check_shapes(logits, target)
        bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
        return weighted_mean(bce, sample_weight, mask)


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Sigmoid focal loss, mean over elements (or sample-weighted).

    Args:
        alpha: weight of positives; negative disables it.
        gamma: focusing exponent.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) logits and targets, optional (B,) weights and (B, K) mask -> scalar loss."""
        _check_shapes(logits, target)
        return weighted_mean(sigmoid_focal_elementwise(logits, target, self.alpha, self.gamma), sample_weight, mask)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"


@LOSSES.register("focal_bce")
class FocalBCELoss(nn.Module):
    """``bce_weight * BCE + focal_weight * focal`` (the reference's FocalLossBCE: 0.6 and 1.4).

    Args:
        alpha: focal alpha (0.25).
        gamma: focal gamma (2).
        bce_weight: weight of the BCE term.
        focal_weight: weight of the focal term.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, bce_weight: float = 0.6, focal_weight: float = 1.4):
        super().__init__()
        self.bce = BCELoss()
        self.focal = FocalLoss(alpha, gamma)
        self.bce_weight, self.focal_weight = bce_weight, focal_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) logits and targets, optional (B,) weights and (B, K) mask -> scalar loss."""
        return (self.bce_weight * self.bce(logits, target, sample_weight, mask)
                + self.focal_weight * self.focal(logits, target, sample_weight, mask))

    def extra_repr(self) -> str:
        return f"bce_weight={self.bce_weight}, focal_weight={self.focal_weight}"


def create_loss(name: str, **kwargs: float) -> nn.Module:
    """Build a registered loss by name.

    Args:
        name: ``bce``, ``focal`` or ``focal_bce`` (see :func:`list_losses`).
        **kwargs: the loss's own arguments, e.g. ``alpha``, ``gamma``, ``bce_weight``, ``focal_weight``.

    Returns:
        An ``nn.Module`` called as ``loss(logits, target, sample_weight=None, mask=None)``.

    Raises:
        ConfigError: unknown `name`; the message lists the registered names.

    Example:
        >>> round(create_loss("bce")(torch.zeros(1, 2), torch.zeros(1, 2)).item(), 4)  # log(2)
        0.6931
    """
    return LOSSES.create(name, **kwargs)


def loss_from_config(cfg: TrainConfig) -> nn.Module:
    """The loss named by ``cfg.loss``, with ``cfg.focal_alpha`` / ``cfg.focal_gamma`` for focal losses."""
    kwargs = {"alpha": cfg.focal_alpha, "gamma": cfg.focal_gamma} if cfg.loss in ("focal", "focal_bce") else {}
    return create_loss(cfg.loss, **kwargs)


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return LOSSES.names()
