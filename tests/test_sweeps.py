"""Sweeps: a step's `matrix` runs it once per combination, downstream steps fan out with it, and
`collect` gathers the runs; k-fold cross-validation is one such sweep over data.fold."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from medalign.errors import ConfigError
from medalign.pipeline import runner, spec

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_unlabeled": 0, "n_train": 4, "n_val": 2, "n_test": 2, "img_size": 16}


def write(path: Path, steps: dict) -> Path:
    path.write_text(yaml.safe_dump({"workdir": str(path.parent / "runs"), "steps": steps}, sort_keys=False))
    return path


def run(path: Path, *overrides: str) -> tuple[dict, list[str]]:
    lines: list[str] = []
    outputs = runner.run(spec.load(path, list(overrides)), echo=lines.append)
    return outputs, [line.split("] ")[0][1:] for line in lines if "] running" in line]


def test_a_sweep_computes_each_seed_once_and_a_new_seed_alone(tmp_path):
    steps = {"data": {"stage": "demo-data", "matrix": {"seed": [0, 1, 2]}, "config": TINY}}
    outputs, ran = run(write(tmp_path / "p.yaml", steps))
    assert ran == ["data[seed=0]", "data[seed=1]", "data[seed=2]"]
    assert len({*outputs.values()}) == 3 and all(o.parent == tmp_path / "runs" / "data" for o in outputs.values())
    manifests = [(o / "manifest.csv").read_bytes() for o in outputs.values()]
    assert len(set(manifests)) == 3  # each run really got its own seed

    assert run(tmp_path / "p.yaml")[1] == []
    steps["data"]["matrix"]["seed"].append(3)
    assert run(write(tmp_path / "p.yaml", steps))[1] == ["data[seed=3]"]


def test_downstream_steps_fan_out_and_pair_up_on_a_shared_key(tmp_path):
    steps = {"data": {"stage": "demo-data", "matrix": {"seed": [0, 1]}, "config": TINY},
             "other": {"stage": "demo-data", "matrix": {"seed": [0, 1], "n_test": [2, 3]},
                       "config": {**TINY, "n_train": "${data}"}}}
    with pytest.raises(ConfigError, match=r"other\[seed=0,n_test=2\]"):  # validated per run, named per run
        spec.load(write(tmp_path / "p.yaml", steps))
    finetune = {"stage": "finetune", "base": str(ROOT / "configs" / "finetune" / "full.yaml"),
                "matrix": {"seed": [0, 1]}, "config": {"data": {"manifest": "${data}/manifest.csv"}}}
    evaluate = {"config": {"model": "${finetune}", "data": {"manifest": "${data}/manifest.csv"}}}
    pipeline = spec.load(write(tmp_path / "p.yaml", {"data": steps["data"], "finetune": finetune,
                                                     "evaluate": evaluate}))
    deps = {s.name: s.deps for s in pipeline.steps}
    # paired on seed, not crossed: 2 runs each, not 4; evaluate follows both without a matrix of its own
    assert deps["finetune[seed=1]"] == ["data[seed=1]"]
    assert deps["evaluate[seed=1]"] == ["data[seed=1]", "finetune[seed=1]"] and len(deps) == 6


def test_every_run_of_a_step_gathers_as_a_list(tmp_path):
    steps = {"data": {"stage": "demo-data", "matrix": {"seed": [0, 1, 2]}, "config": TINY},
             "all": {"stage": "collect", "config": {"runs": ["${data[*]}"]}}}
    step = spec.load(write(tmp_path / "p.yaml", steps)).steps[-1]
    assert step.name == "all" and step.raw["runs"] == ["${data[seed=0]}", "${data[seed=1]}", "${data[seed=2]}"]
    bad = {**steps, "all": {"stage": "collect", "config": {"runs": ["${data[*]}/manifest.csv x"]}}}
    with pytest.raises(ConfigError, match=r"whole list item"):
        spec.load(write(tmp_path / "p.yaml", bad))


def test_cross_validation_scores_every_image_once_out_of_fold(tmp_path):
    """pipelines/crossval.yaml, shrunk: 3 folds of one epoch each at 32 px."""
    path = tmp_path / "crossval.yaml"
    shutil.copy(ROOT / "pipelines" / "crossval.yaml", path)
    text = path.read_text().replace("[0, 1, 2, 3, 4]", "[0, 1, 2]").replace("folds: 5", "folds: 3")
    text = text.replace("../configs", str(ROOT / "configs"))
    path.write_text(text.replace("workdir: runs/crossval", f"workdir: {tmp_path / 'runs'}"))
    outputs, ran = run(path, "data.n_train=30", "data.n_val=6", "data.n_test=6", "data.img_size=32",
                       "finetune.optim.epochs=1", "finetune.backbone.name=test_resnet",
                       "finetune.backbone.img_size=32", "finetune.runtime.device=cpu", "evaluate.runtime.device=cpu")
    assert ran == ["data", *(f"finetune[data.fold={k}]" for k in range(3)),
                   *(f"evaluate[data.fold={k}]" for k in range(3)), "summary"]
    rows = list(csv.DictReader((outputs["data"] / "manifest.csv").open()))
    fold_of = {r["path"]: r["fold"] for r in rows if r["fold"]}
    assert len(fold_of) == 36  # train + val, the manifest's own test rows stay out
    scored = []
    for k in range(3):
        preds = list(csv.DictReader((outputs[f"evaluate[data.fold={k}]"] / "predictions.csv").open()))
        assert {fold_of[p["path"]] for p in preds} == {str(k)}  # each model scores its own held-out fold
        scored += [p["path"] for p in preds]
    assert sorted(scored) == sorted(fold_of)  # every image once
    summary = json.loads((outputs["summary"] / "metrics.json").read_text())
    assert summary["pooled"]["n"] == 36 and len(summary["per_run"]["accuracy"]) == 3
    assert summary["mean"]["accuracy"] == pytest.approx(sum(summary["per_run"]["accuracy"]) / 3)
    assert (outputs["summary"] / "report.html").is_file()


def test_a_fold_needs_a_fold_column_and_enough_folds(demo_set):
    from medalign.config.stages import EvaluateData
    from medalign.errors import DataError
    from medalign.stages import _common

    with pytest.raises(DataError, match="no 'fold' column .*--folds"):
        _common.rows(EvaluateData(manifest=str(demo_set), fold=0), "test")
    rows = list(csv.DictReader(demo_set.open()))
    with demo_set.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "fold"])
        w.writeheader()
        w.writerows({**r, "fold": i % 2 if r["split"] in ("train", "val") else ""} for i, r in enumerate(rows))
    with pytest.raises(DataError, match=r"folds \[0, 1\].*at least 3"):
        _common.rows(EvaluateData(manifest=str(demo_set), fold=0), "test")


def test_a_matrix_list_runs_the_combinations_it_names_and_no_others(tmp_path):
    # seeds paired with their own settings (the scarce-label benchmark's subsets), not crossed with them
    steps = {"data": {"stage": "demo-data", "matrix": [{"seed": 0, "n_train": 4}, {"seed": 1, "n_train": 6}],
                      "config": TINY}}
    outputs, ran = run(write(tmp_path / "p.yaml", steps))
    assert ran == ["data[seed=0,n_train=4]", "data[seed=1,n_train=6]"]
    train = [sum(r["split"] == "train" for r in csv.DictReader((o / "manifest.csv").open())) for o in outputs.values()]
    assert train == [4, 6]
    steps["data"]["matrix"] = [{"seed": 0}, {"n_train": 2}]
    with pytest.raises(ConfigError, match="same keys"):
        spec.load(write(tmp_path / "p.yaml", steps))
