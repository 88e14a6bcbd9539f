"""Heads, BirdClassifier, pretrained loading and checkpoints, on tiny timm test backbones (CPU, seconds)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch import nn

from birdclef.config import Config, FrontendConfig, ModelConfig
from birdclef.errors import BirdclefError, ConfigError
from birdclef.models import (BirdClassifier, CheckpointError, PretrainedWeightsError, create_head, create_model,
                             list_heads, load_checkpoint, save_checkpoint)

SR = 32_000
NUM_CLASSES = 5
FRONTEND = FrontendConfig(n_fft=512, hop_length=256, n_mels=64)  # 1 s -> (64 mels, 126 frames)


def tiny_config(backbone: str = "test_efficientnet", head: str = "linear", **kw) -> ModelConfig:
    return ModelConfig(backbone=backbone, head=head, pretrained=False, frontend=FRONTEND, **kw)


def waves(batch: int = 2, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SR), generator=gen)  # (B, T)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Any Hugging Face download fails at once (no network wait), with an empty cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


# ---------------------------------------------------------------- heads


def test_sed_clip_logits_are_an_attention_average_of_frame_logits():
    torch.manual_seed(0)
    head = create_head("sed", in_features=16, num_classes=3, drop_rate=0.0).eval()
    out = head(torch.randn(2, 16, 4, 7))  # (B, C, F', T')
    clip, frames = out["clip_logits"], out["frame_logits"]
    assert clip.shape == (2, 3) and frames.shape == (2, 3, 7)
    assert (clip <= frames.amax(-1) + 1e-6).all() and (clip >= frames.amin(-1) - 1e-6).all()


def test_linear_head_is_a_linear_map_of_the_mean_feature():
    torch.manual_seed(0)
    head = create_head("linear", in_features=8, num_classes=3).eval()
    feats = torch.randn(2, 8, 3, 5)
    expected = head.fc(feats.mean(dim=(2, 3)))
    torch.testing.assert_close(head(feats)["clip_logits"], expected)


def test_head_rejects_a_feature_map_of_the_wrong_width():
    with pytest.raises(ValueError, match="feature map"):
        create_head("conv", in_features=8, num_classes=3)(torch.randn(2, 9, 3, 5))


def test_unknown_head_lists_the_registered_names():
    assert list_heads() == ["conv", "linear", "sed"]
    with pytest.raises(ConfigError, match=r"\['conv', 'linear', 'sed'\]"):
        create_model(tiny_config(head="gem_pool"), NUM_CLASSES)


def test_unknown_backbone_suggests_close_timm_names():
    with pytest.raises(ConfigError, match="efficientnet_b0"):
        create_model(tiny_config(backbone="effcientnet_b0"), NUM_CLASSES)
    with pytest.raises(ConfigError, match="test_efficientnet.r160_in1k"):
        create_model(tiny_config(backbone="test_efficientnet.in22k"), NUM_CLASSES)


# ---------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("backbone,head", [
    ("test_efficientnet", "linear"), ("test_efficientnet", "conv"), ("test_efficientnet", "sed"),
    ("test_resnet", "sed"), ("test_nfnet", "conv"),
])
def test_forward_shapes_and_backward_reaches_every_parameter(backbone, head):
    torch.manual_seed(0)
    model = create_model(tiny_config(backbone, head), NUM_CLASSES).train()
    out = model(waves())
    assert out["clip_logits"].shape == (2, NUM_CLASSES) and torch.isfinite(out["clip_logits"]).all()
    if head == "sed":
        assert out["frame_logits"].shape[:2] == (2, NUM_CLASSES) and torch.isfinite(out["frame_logits"]).all()
    target = torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0]])
    F.binary_cross_entropy_with_logits(out["clip_logits"], target).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    # Some backbones zero-init residual gains (ResNet's last BN, NFNet's skipinit), so their inner
    # gradients may start at 0; the stem and the head must get a signal through everything.
    stem = f"backbone.{model.backbone.pretrained_cfg['first_conv']}.weight"
    nonzero = {n for n, p in params if p.grad.abs().sum() > 0}
    assert stem in nonzero and {n for n, _ in params if n.startswith("head.")} <= nonzero


def test_conv_head_replaces_the_backbone_conv_head():
    model = create_model(tiny_config(head="conv"), NUM_CLASSES)
    assert isinstance(model.backbone.conv_head, nn.Identity)  # pruned: the head's 1x1 conv takes its place
    last_stage = timm.create_model("test_efficientnet", features_only=True, in_chans=1).feature_info.channels()[-1]
    assert model.head.in_features == last_stage != timm.create_model("test_efficientnet").num_features


def test_eval_is_deterministic_and_train_is_not():
    torch.manual_seed(0)
    model = create_model(tiny_config(head="sed", drop_rate=0.5), NUM_CLASSES)
    wave = waves()
    model.eval()
    with torch.no_grad():
        first, second = model(wave)["clip_logits"], model(wave)["clip_logits"]
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_mel(wave), model.frontend(wave), rtol=0, atol=0)  # no SpecAugment
        model.train()
        assert not torch.equal(model(wave)["clip_logits"], model(wave)["clip_logits"])


def test_predict_proba_is_sigmoid_in_eval_and_restores_the_mode():
    torch.manual_seed(0)
    model = create_model(tiny_config(head="conv"), NUM_CLASSES).train()
    probs = model.predict_proba(waves())
    assert model.training and not probs.requires_grad
    model.eval()
    torch.testing.assert_close(probs, torch.sigmoid(model(waves())["clip_logits"]))
    assert ((probs > 0) & (probs < 1)).all()


def test_backbone_without_drop_path_rate_is_retried_without_it(monkeypatch):
    real_create = timm.create_model

    def strict_create(name, **kwargs):
        if "drop_path_rate" in kwargs:
            raise TypeError("__init__() got an unexpected keyword argument 'drop_path_rate'")
        return real_create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", strict_create)
    model = create_model(tiny_config(), NUM_CLASSES)
    assert model(waves()).keys() == {"clip_logits"}


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, offline_hub):
    torch.manual_seed(0)
    # The stored config says pretrained=True, as a real run's would; loading must not download.
    config = Config(model=dataclasses.replace(tiny_config(head="sed"), pretrained=True))
    model = create_model(dataclasses.replace(config.model, pretrained=False), NUM_CLASSES).eval()
    classes = ["amerob", "bkcchi", "comrav", "houspa", "norcar"]
    path = save_checkpoint(tmp_path / "fold0" / "best.pt", model, config, classes, epoch=3, score=0.75,
                           extra={"fold": 0})
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temporary file left
    raw = torch.load(path, weights_only=True)
    assert {"model", "config", "classes", "epoch", "score", "kind", "fold"} == set(raw) and raw["kind"] == "torch"

    loaded = load_checkpoint(path)
    assert not loaded.model.training
    assert (loaded.classes, loaded.config, loaded.epoch, loaded.score) == (classes, config, 3, 0.75)
    assert loaded.extra == {"fold": 0}
    with torch.no_grad():
        expected, actual = model(waves()), loaded.model(waves())
    for key in ("clip_logits", "frame_logits"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


def test_save_checkpoint_checks_classes_and_extra(tmp_path):
    model = create_model(tiny_config(), NUM_CLASSES)
    with pytest.raises(ValueError, match="5 outputs"):
        save_checkpoint(tmp_path / "a.pt", model, Config(), ["a", "b"], epoch=0, score=None)
    with pytest.raises(ValueError, match="reuse"):
        save_checkpoint(tmp_path / "a.pt", model, Config(), list("abcde"), epoch=0, score=None, extra={"score": 1})
    assert not (tmp_path / "a.pt").exists()


def test_missing_corrupt_and_foreign_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(BirdclefError, match="missing keys"):
        load_checkpoint(foreign)


def test_checkpoint_whose_weights_do_not_fit_its_config(tmp_path):
    config = Config(model=tiny_config())
    path = save_checkpoint(tmp_path / "best.pt", create_model(config.model, NUM_CLASSES), config,
                           list("abcde"), epoch=0, score=None)
    raw = torch.load(path, weights_only=True)
    raw["classes"] = list("abc")  # 3 names for 5 output rows
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


# ---------------------------------------------------------------- pretrained weights


def save_rgb_backbone(path: Path, name: str = "test_efficientnet", wrap: bool = True) -> dict[str, torch.Tensor]:
    """A 3-channel timm model with its classifier, saved as training scripts do; returns its state dict."""
    torch.manual_seed(123)
    state = timm.create_model(name, pretrained=False).state_dict()
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 9} if wrap else state, path)
    return state


@pytest.mark.parametrize("filename", ["rgb.pth", "rgb.safetensors"])
def test_pretrained_path_loads_a_local_rgb_checkpoint(tmp_path, filename, offline_hub):
    file_state = save_rgb_backbone(tmp_path / filename)
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_config(), pretrained=True, pretrained_path=str(tmp_path / filename))
    own = create_model(cfg, NUM_CLASSES).backbone.state_dict()
    torch.testing.assert_close(own["conv_stem.weight"], file_state["conv_stem.weight"].sum(dim=1, keepdim=True))
    same = [k for k in own if k != "conv_stem.weight"]
    assert len(same) == len(own) - 1 and all(k in file_state for k in same)
    for key in same:
        torch.testing.assert_close(own[key], file_state[key], rtol=0, atol=0, msg=key)


def test_pretrained_path_then_conv_head_prunes_after_loading(tmp_path):
    file_state = save_rgb_backbone(tmp_path / "rgb.pth", wrap=False)
    cfg = dataclasses.replace(tiny_config(head="conv"), pretrained=True, pretrained_path=str(tmp_path / "rgb.pth"))
    own = create_model(cfg, NUM_CLASSES).backbone.state_dict()
    assert "conv_head.weight" not in own
    torch.testing.assert_close(own["blocks.0.0.conv.weight"], file_state["blocks.0.0.conv.weight"])


def test_pretrained_path_of_another_architecture_is_rejected(tmp_path):
    save_rgb_backbone(tmp_path / "resnet.pth", name="test_resnet")
    cfg = dataclasses.replace(tiny_config(), pretrained=True, pretrained_path=str(tmp_path / "resnet.pth"))
    with pytest.raises(PretrainedWeightsError, match=r"resnet\.pth: only \d+ of \d+ backbone weights"):
        create_model(cfg, NUM_CLASSES)
    with pytest.raises(PretrainedWeightsError, match="missing.pth: pretrained weights file not found"):
        create_model(dataclasses.replace(cfg, pretrained_path=str(tmp_path / "missing.pth")), NUM_CLASSES)


def test_hub_download_failure_says_how_to_work_offline(offline_hub):
    cfg = dataclasses.replace(tiny_config(), pretrained=True)  # test_efficientnet has hub weights
    with pytest.raises(PretrainedWeightsError) as info:
        create_model(cfg, NUM_CLASSES)
    message = str(info.value)
    assert "'test_efficientnet' could not be downloaded" in message
    for fix in ("model.pretrained_path=/path/to/weights", "model.pretrained=false", "Hugging Face cache"):
        assert fix in message
    assert isinstance(info.value, BirdclefError)


def test_pretrained_backbone_without_hub_weights_is_a_config_problem():
    cfg = dataclasses.replace(tiny_config(backbone="test_mambaout"), pretrained=True)  # timm ships no weights
    with pytest.raises(PretrainedWeightsError, match="no pretrained weights for backbone 'test_mambaout'"):
        create_model(cfg, NUM_CLASSES)


def test_channels_last_backbone_output_is_transposed_for_the_head():
    torch.manual_seed(0)
    model = create_model(tiny_config(backbone="test_mambaout", head="sed"), NUM_CLASSES).eval()
    assert model.backbone.output_fmt == "NHWC"
    feats = model.forward_features(waves())
    assert feats.shape[1] == model.backbone.num_features  # (B, C, F', T')
    assert model(waves())["frame_logits"].shape[:2] == (2, NUM_CLASSES)


def test_pretrained_path_accepts_a_birdclef_checkpoint(tmp_path):
    """A previous run's best.pt seeds a new model's backbone (e.g. the next noisy-student round)."""
    torch.manual_seed(1)
    config = Config(model=tiny_config(head="sed"))
    teacher = create_model(config.model, NUM_CLASSES)
    path = save_checkpoint(tmp_path / "best.pt", teacher, config, list("abcde"), epoch=0, score=None)
    torch.manual_seed(2)
    student = create_model(dataclasses.replace(tiny_config(), pretrained=True, pretrained_path=str(path)), 3)
    for key, value in teacher.backbone.state_dict().items():
        torch.testing.assert_close(student.backbone.state_dict()[key], value, rtol=0, atol=0, msg=key)
