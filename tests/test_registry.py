"""Every registered name has its config, its implementation and a preset; every preset and pipeline loads."""
from pathlib import Path

import pytest

from medalign import config
from medalign.models import tuning
from medalign.pipeline import spec

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*/*.yaml"))


def _presets(stage: str) -> list[dict]:
    return [config.read_yaml(p) for p in PRESETS if p.parent.name == stage]


def test_every_ssl_method_has_a_config_a_builder_and_a_preset():
    from medalign import ssl
    assert set(ssl.BUILDERS.names()) == set(config.METHODS.names())
    used = {p.get("method", {}).get("name") for p in _presets("pretrain")}
    assert set(config.METHODS.names()) <= used


def test_every_adapter_and_tuning_has_a_config_a_builder_and_a_preset():
    assert set(tuning.BUILDERS.names()) == set(config.ADAPTERS.names()) | set(config.TUNINGS.names())
    used = {p.get("adapter", {}).get("name") for p in _presets("finetune")}
    assert set(config.ADAPTERS.names()) <= used


def test_every_stage_has_a_module_with_run():
    import importlib
    for name, stage in config.STAGES.items():
        module = importlib.import_module(f"medalign.stages.{name.replace('-', '_')}")
        assert callable(module.run), name


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_preset_loads_through_the_config_layer(path):
    stage = config.STAGES[path.parent.name]
    cfg = config.load(stage.config, path, ["data.manifest=m.csv"])
    assert config.semantic(cfg)


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_loads(path):
    pipeline = spec.load(path)
    assert [s.name for s in pipeline.steps]


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        config.ADAPTERS.register("lora")(config.LoraAdapter)
