"""Cache keys change when, and only when, something that determines the output changes."""
import json
import os
import socket

import pytest

import medalign
from medalign.errors import ConfigError
from medalign.pipeline import cache, lock, runner, spec, store


def keys(path, *overrides):
    return {p.step.name: p.key for p in runner.plan(spec.load(path, list(overrides)))}


def test_same_pipeline_same_keys(tiny_pipeline):
    assert keys(tiny_pipeline) == keys(tiny_pipeline)


def test_cosmetic_fields_do_not_change_keys(tiny_pipeline):
    assert keys(tiny_pipeline, "pretrain.runtime.num_workers=3", "finetune.runtime.device=cpu",
                "finetune.runtime.channels_last=false") == keys(tiny_pipeline)


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


def test_relative_and_absolute_spellings_of_an_input_give_one_key(tmp_path, demo_set, monkeypatch):
    monkeypatch.chdir(demo_set.parent)
    pipeline = tmp_path / "p.yaml"
    found = set()
    for spelling in ("manifest.csv", "./manifest.csv", str(demo_set), f"{demo_set.parent}/../demo/manifest.csv"):
        pipeline.write_text(f"workdir: {tmp_path / 'w'}\nsteps:\n  pretrain:\n    config:\n"
                            f"      data: {{manifest: {spelling}}}\n")
        found.add(keys(pipeline)["pretrain"])
    assert len(found) == 1


# -- what `medalign status` says about a step -------------------------------------------------

def planned(path, *overrides):
    return {p.step.name: p for p in runner.plan(spec.load(path, list(overrides)))}


def complete(p):
    """A fake complete output of a planned step."""
    p.out.mkdir(parents=True)
    (p.out / "key.json").write_text(json.dumps(p.record))
    (p.out / "metrics.json").write_text("{}")
    (p.out / store.COMPLETE).write_text("")


def test_status_cached(tiny_pipeline):
    complete(planned(tiny_pipeline)["finetune"])
    p = planned(tiny_pipeline)["finetune"]
    assert runner.state(p) == ("cached", str(p.out))


def test_status_running_while_another_run_holds_the_step(tiny_pipeline):
    p = planned(tiny_pipeline)["pretrain"]
    p.out.parent.mkdir(parents=True)
    with lock.acquire(store.lock_path(p.out), str(p.out)):
        state, detail = runner.state(p)
    assert state == "running" and detail.startswith(f"pid {os.getpid()}, host {socket.gethostname()}, since 20")
    assert runner.state(p) == ("stale", "never run")


@pytest.mark.parametrize("progress, detail", [
    ({"step": 40, "total_steps": 120, "epoch": 1}, "at step 40/120, the next run resumes"),
    (None, "before its first checkpoint"),
])
def test_status_interrupted(tiny_pipeline, progress, detail):
    p = planned(tiny_pipeline)["pretrain"]
    partial = store.partial_dir(p.out)
    (partial / "resume").mkdir(parents=True)
    (partial / "key.json").write_text(json.dumps(p.record))
    if progress:
        (partial / "resume" / "progress.json").write_text(json.dumps(progress))
    assert runner.state(p) == ("interrupted", detail)


@pytest.mark.parametrize("overrides, step, reason", [
    ((), "evaluate", "never run"),
    (("finetune.optim.lr=0.003",), "finetune", "config optim.lr 0.001 -> 0.003"),
    (("pretrain.optim.lr=0.003",), "finetune", "upstream pretrain changed"),
])
def test_status_stale_names_what_changed(tiny_pipeline, overrides, step, reason):
    complete(planned(tiny_pipeline)["finetune"])
    assert runner.state(planned(tiny_pipeline, *overrides)[step]) == ("stale", reason)


def test_status_stale_when_medalign_changed(tiny_pipeline, monkeypatch):
    complete(planned(tiny_pipeline)["data"])
    monkeypatch.setattr(cache, "__version__", "999")
    assert runner.state(planned(tiny_pipeline)["data"]) == ("stale", f"medalign {medalign.__version__} -> 999")


def test_status_stale_when_an_outside_input_changed(tmp_path, demo_set):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"workdir: {tmp_path / 'w'}\nsteps:\n  pretrain:\n    config:\n"
                        f"      data: {{manifest: {demo_set}}}\n")
    complete(planned(pipeline)["pretrain"])
    demo_set.write_text(demo_set.read_text().replace("train", "val", 1))
    assert runner.state(planned(pipeline)["pretrain"]) == ("stale", "input data.manifest changed")


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


def test_status_names_a_config_key_the_old_output_did_not_have(tiny_pipeline):
    p = planned(tiny_pipeline)["pretrain"]
    old = json.loads(json.dumps(p.record))
    del old["config"]["data"]["fold"]  # an output from before `data.fold` existed (its default is null)
    complete(p)
    (p.out / "key.json").write_text(json.dumps(old))
    assert runner.state(planned(tiny_pipeline)["pretrain"]) == ("stale", "config data.fold (unset) -> None")


def test_a_sweep_run_is_explained_against_its_own_last_output_not_another_runs(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"workdir: {tmp_path / 'w'}\nsteps:\n  data:\n    stage: demo-data\n"
                        "    matrix: {seed: [0, 1, 2]}\n")
    for p in planned(pipeline).values():
        complete(p)
    now = planned(pipeline, "data.n_test=7")
    assert {name: runner.state(p) for name, p in now.items()} == {
        f"data[seed={s}]": ("stale", "config n_test 200 -> 7") for s in (0, 1, 2)}
