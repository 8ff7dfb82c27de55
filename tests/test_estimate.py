"""The estimate stage end to end on the demo set, its cache key, its errors."""
import csv
import os

import pytest
import torch

from medalign import config, engine
from medalign.config import BackboneConfig
from medalign.config.stages import EstimateConfig
from medalign.errors import CheckpointError, ConfigError
from medalign.models import backbones, checkpoint
from medalign.pipeline import cache
from medalign.stages import estimate

RESNET = {"name": "test_resnet", "img_size": 32}


def _source_checkpoint(folder):
    """A test_resnet with a 5-class head, saved as tests/test_models.py `_save` does: a start with
    its own source classifier."""
    cfg = BackboneConfig(**RESNET)
    torch.manual_seed(0)
    model = backbones.create(cfg, num_classes=5)
    bb = backbones.resolve(cfg)
    return checkpoint.save(folder, model.state_dict(), checkpoint.metadata(bb.arch, 32, bb.normalization,
                                                                           num_classes=5))


def _cfg(manifest, candidates, **extra) -> EstimateConfig:
    raw = {"candidates": candidates, "data": {"manifest": str(manifest), "batch_size": 8},
           "knn": {"k": 5}, "runtime": {"device": "cpu"}, **extra}
    return config.validate(EstimateConfig, raw, "test")


def test_estimate_scores_and_ranks_every_candidate(demo_set, tmp_path):
    ckpt = _source_checkpoint(tmp_path / "source")
    cfg = _cfg(demo_set, [{"name": "random", "backbone": RESNET},
                          {"name": "source", "backbone": {**RESNET, "checkpoint": str(ckpt)}}])
    out = tmp_path / "out"
    out.mkdir()
    metrics = estimate.run(cfg, out)

    with (out / "estimate.csv").open() as f:
        table = list(csv.DictReader(f))
    assert not (out / "estimate.csv.tmp").exists()
    assert set(metrics["ranking"]) == {"random", "source"}
    assert [r["name"] for r in table] == metrics["ranking"] == [r["name"] for r in metrics["candidates"]]
    knn = [float(r["knn_auroc"]) for r in table]
    assert knn == sorted(knn, reverse=True)
    assert list(table[0]) == ["name", "knn_auroc", "knn_accuracy", "linear_auroc", "logme", "leep", "nleep", "nce",
                              "hscore", "gbc", "feature_seconds", "score_seconds", "note"]
    rows = {r["name"]: r for r in table}
    # the checkpoint carries a classifier, so LEEP and NCE are computed for it alone
    assert rows["source"]["leep"] and float(rows["source"]["leep"]) < 0 and rows["source"]["nce"]
    assert rows["random"]["leep"] == rows["random"]["nce"] == "" and "no source classifier" in rows["random"]["note"]
    for r in table:
        assert 0 <= float(r["knn_auroc"]) <= 1 and 0 <= float(r["linear_auroc"]) <= 1
        assert float(r["feature_seconds"]) > 0 and float(r["score_seconds"]) > 0
        assert float(r["logme"]) == pytest.approx(next(m["logme"] for m in metrics["candidates"]
                                                       if m["name"] == r["name"]))
    assert metrics["train_images"] == 12 and metrics["eval_images"] == 6


def test_only_rank_zero_writes_the_table(demo_set, tmp_path, monkeypatch):
    monkeypatch.setattr(estimate.engine, "setup", lambda rt, seed: engine.Runtime(torch.device("cpu"), seed, rank=1,
                                                                                  world_size=2))
    metrics = estimate.run(_cfg(demo_set, [{"name": "random", "backbone": RESNET}], scores=["knn"]), tmp_path)
    assert metrics["ranking"] == ["random"]
    assert not (tmp_path / "estimate.csv").exists()


def test_a_candidate_that_fails_to_load_is_named(demo_set, tmp_path):
    cfg = _cfg(demo_set, [{"name": "random", "backbone": RESNET},
                          {"name": "broken", "backbone": {**RESNET, "checkpoint": str(tmp_path / "nowhere")}}],
               scores=["knn"])
    with pytest.raises(CheckpointError, match="^candidate broken: checkpoint not found"):
        estimate.run(cfg, tmp_path)


def test_candidate_names_must_be_unique(demo_set):
    with pytest.raises(ConfigError, match="named twice"):
        _cfg(demo_set, [{"name": "a", "backbone": RESNET}, {"name": "a", "backbone": RESNET}])


def test_relative_and_absolute_candidate_checkpoints_give_one_key(demo_set, tmp_path, monkeypatch):
    ckpt = _source_checkpoint(tmp_path / "ckpts" / "source")
    monkeypatch.chdir(tmp_path)

    def record(path):
        return cache.record("estimate", _cfg(demo_set, [{"name": "random", "backbone": RESNET},
                                                        {"name": "c", "backbone": {**RESNET, "checkpoint": path}}]), {})[0]

    rel, absolute = record("ckpts/source"), record(str(ckpt))
    assert cache.key_of(rel) == cache.key_of(absolute)
    assert rel["config"]["candidates"][1]["backbone"]["checkpoint"] == str(ckpt)
    assert rel["inputs"]["candidates.1.backbone.checkpoint"] != "missing"
    assert "candidates.0.backbone.checkpoint" not in rel["inputs"]  # random init has no file
    # and the checkpoint is fingerprinted: touching its weights changes the key
    weights = ckpt / checkpoint.WEIGHTS
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert cache.key_of(record("ckpts/source")) != cache.key_of(rel)
