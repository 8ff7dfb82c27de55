"""The tiny pipeline end to end: runs, caches, reruns only what an override touches, runs once at a time."""
import json
import os
import re
import subprocess
import sys
import threading

import pytest
import timm
import torch

from medalign import cli
from medalign.pipeline import runner, spec
from medalign.pipeline.store import COMPLETE


def run(path, *overrides):
    lines = []
    outputs = runner.run(spec.load(path, list(overrides)), echo=lines.append)
    return outputs, lines


def ran(lines):
    return [line.split("]")[0][1:] for line in lines if "running" in line]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_pipeline_writer):
    path = tiny_pipeline_writer(tmp_path_factory.mktemp("pipeline"))
    outputs, lines = run(path)
    return path, outputs, lines


def test_first_run_runs_every_step(pipeline):
    _, outputs, lines = pipeline
    assert ran(lines) == ["data", "pretrain", "finetune", "evaluate"]
    for step, out in outputs.items():
        assert out.parent.name == step and len(out.name) == 16
        for name in ("config.yaml", "key.json", "metrics.json", COMPLETE):
            assert (out / name).is_file(), f"{step} lacks {name}"
    metrics = json.loads((outputs["evaluate"] / "metrics.json").read_text())
    assert metrics["n"] == 12 and 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["auroc"] <= 1
    assert sum(map(sum, metrics["confusion_matrix"]["rows_true_cols_pred"])) == 12
    assert [p.name for p in outputs["pretrain"].parent.iterdir()] == [outputs["pretrain"].name]  # no .partial-, .lock-


def test_run_ends_with_the_reports_path(pipeline, capsys):
    path, outputs, _ = pipeline
    cli.main(["run", str(path)])  # cached: the same outputs, the same last line
    page = outputs["evaluate"] / "report.html"
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"report: {page}" and page.is_file()


def test_training_logs_one_json_line_per_step(pipeline):
    _, outputs, _ = pipeline
    records = [json.loads(line) for line in (outputs["pretrain"] / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if not r.get("summary")]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert all(r["loss"] > 0 and r["img_per_s"] > 0 and "embedding_std" in r for r in steps)
    finetune = (outputs["finetune"] / "log.jsonl").read_text()
    assert "val_auroc" in finetune


def test_pretrain_checkpoint_loads_in_plain_timm(pipeline):
    _, outputs, _ = pipeline
    folder = outputs["pretrain"] / "checkpoint"
    meta = json.loads((folder / "model.json").read_text())
    assert meta["architecture"]["name"] == "test_vit" and meta["ssl_method"] == "dino"
    model = timm.create_model("test_vit", num_classes=0, in_chans=1, img_size=32, patch_size=8,
                              checkpoint_path=str(folder / "model.safetensors"))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, model.num_features)


def test_second_run_is_all_cached(pipeline):
    path, outputs, _ = pipeline
    stamps = {s: (o / COMPLETE).stat().st_mtime_ns for s, o in outputs.items()}
    again, lines = run(path)
    assert ran(lines) == [] and again == outputs
    assert {s: (o / COMPLETE).stat().st_mtime_ns for s, o in outputs.items()} == stamps


def test_override_reruns_finetune_and_evaluate_only(pipeline, capsys):
    path, outputs, _ = pipeline
    new, lines = run(path, "finetune.optim.lr=0.003")
    assert ran(lines) == ["finetune", "evaluate"]
    assert new["pretrain"] == outputs["pretrain"] and new["finetune"] != outputs["finetune"]
    assert "optim.lr 0.001 -> 0.003" in next(line for line in lines if line.startswith("[finetune] running"))

    cli.main(["status", str(path), "finetune.optim.lr=0.004"])
    status = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert status["data"].startswith("cached") and status["pretrain"].startswith("cached")
    assert status["finetune"].startswith("stale") and "0.004" in status["finetune"]


