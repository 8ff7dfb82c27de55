"""Dashboards besides log.jsonl, each off unless the stage's `logging` section turns it on:
TensorBoard event files in OUT/tensorboard, and an MLflow run per stage output.

engine.fit reports the same scalars it writes to log.jsonl: every optimizer step's under their
own names, every epoch summary's as epoch/<name>, both at the step they were logged at. The
packages (`pip install 'medalign[tracking]'`) are imported only when turned on. Offline-safe:
only an http(s) MLflow URI uses the network, and MLflow that fails (a server down) costs a
warning, not the run.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from pathlib import Path

from medalign import config
from medalign.errors import ConfigError, Preempted, one_line

log = logging.getLogger(__name__)

INSTALL = "pip install 'medalign[tracking]'"
# the dashboards have their own axes for these: step, wall time
AXES = ("epoch", "step", "elapsed_s")
# set unless the user set them, before mlflow is imported (it reads some at import)
MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow would otherwise report usage to its own servers
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # a server that is down costs one warning, not 4 minutes of retries
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 refuses the file store (Lightning's default ./mlruns) without it
}


class Tracker:
    """The dashboards one stage reports to; with none (the default, and off rank 0) it does nothing."""

    def __init__(self, sinks: list | tuple = ()):
        self.sinks = list(sinks)

    @contextlib.contextmanager
    def run(self, step: int):
        """Open for a run that starts (0) or resumes at `step`; closed with how it ended."""
        for s in self.sinks:
            s.start(step)
        try:
            yield
        except BaseException as e:
            self._close("KILLED" if isinstance(e, Preempted | KeyboardInterrupt) else "FAILED")
            raise
        self._close("FINISHED")

    def log(self, step: int, scalars: dict, prefix: str = "") -> None:
        values = {prefix + k: float(v) for k, v in scalars.items()
                  if k not in AXES and isinstance(v, int | float) and not isinstance(v, bool)}
        for s in self.sinks:
            s.log(step, values)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def _close(self, status: str) -> None:
        for s in self.sinks:
            s.close(status)


NONE = Tracker()


def tracker(cfg: config.Section, out_dir: Path, is_main: bool, stage: str) -> Tracker:
    """The dashboards `cfg.logging` turns on. Every rank checks the packages, so that all fail alike
    at stage start rather than rank 0 alone after the data is loaded; rank 0 alone writes."""
    sinks = []
    if cfg.logging.tensorboard:
        sinks.append(TensorBoard(out_dir / "tensorboard"))
    if cfg.logging.mlflow_uri:
        sinks.append(MLflow(cfg.logging, out_dir, stage, config.semantic(cfg)))
    return Tracker(sinks if is_main else [])


def _require(module: str, key: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{key} needs the {package} package: {INSTALL}") from None


class TensorBoard:
    def __init__(self, folder: Path):
        self.folder, self.writer = folder, None
        self.SummaryWriter = _require("torch.utils.tensorboard", "logging.tensorboard", "tensorboard").SummaryWriter

    def start(self, step: int) -> None:
        # the steps after the resumed checkpoint are trained again: hide their first-time events
        self.writer = self.SummaryWriter(str(self.folder), purge_step=step + 1 if step else None)

    def log(self, step: int, values: dict) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per stage output; a resumed stage continues its run (OUT/mlflow_run.json).
    The params are the semantic config, flattened. Any MLflow failure turns MLflow off for the rest
    of the stage with one warning: a dashboard being down must not stop a training run."""

    def __init__(self, cfg: config.Logging, out_dir: Path, stage: str, params: dict):
        for k, v in MLFLOW_ENV.items():
            os.environ.setdefault(k, v)
        self.mlflow = _require("mlflow", "logging.mlflow_uri", "mlflow")
        self.cfg, self.out_dir, self.stage, self.params = cfg, out_dir, stage, _strings(config.flatten(params))
        self.client, self.run_id = None, None

    def start(self, step: int) -> None:
        with self._guard():
            from mlflow.entities import Param

            client = self.mlflow.MlflowClient(tracking_uri=self.cfg.mlflow_uri)
            record = self.out_dir / "mlflow_run.json"
            if step and record.is_file():
                self.run_id = json.loads(record.read_text())["run_id"]
                client.update_run(self.run_id, status="RUNNING")
            else:
                experiment = client.get_experiment_by_name(self.cfg.mlflow_experiment)
                experiment_id = (experiment.experiment_id if experiment
                                 else client.create_experiment(self.cfg.mlflow_experiment))
                # the store builds an output in .partial-NAME and renames it NAME when done
                name = self.out_dir.name.removeprefix(".partial-")
                run = client.create_run(experiment_id, run_name=name, tags={
                    "medalign.stage": self.stage, "medalign.output": str(self.out_dir.resolve().parent / name)})
                self.run_id = run.info.run_id
                params = [Param(k, v) for k, v in self.params.items()]
                for i in range(0, len(params), 100):  # MLflow takes at most 100 params per request
                    client.log_batch(self.run_id, params=params[i:i + 100])
                record.write_text(json.dumps({"tracking_uri": self.cfg.mlflow_uri, "experiment_id": experiment_id,
                                              "run_id": self.run_id}) + "\n")
            self.client = client

    def log(self, step: int, values: dict) -> None:
        if self.client:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            with self._guard():
                self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def flush(self) -> None:
        """Each log call is written through."""

    def close(self, status: str) -> None:
        if self.client:
            with self._guard():
                self.client.set_terminated(self.run_id, status)

    @contextlib.contextmanager
    def _guard(self):
        try:
            yield
        except Exception as e:  # whatever MLflow or its server raise: training goes on
            log.warning("logging.mlflow_uri=%s: %s; %s goes on without MLflow", self.cfg.mlflow_uri,
                        one_line(e), self.stage)
            self.client = None


def _strings(params: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}  # MLflow's params are text
