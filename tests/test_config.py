import pytest
import yaml

from medalign import config
from medalign.config import FinetuneConfig, PretrainConfig
from medalign.errors import ConfigError


def test_yaml_and_overrides_combine(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: {manifest: m.csv}\noptim: {lr: 0.1, epochs: 3}\n")
    cfg = config.load(FinetuneConfig, f, ["optim.lr=1e-3", "adapter.r=16"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.epochs == 3 and cfg.adapter.r == 16
    assert cfg.adapter.name == "lora"  # the default adapter keeps its tag when only r is set


def test_union_member_switches_by_name():
    cfg = config.load(PretrainConfig, None, ["data.manifest=m.csv", "method.name=simclr", "method.temperature=0.2"])
    assert cfg.method.name == "simclr" and cfg.method.temperature == 0.2


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data: {manifest: m.csv}\noptim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        config.load(FinetuneConfig, f)
    msg = str(e.value)
    assert "optim.lrr" in msg and "unknown key" in msg and str(f) in msg and "did you mean 'lr'" in msg
    assert "\n" not in msg and e.value.exit_code == 2


def test_wrong_type_and_override_origin():
    with pytest.raises(ConfigError) as e:
        config.load(FinetuneConfig, None, ["data.manifest=m.csv", "optim.epochs=many"])
    assert "optim.epochs" in str(e.value) and "command line" in str(e.value) and "'many'" in str(e.value)


def test_missing_required_key():
    with pytest.raises(ConfigError, match="data: required but not set"):
        config.load(FinetuneConfig, None, [])


@pytest.mark.parametrize("overrides", [["optim.lr"], ["optim=3", "optim.lr=0.1"], ["~optim.nothing"]])
def test_malformed_overrides(overrides):
    with pytest.raises(ConfigError):
        config.load(FinetuneConfig, None, ["data.manifest=m.csv", *overrides])


def test_partial_section_keeps_stage_defaults():
    """Setting one optim key must not reset the stage's other optim defaults to the generic ones."""
    cfg = config.load(FinetuneConfig, None, ["data.manifest=m.csv", "optim.epochs=3"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.augment.crop_scale) == (1e-3, 0.01, (0.7, 1.0))


def test_delete_override_restores_default():
    cfg = config.load(FinetuneConfig, None, ["data.manifest=m.csv", "optim.lr=0.5", "~optim.lr"])
    assert cfg.optim.lr == 1e-3


def test_invalid_yaml_is_one_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(FinetuneConfig, f)


def test_semantic_drops_cosmetic_fields_and_dump_keeps_them():
    cfg = config.load(FinetuneConfig, None, ["data.manifest=m.csv", "runtime.num_workers=4"])
    assert "num_workers" not in config.semantic(cfg)["runtime"]
    assert "device" not in config.semantic(cfg)["runtime"]
    assert yaml.safe_load(config.dump(cfg))["runtime"]["num_workers"] == 4


def test_describe_lists_every_leaf_key():
    lines = "\n".join(config.describe(PretrainConfig))
    for key in ("optim.lr", "method.name", "method.temperature", "data.manifest", "backbone.checkpoint"):
        assert f"  {key}  " in lines
