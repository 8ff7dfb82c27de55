"""A stage killed mid-run resumes from its last checkpoint and ends where an uninterrupted run ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}

STAGES = {
    # 20 images / batch 4 = 5 steps an epoch
    "pretrain": (["backbone.name=test_resnet", "backbone.img_size=32", "method.name=simclr", "data.batch_size=4",
                  "optim.epochs=16", "optim.warmup_epochs=1"], "checkpoint"),
    # 12 train images / batch 2 = 6 steps an epoch, validated after each
    "finetune": (["backbone.name=test_resnet", "backbone.img_size=32", "adapter.name=full", "data.batch_size=2",
                  "optim.epochs=12"], "model"),
}


def _command(stage: str, manifest: Path, out: Path, *extra: str) -> list[str]:
    args, _ = STAGES[stage]
    return [sys.executable, "-m", "medalign", stage, f"data.manifest={manifest}", "runtime.device=cpu", *args,
            *extra, "--out", str(out)]


def _partial(out: Path) -> Path:
    return out.parent / f".partial-{out.name}"


def _progress(out: Path) -> int:
    try:
        return json.loads((_partial(out) / "resume" / "progress.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' not in x]


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < end, "no progress"
        time.sleep(0.02)


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_then_the_same_command_resumes_and_matches_an_uninterrupted_run(stage, demo_set, tmp_path):
    ref = tmp_path / "ref"
    r = subprocess.run(_command(stage, demo_set, ref), capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    cut = tmp_path / "cut"
    command = _command(stage, demo_set, cut, "runtime.checkpoint_every_steps=4")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: _progress(cut) >= 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not cut.exists() and _partial(cut).is_dir()

    changed = subprocess.run(command[:-2] + ["optim.lr=0.0123"] + command[-2:], capture_output=True, text=True,
                             env=ENV, timeout=300)
    assert changed.returncode != 0 and "optim.lr" in changed.stderr and "Traceback" not in changed.stderr

    again = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = [line for line in again.stderr.splitlines() if "resumed from step" in line]
    assert len(resumed) == 1 and int(resumed[0].split("resumed from step ")[1].split()[0]) >= 8
    assert _steps(cut) == _steps(ref) == list(range(1, len(_steps(ref)) + 1))

    _, folder = STAGES[stage]
    want = load_file(str(ref / folder / "model.safetensors"))
    got = load_file(str(cut / folder / "model.safetensors"))
    assert set(want) == set(got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)
    assert not (cut / "resume").exists()


def test_sigusr1_checkpoints_within_a_step_exits_75_and_the_next_run_resumes(demo_set, tmp_path):
    out = tmp_path / "pre"
    command = _command("pretrain", demo_set, out)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    log = _partial(out) / "log.jsonl"
    _wait_for(lambda: log.is_file() and len(log.read_text().splitlines()) >= 3, proc)
    seen = len([x for x in log.read_text().splitlines() if '"summary"' not in x])
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    assert "stopped by SIGUSR1" in stderr and "Traceback" not in stderr
    saved = _progress(out)
    assert seen <= saved <= seen + 2  # the step running when the signal came, or the next

    again = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from step {saved} of 80" in again.stderr
    assert _steps(out) == list(range(1, 16 * 5 + 1))
