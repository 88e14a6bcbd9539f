from pathlib import Path

import pytest

from birdclef.config import (
    Config,
    FrontendConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    merge_config,
    parse_override,
)
from birdclef.errors import ConfigError


def test_defaults_carry_the_design_numbers():
    cfg = Config()
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.epochs) == (5e-4, 1e-5, 32, 10)
    assert (cfg.data.n_folds, cfg.data.fold_seed, cfg.train.mixup_alpha) == (5, 42, 0.5)
    assert (cfg.model.drop_rate, cfg.model.drop_path_rate) == (0.2, 0.2)
    assert cfg.infer.smoothing_middle == (0.2, 0.6, 0.2) and cfg.infer.smoothing_edge == (0.9, 0.1)


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["train.lr=3e-4", "train.folds=[0, 2]", "model.pretrained=false",
                             "model.frontend.n_mels=64", "data.max_files=24"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.folds == (0, 2)
    assert cfg.model.pretrained is False
    assert cfg.model.frontend.n_mels == 64 and cfg.data.max_files == 24


def test_single_value_becomes_a_one_item_tuple():
    assert load_config(None, ["train.folds=3"]).train.folds == (3,)


def test_unknown_key_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'.*'lr'"):
        load_config(None, ["train.lrr=1"])


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="data.strategy"):
        load_config(None, ["data.strategy=loudest"])
    with pytest.raises(ConfigError, match="train.mixup_prob"):
        load_config(None, ["train.mixup_prob=1.5"])