def test_same_seed_same_weights(demo_set, tmp_path):
    """Seeds reach everything random: model init, shuffling and albumentations' own generators."""
    from safetensors.torch import load_file

    def pretrain(out, seed):
        cli.main(["pretrain", f"data.manifest={demo_set}", "backbone.name=test_resnet", "backbone.img_size=32",
                  "method.name=simclr", "data.batch_size=8", "optim.epochs=1", f"seed={seed}", "--out", str(out)])
        return load_file(str(out / "checkpoint" / "model.safetensors"))

    a, b, c = pretrain(tmp_path / "a", 0), pretrain(tmp_path / "b", 0), pretrain(tmp_path / "c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_preprocessing_cache_is_filled_once_and_reused(demo_set, tmp_path, monkeypatch):
    from medalign.data import datasets, readers

    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "cache"))
    args = ["pretrain", f"data.manifest={demo_set}", "backbone.name=test_resnet", "backbone.img_size=32",
            "method.name=simclr", "data.batch_size=8", "optim.epochs=2", "data.cache=true"]
    cli.main([*args, "--out", str(tmp_path / "a")])
    entries = list((tmp_path / "cache" / "preprocess").glob("*.npy"))
    assert len(entries) == 1

    decoded = []
    real = readers.read_image
    counting = lambda *a, **k: decoded.append(a) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(readers, "read_image", counting)
    monkeypatch.setattr(datasets, "read_image", counting)
    cli.main([*args, "seed=1", "--out", str(tmp_path / "b")])  # another run, same images: no decoding
    assert decoded == [] and (tmp_path / "b" / "COMPLETE").exists()


def test_two_runs_at_once_compute_each_step_once(tiny_pipeline):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def medalign(*args, **kw):
        return [sys.executable, "-m", "medalign", *args]

    lines: list[list[str]] = [[], []]
    running = threading.Event()

    def read(proc, into):
        for line in proc.stdout:
            into.append(line)
            if line.startswith("[pretrain] running"):
                running.set()

    runs = [subprocess.Popen(medalign("run", str(tiny_pipeline)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env) for _ in range(2)]
    readers = [threading.Thread(target=read, args=(p, out)) for p, out in zip(runs, lines)]
    for t in readers:
        t.start()
    try:
        assert running.wait(120), lines
        holder = next(p.pid for p, out in zip(runs, lines) if any(x.startswith("[pretrain] running") for x in out))

        status = subprocess.run(medalign("status", str(tiny_pipeline)), capture_output=True, text=True, env=env)
        assert re.search(rf"^\w+ +running +pid {holder}, host ", status.stdout, re.M), status.stdout

        impatient = subprocess.run(medalign("run", str(tiny_pipeline), "--lock-timeout", "1"),
                                   capture_output=True, text=True, env=env, timeout=120)
        assert impatient.returncode == 3, impatient.stderr
        assert f"locked by pid {holder} on host " in impatient.stderr and "(--lock-timeout)" in impatient.stderr
    finally:
        for p in runs:
            p.wait(timeout=300)
        for t in readers:
            t.join()
    assert [p.returncode for p in runs] == [0, 0], lines

    both = lines[0] + lines[1]
    steps = ["data", "pretrain", "finetune", "evaluate"]
    assert sorted(x.split("]")[0][1:] for x in both if "] done " in x) == sorted(steps)  # each step computed once
    assert sorted(x.split("]")[0][1:] for x in both if "] cached " in x) == sorted(steps)  # and found by the other
    waited = [x for x in both if "] waiting for pid " in x]
    assert waited and all(f"waiting for pid {holder} on host " in x for x in waited)

    workdir = tiny_pipeline.parent / "work"
    for step in steps:
        assert len(os.listdir(workdir / step)) == 1, os.listdir(workdir / step)  # one output, nothing left over
    log = next((workdir / "pretrain").iterdir()) / "log.jsonl"
    assert sum('"summary": true' in x for x in log.read_text().splitlines()) == 1  # one epoch, written once
