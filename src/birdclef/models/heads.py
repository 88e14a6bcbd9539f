"""Classifier heads on top of a timm backbone's unpooled feature map, registered by name.

A head maps ``feats`` (B, C, F', T') (channels, frequency, time) to a dict that always holds
``"clip_logits"`` (B, K); time-resolved heads add ``"frame_logits"`` (B, K, T').

- ``linear``: global average pool -> dropout -> linear (the baseline).
- ``conv``: 1x1 conv + BN + SiLU -> global average pool -> dropout -> linear. It reads the
  backbone's *last stage* map (``features_only``-style; :attr:`ConvHead.uses_last_stage`), so for
  EfficientNets it replaces the backbone's own ``conv_head`` (the reference's best own model).
- ``sed``: sound event detection head (PANNs / 1st-2023 ``AttHead``): attention pooling of
  per-frame class scores over time.

Example:
    >>> head = create_head("sed", in_features=1280, num_classes=182)
    >>> out = head(torch.randn(2, 1280, 4, 10))
    >>> out["clip_logits"].shape, out["frame_logits"].shape
    (torch.Size([2, 182]), torch.Size([2, 182, 10]))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from torch import nn

from birdclef.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")


def _check_feats(feats: torch.Tensor, in_features: int) -> None:
    if feats.dim() != 4 or feats.shape[1] != in_features:
        raise ValueError(f"head expects a (batch, {in_features}, freq, time) feature map, got {tuple(feats.shape)}")


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Average pool over frequency and time -> dropout -> linear.

    Args:
        in_features: channels C of the feature map.
        num_classes: K.
        drop_rate: dropout before the linear layer.
    """

    uses_last_stage = False

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.2):
        super().__init__()
        self.in_features = in_features
        self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, F', T') -> {"clip_logits": (B, K)}."""
        _check_feats(feats, self.in_features)
        return {"clip_logits": self.fc(self.drop(self.pool(feats)))}


@HEADS.register("conv")
class ConvHead(nn.Module):
    """1x1 conv + BN + SiLU on the last stage map -> average pool -> flatten -> dropout -> linear.

    DESIGN §4's ``conv`` head ("features_only last map -> 1x1 conv -> avg pool -> flatten ->
    linear"). BN and SiLU follow the conv because a 1x1 conv followed by average pooling and a
    linear layer is otherwise one linear map; this is the shape of EfficientNet's own
    ``conv_head`` + ``bn2``, which the head replaces.

    Args:
        in_features: channels C of the last stage map.
        num_classes: K.
        drop_rate: dropout before the linear layer.
        hidden_features: output channels of the 1x1 conv (default 512; EfficientNet-B0's own
            conv_head uses 1280).
    """

    uses_last_stage = True

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.2, hidden_features: int = 512):
        super().__init__()
        self.in_features = in_features
        self.conv = nn.Conv2d(in_features, hidden_features, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden_features)
        self.act = nn.SiLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_features, num_classes)

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, F', T') -> {"clip_logits": (B, K)}."""
        _check_feats(feats, self.in_features)
        x = self.pool(self.act(self.bn(self.conv(feats)))).flatten(1)  # (B, hidden)
        return {"clip_logits": self.fc(self.drop(x))}


@HEADS.register("sed")
class AttentionHead(nn.Module):
    """Sound event detection head: frame-wise class scores pooled by attention over time.

    mean over frequency -> max + avg smoothing over 3 frames -> dropout -> (Linear + ReLU, as in
    PANNs) -> dropout -> attention weights ``softmax_t(tanh(att(x)))`` and frame logits
    ``cla(x)`` (1x1 conv1d each) -> ``clip = sum_t weights * frame_logits``.

    Args:
        in_features: channels C of the feature map.
        num_classes: K.
        drop_rate: dropout before the fc layer and before the attention/class convs.
        use_fc: add the PANNs fc (C -> C) + ReLU layer before the attention.
    """

    uses_last_stage = False

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.2, use_fc: bool = True):
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, in_features) if use_fc else None
        self.att = nn.Conv1d(in_features, num_classes, kernel_size=1)
        self.cla = nn.Conv1d(in_features, num_classes, kernel_size=1)

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, F', T') -> {"clip_logits": (B, K), "frame_logits": (B, K, T')}."""
        _check_feats(feats, self.in_features)
        x = feats.mean(dim=2)  # (B, C, T'): pool frequency
        x = F.max_pool1d(x, 3, stride=1, padding=1) + F.avg_pool1d(x, 3, stride=1, padding=1)
        x = self.drop(x)
        if self.fc is not None:
            x = self.drop(F.relu(self.fc(x.transpose(1, 2))).transpose(1, 2))  # (B, C, T')
        weights = torch.softmax(torch.tanh(self.att(x)), dim=-1)  # (B, K, T'), sums to 1 over time
        frame_logits = self.cla(x)  # (B, K, T')
        clip_logits = (weights * frame_logits).sum(dim=-1)  # (B, K)
        return {"clip_logits": clip_logits, "frame_logits": frame_logits}


def create_head(name: str, in_features: int, num_classes: int, drop_rate: float = 0.2, **kwargs: Any) -> nn.Module:
    """Build a registered head.

    Args:
        name: ``linear``, ``conv`` or ``sed`` (see :func:`list_heads`).
        in_features: channels of the feature map the head receives.
        num_classes: number of output classes K.
        drop_rate: dropout before the final layer(s).
        **kwargs: head-specific options (``hidden_features`` for conv, ``use_fc`` for sed).

    Returns:
        An ``nn.Module`` mapping (B, C, F', T') to ``{"clip_logits": (B, K), ...}``.

    Raises:
        ConfigError: unknown `name`; the message lists the registered names.

    Example:
        >>> create_head("linear", 256, 10)(torch.randn(2, 256, 2, 5))["clip_logits"].shape
        torch.Size([2, 10])
    """
    return HEADS.create(name, in_features, num_classes, drop_rate=drop_rate, **kwargs)


def head_uses_last_stage(name: str) -> bool:
    """Whether head `name` reads the backbone's last stage map instead of ``forward_features``."""
    return bool(getattr(HEADS.get(name), "uses_last_stage", False))


def list_heads() -> list[str]:
    """Registered head names, sorted."""
    return HEADS.names()
