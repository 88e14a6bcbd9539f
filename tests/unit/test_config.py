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