def test_yaml_file_then_overrides(tmp_path: Path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  backbone: eca_nfnet_l0\n  head: sed\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=5"])
    assert (cfg.model.backbone, cfg.model.head, cfg.train.epochs) == ("eca_nfnet_l0", "sed", 5)


def test_missing_and_malformed_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_dump_round_trips():
    cfg = load_config(None, ["model.head=conv", "infer.power_tiers=[[100, 2.0], [150, 3.0]]"])
    import yaml

    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert config_to_dict(again)["model"]["head"] == "conv"


def test_merge_with_dict_and_presets():
    cfg = merge_config(Config(), {"model": {"frontend": config_to_dict(FrontendConfig.preset("v3"))}})
    assert (cfg.model.frontend.n_fft, cfg.model.frontend.n_mels, cfg.model.frontend.f_min) == (2048, 512, 20.0)
    with pytest.raises(ConfigError, match="preset"):
        FrontendConfig.preset("v9")


def test_parse_override_requires_equals():
    with pytest.raises(ConfigError):
        parse_override("train.lr")
    assert parse_override("a.b.c=1") == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(("override", "key"), [
    (["infer.batch_size=0"], "infer.batch_size"),
    (["infer.power_rest=0"], "infer.power_rest"),
    (["infer.power_keep_top=-1"], "infer.power_keep_top"),
    (["infer.power_tiers=[[20, 2.0]]"], "infer.power_tiers"),  # a tier rank below power_keep_top=30
    (["infer.power_tiers=[[100, 0.0]]"], "infer.power_tiers"),
    (["infer.smoothing_middle=[0.2, -0.6, 0.2]"], "infer.smoothing_middle"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.epochs=-1"], "train.epochs"),
    (["train.lr=0"], "train.lr"),
    (["train.min_lr=1e-3"], "train.min_lr"),  # above lr
    (["train.weight_decay=-1e-5"], "train.weight_decay"),
    (["train.focal_gamma=-1"], "train.focal_gamma"),
    (["train.focal_alpha=1.5"], "train.focal_alpha"),
    (["train.background_prob=-0.1"], "train.background_prob"),
    (["train.background_gain=[0.5, 0.1]"], "train.background_gain"),
    (["train.background_max_files=0"], "train.background_max_files"),
    (["train.num_workers=-1"], "train.num_workers"),
    (["train.devices=0"], "train.devices"),
    (["train.folds=[]"], "train.folds"),
    (["train.folds=[0, 0]"], "train.folds"),
    (["train.folds=[5]"], "train.folds"),  # data.n_folds=5
    (["data.n_folds=3", "train.folds=[0, 3]"], "train.folds"),
    (["train.mixup_target=sum"], "train.mixup_target"),
    (["data.max_files=0"], "data.max_files"),
    (["data.window_s=0"], "data.window_s"),
    (["data.max_clip_s=0"], "data.max_clip_s"),
    (["data.secondary_label_weight=2"], "data.secondary_label_weight"),
    (["data.n_folds=1"], "data.n_folds"),
    (["model.frontend.n_mels=0"], "model.frontend.n_mels"),
    (["model.frontend.image_size=0"], "model.frontend.image_size"),
    (["model.frontend.top_db=-80"], "model.frontend.top_db"),
    (["model.spec_augment.time_mask_prob=1.5"], "model.spec_augment.time_mask_prob"),
    (["model.spec_augment.freq_masks=[3, 1]"], "model.spec_augment.freq_masks"),
    (["model.spec_augment.time_mask_frames=[0, 5]"], "model.spec_augment.time_mask_frames"),
    (["model.spec_augment.gain=[1.2, 0.8]"], "model.spec_augment.gain"),
    (["model.drop_rate=1.0"], "model.drop_rate"),
])
def test_invalid_values_are_config_errors_naming_the_key(override: list[str], key: str):
    with pytest.raises(ConfigError, match=f"^{key.replace('.', '[.]')} "):
        load_config(None, override)


def test_data_sample_rate_is_the_one_source_of_the_audio_rate(tmp_path: Path):
    cfg = load_config(None, ["data.sample_rate=16000", "model.frontend.f_max=8000"])
    assert cfg.model.frontend.sample_rate == 16_000
    path = tmp_path / "rate.yaml"
    path.write_text("data:\n  sample_rate: 22050\nmodel:\n  frontend:\n    f_max: 11000\n")
    assert load_config(path).model.frontend.sample_rate == 22_050
    again = merge_config(cfg, ["data.sample_rate=24000"])  # a resolved config follows a later override too
    assert again.model.frontend.sample_rate == 24_000
    with pytest.raises(ConfigError, match=r"model.frontend.sample_rate \(32000\) must equal data.sample_rate \(16000\)"):
        load_config(None, ["data.sample_rate=16000", "model.frontend.sample_rate=32000", "model.frontend.f_max=8000"])
    with pytest.raises(ConfigError, match="must equal data.sample_rate"):
        config_from_dict({"model": {"frontend": {"sample_rate": 16_000, "f_max": 8_000.0}}})


def test_full_config_dicts_still_round_trip_with_a_matching_rate():
    cfg = load_config(None, ["data.sample_rate=16000", "model.frontend.f_max=8000"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_birdnet_backbone_rules() -> None:
    cfg = load_config(None, ["model.backbone=birdnet", "data.sample_rate=48000", "model.freeze_backbone=true"])
    assert cfg.model.frontend.sample_rate == 48_000 and cfg.model.freeze_backbone and cfg.model.init_from_birdnet
    with pytest.raises(ConfigError, match="data.sample_rate must be 48000 with model.backbone=birdnet"):
        load_config(None, ["model.backbone=birdnet"])
    with pytest.raises(ConfigError, match="model.freeze_backbone is only supported with model.backbone birdnet or "
                                          "foundation"):
        load_config(None, ["model.freeze_backbone=true"])


def test_foundation_head_rules() -> None:
    cfg = load_config(None, ["model.backbone=foundation", "model.freeze_backbone=true",
                             "model.foundation=[birdnet,perch-v2:/m/perch_v2.onnx]", "data.sample_rate=32000"])
    assert cfg.model.foundation == ("birdnet", "perch-v2:/m/perch_v2.onnx")
    assert load_config(None, ["model.backbone=foundation", "model.freeze_backbone=true",
                              "model.foundation=placeholder"]).model.foundation == ("placeholder",)
    with pytest.raises(ConfigError, match="model.backbone foundation is a head on frozen foundation models"):
        load_config(None, ["model.backbone=foundation"])
    with pytest.raises(ConfigError, match="model.foundation names the frozen model"):
        load_config(None, ["model.foundation=[placeholder]"])
    with pytest.raises(ConfigError, match="names a model twice"):
        load_config(None, ["model.backbone=foundation", "model.freeze_backbone=true",
                           "model.foundation=[placeholder,placeholder]"])


def test_student_config_is_the_measured_distill_student():
    """configs/student-lite0.yaml is what the issue-21 rounds measured: distill-lite0.yaml without a teacher, 12 epochs,
    4 pseudo windows per clip (the distillation-only keys, unused without a teacher, left out)."""
    root = Path(__file__).resolve().parents[2] / "configs"
    measured = config_to_dict(load_config(root / "distill-lite0.yaml", ["train.distill_teacher=null", "train.epochs=12",
                                                                        "train.pseudo_ratio=4"]))
    student = config_to_dict(load_config(root / "student-lite0.yaml"))
    assert student["train"]["distill_teacher"] is None and student["train"]["pseudo_ratio"] == 4
    for config in (measured, student):
        config["train"] = {k: v for k, v in config["train"].items() if not k.startswith("distill_") and k != "embed_copies"}
    assert student == measured
