"""logging.tensorboard and logging.mlflow_uri: read back with each tool's own reader, resumed runs
without replayed steps, offline file stores, a server that is down, a missing package."""
from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest
import torch

from medalign import config, engine, tracking
from medalign.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["runtime.device=cpu", "backbone.name=test_resnet", "backbone.img_size=32", "data.batch_size=4",
        "optim.epochs=1"]


def _stage(name: str, out: Path, manifest: Path, *overrides: str) -> dict:
    stage = config.STAGES[name]
    extra = ["method.name=simclr"] if name == "pretrain" else ["adapter.name=full"]
    cfg = config.load(stage.config, None, [f"data.manifest={manifest}", *TINY, *extra, *overrides])
    out.mkdir(parents=True)
    return stage.run(cfg, out)


def _logged(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' not in x]


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_has_one_loss_per_optimizer_step_as_log_jsonl_does(demo_set, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    _stage("pretrain", out, demo_set, "logging.tensorboard=true")
    steps = _logged(out)
    assert len(steps) == 5  # 20 images, batches of 4
    loss = _scalars(out / "tensorboard", "loss")
    assert [s for s, _ in loss] == list(range(1, 6))
    assert [v for _, v in loss] == pytest.approx([s["loss"] for s in steps], rel=1e-6)
    assert [s for s, _ in _scalars(out / "tensorboard", "epoch/loss")] == [5]
    assert not (out / "mlflow_run.json").exists()


def test_by_default_no_dashboard_is_written(demo_set, tmp_path):
    out = tmp_path / "out"
    _stage("pretrain", out, demo_set)
    assert (out / "log.jsonl").is_file()
    assert not (out / "tensorboard").exists() and not (out / "mlflow_run.json").exists()


def test_the_logging_section_is_not_part_of_the_cache_key():
    plain = config.load(config.FinetuneConfig, None, ["data.manifest=m.csv"])
    logged = config.load(config.FinetuneConfig, None, ["data.manifest=m.csv", "logging.tensorboard=true",
                                                       "logging.mlflow_uri=http://tracking:5000"])
    assert config.semantic(plain) == config.semantic(logged) and "logging" not in config.semantic(plain)


# -- resume: the replayed steps once ---------------------------------------------------------------

class Interrupt(Exception):
    pass


class Regression(torch.nn.Module):
    def __init__(self, crash_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.crash_at = torch.nn.Linear(4, 1), crash_at

    def forward(self, batch):
        x, y = batch
        return {"loss": ((self.net(x).squeeze(1) - y) ** 2).mean()}

    def after_optimizer_step(self, step, total):
        if step == self.crash_at:
            raise Interrupt


def _fit(out: Path, tracker: tracking.Tracker, crash_at: int | None = None) -> None:
    rt = engine.Runtime(torch.device("cpu"), checkpoint_every_steps=4)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    data = engine.loader(torch.utils.data.TensorDataset(x, x.sum(1)), 8, rt, train=True)
    optim = config.OptimConfig(lr=0.05, weight_decay=0.0, epochs=3, warmup_epochs=0)
    engine.fit(Regression(crash_at), data, optim, rt, out, "test", tracker=tracker)


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    folder = tmp_path / "tensorboard"
    with pytest.raises(Interrupt):  # at step 7, after the checkpoint at step 4
        _fit(tmp_path, tracking.Tracker([tracking.TensorBoard(folder)]), crash_at=6)
    assert [s for s, _ in _scalars(folder, "loss")] == list(range(1, 7))
    _fit(tmp_path, tracking.Tracker([tracking.TensorBoard(folder)]))
    loss = _scalars(folder, "loss")
    assert [s for s, _ in loss] == list(range(1, 13))  # 5 and 6 were trained twice, shown once
    assert [v for _, v in loss] == pytest.approx([s["loss"] for s in _logged(tmp_path)], rel=1e-6)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2


# -- MLflow ----------------------------------------------------------------------------------------

def test_mlflow_file_store_gets_params_and_every_step_without_the_network(demo_set, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")

    def offline(*args, **kwargs):
        raise AssertionError(f"network use: {args}")
    monkeypatch.setattr(socket.socket, "connect", offline)
    store = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "out"
    _stage("finetune", out, demo_set, f"logging.mlflow_uri={store}", "logging.mlflow_experiment=tiny")

    saved = json.loads((out / "mlflow_run.json").read_text())
    client = mlflow.tracking.MlflowClient(store)
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "out"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    assert run.data.params["optim.epochs"] == "1" and run.data.params["adapter.name"] == "full"
    assert "runtime.device" not in run.data.params  # the semantic config: what the cache key holds
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [s["step"] for s in _logged(out)] == [1, 2, 3]  # 12 images, batches of 4
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_score")] == [3]


def test_a_resumed_stage_continues_its_mlflow_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    cfg = config.Logging(mlflow_uri=(tmp_path / "mlruns").as_uri())
    with pytest.raises(Interrupt):
        _fit(tmp_path, tracking.Tracker([tracking.MLflow(cfg, tmp_path, "test", {"optim": {"lr": 0.05}})]), crash_at=6)
    client = mlflow.tracking.MlflowClient(cfg.mlflow_uri)
    run_id = json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FAILED"  # a crash; Preempted would be KILLED
    _fit(tmp_path, tracking.Tracker([tracking.MLflow(cfg, tmp_path, "test", {"optim": {"lr": 0.05}})]))
    assert json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"optim.lr": "0.05"}
    # MLflow cannot take metrics back: the steps after the checkpoint (5, 6) are there twice
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == sorted([*range(1, 13), 5, 6])
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_an_unreachable_mlflow_server_costs_a_warning_not_the_run(tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # medalign's default: no retries
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config.Logging(mlflow_uri=f"http://127.0.0.1:{port}")
    _fit(tmp_path, tracking.Tracker([tracking.MLflow(cfg, tmp_path, "test", {})]))
    assert len(_logged(tmp_path)) == 12
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "Connection refused" in warnings[0] and "\n" not in warnings[0]
    assert warnings[0].endswith("test goes on without MLflow")


# -- a missing package -----------------------------------------------------------------------------

@pytest.mark.parametrize("key, module", [("logging.tensorboard=true", "torch.utils.tensorboard"),
                                         ("logging.mlflow_uri=mlruns", "mlflow")])
def test_a_missing_package_fails_at_stage_start_in_one_line(key, module, demo_set, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ConfigError) as e:
        _stage("pretrain", tmp_path / "out", demo_set, key)
    assert str(e.value) == f"{key.split('=')[0]} needs the {module.split('.')[-1]} package: " \
                           "pip install 'medalign[tracking]'"
    assert not any((tmp_path / "out").iterdir())  # before anything was built
