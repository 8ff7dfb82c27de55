"""Cache keys change when, and only when, something that determines the output changes."""
import json
import os

import pytest

from medalign.errors import ConfigError
from medalign.pipeline import cache, runner, spec


def keys(path, *overrides):
    return {p.step.name: p.key for p in runner.plan(spec.load(path, list(overrides)))}


def test_same_pipeline_same_keys(tiny_pipeline):
    assert keys(tiny_pipeline) == keys(tiny_pipeline)


def test_cosmetic_fields_do_not_change_keys(tiny_pipeline):
    assert keys(tiny_pipeline, "pretrain.runtime.num_workers=3", "finetune.runtime.device=cpu") == keys(tiny_pipeline)


def test_a_finetune_value_changes_finetune_and_evaluate_only(tiny_pipeline):
    before, after = keys(tiny_pipeline), keys(tiny_pipeline, "finetune.optim.lr=0.002")
    assert [s for s in before if before[s] != after[s]] == ["finetune", "evaluate"]


def test_upstream_change_propagates_downstream(tiny_pipeline):
    before, after = keys(tiny_pipeline), keys(tiny_pipeline, "data.seed=2")
    assert all(before[s] != after[s] for s in before)


def test_version_is_part_of_the_key(tiny_pipeline, monkeypatch):
    before = keys(tiny_pipeline)
    monkeypatch.setattr(cache, "__version__", "999")
    assert all(k != before[s] for s, k in keys(tiny_pipeline).items())


def test_outside_manifest_is_fingerprinted(tmp_path, demo_set):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"workdir: {tmp_path / 'w'}\nsteps:\n  pretrain:\n    config:\n"
                        f"      data: {{manifest: {demo_set}}}\n")
    k0 = keys(pipeline)["pretrain"]
    image = demo_set.parent / "images" / "img_00001.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    k1 = keys(pipeline)["pretrain"]
    demo_set.write_text(demo_set.read_text().replace("train", "val", 1))
    k2 = keys(pipeline)["pretrain"]
    assert len({k0, k1, k2}) == 3
    assert keys(pipeline)["pretrain"] == k2  # and stable when nothing changes


def test_status_names_the_changed_field(tiny_pipeline, tmp_path):
    # fake a completed finetune output for the current key, then change one value
    planned = {p.step.name: p for p in runner.plan(spec.load(tiny_pipeline))}
    done = planned["finetune"]
    done.out.mkdir(parents=True)
    (done.out / "key.json").write_text(json.dumps(done.record))
    (done.out / "COMPLETE").write_text("")
    again = {p.step.name: p for p in runner.plan(spec.load(tiny_pipeline))}
    after = {p.step.name: p for p in runner.plan(spec.load(tiny_pipeline, ["finetune.optim.lr=0.003"]))}
    assert again["finetune"].cached and not after["finetune"].cached
    assert "optim.lr 0.001 -> 0.003" in after["finetune"].reason
    assert after["evaluate"].reason == "never run"
    assert after["data"].reason == "never run"


@pytest.mark.parametrize("text, message", [
    ("steps:\n  a: {stage: nope}\n", "unknown stage 'nope'"),
    ("steps:\n  evaluate: {config: {model: '${ghost}', data: {manifest: m.csv}}}\n", "unknown step"),
    ("steps:\n  finetune: {config: {data: {manifest: '${evaluate}'}, backbone: {checkpoint: x}}}\n"
     "  evaluate: {config: {model: '${finetune}', data: {manifest: m.csv}}}\n", "cycle"),
    ("stepz: {}\n", "unknown top-level key"),
    ("steps:\n  evaluate: {config: {model: m, data: {manifest: m.csv}, extra: 1}}\n", "extra: unknown key"),
])
def test_bad_pipelines_are_config_errors(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        spec.load(path)


def test_override_must_name_a_step(tiny_pipeline):
    with pytest.raises(ConfigError, match="STEP.key=value"):
        spec.load(tiny_pipeline, ["optim.lr=0.1"])
