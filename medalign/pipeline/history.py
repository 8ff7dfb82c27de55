"""The work directory's history: one JSON line per `medalign run`, appended when the run ends.

    {"start": ..., "end": ..., "seconds": 812.4, "host": "node07", "pid": 4242,
     "pipeline": "/abs/pipelines/nightly.yaml", "workdir": "/abs/runs/nightly", "overrides": [],
     "exit_code": 0, "status": "done",
     "steps": [{"step": "pretrain", "stage": "pretrain", "key": "3f9c...", "out": "/abs/...",
                "outcome": "resumed", "seconds": 790.2, "exit_code": 0}, ...]}

`outcome` is cached, ran, resumed or failed. `medalign history` lists the records and `medalign gc`
keeps every output a recent one names. A line is written whole, in one append, so concurrent runs
never interleave; a line a crash cut short is skipped when read.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

FILE = "history.jsonl"
STATUS = {0: "done", 1: "failed", 2: "bad input", 3: "lock timeout", 75: "preempted", 130: "interrupted"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Entry:
    """The record of one run, filled in step by step and appended by `finish`."""

    def __init__(self, pipeline_path: Path, workdir: Path, overrides: list[str]):
        self.workdir, self.started = workdir, time.time()
        self.record = {"start": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                       "pipeline": str(Path(pipeline_path).resolve()), "workdir": str(workdir.resolve()),
                       "overrides": list(overrides), "steps": []}

    def step(self, name: str, stage: str, key: str, out: Path, outcome: str, seconds: float, exit_code: int) -> None:
        self.record["steps"].append({"step": name, "stage": stage, "key": key, "out": str(out.resolve()),
                                     "outcome": outcome, "seconds": round(seconds, 3), "exit_code": exit_code})

    def finish(self, exit_code: int) -> dict:
        self.record.update(end=_now(), seconds=round(time.time() - self.started, 3), exit_code=exit_code,
                           status=STATUS.get(exit_code, "failed"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / FILE).open("a") as f:
            f.write(json.dumps(self.record) + "\n")
        return self.record


def read(workdir: Path) -> list[dict]:
    """Every record, oldest first."""
    try:
        lines = (Path(workdir) / FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # the tail of a run killed mid-write
    return records
