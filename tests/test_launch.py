"""The torchrun launcher of a pipeline step, and the scheduling examples in docs/ that use it.

The docs' torchrun lines are checked against `launch.command` rendered with shlex.join, where
`python` stands for sys.executable, for SLURM job 4242 with MASTER_ADDR=node001 and
MASTER_PORT=29500 (the environment docs/scheduling.md names).
"""
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from medalign.errors import MedalignError, Preempted
from medalign.pipeline import history, launch, spec
from medalign.pipeline.launch import Launcher, command

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
SLURM_ENV = {"SLURM_JOB_ID": "4242", "MASTER_ADDR": "node001", "MASTER_PORT": "29500"}


def _sbatch() -> tuple[dict[str, list[str]], str]:
    text = (EXAMPLES / "nightly.sbatch").read_text()
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH"):
            key, _, value = line.split(None, 1)[1].partition("=")
            options.setdefault(key, []).append(value)
    return options, text


def test_sbatch_asks_for_nodes_the_signal_and_requeue():
    options, text = _sbatch()
    assert options["--nodes"] == ["2"]
    # B: sends USR1 to the batch shell, where `medalign run` runs; 120 s leaves time to checkpoint
    assert options["--signal"] == ["B:USR1@120"]
    assert options["--requeue"] == [""]
    # every #SBATCH line comes before the first command: sbatch stops reading them there
    first_command = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))


def test_sbatch_runs_medalign_in_the_background_and_requeues_on_75():
    _, text = _sbatch()
    code = [line.split("#")[0].strip() for line in text.splitlines() if not line.startswith("#")]
    run = [line for line in code if line.startswith("medalign run ")]
    assert len(run) == 1 and run[0].endswith("&")  # in the background: bash defers traps during a foreground child
    assert shlex.split(run[0])[2] == "docs/examples/nightly.yaml"
    assert "trap 'kill -USR1 \"$pid\" 2>/dev/null' USR1" in code
    assert 'while kill -0 "$pid" 2>/dev/null; do' in code  # a trap ends `wait` early: wait again
    assert 'if [ "$rc" -eq 75 ]; then' in code and 'scontrol requeue "$SLURM_JOB_ID"' in code
    assert code[-1] == 'exit "$rc"'
    r = subprocess.run(["bash", "-n", str(EXAMPLES / "nightly.sbatch")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_sbatch_signal_pattern_passes_usr1_and_keeps_the_exit_code(tmp_path):
    """The script's trap/wait lines, with a stand-in for medalign that exits 75 on USR1."""
    _, text = _sbatch()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("trap "))
    end = next(i for i, line in enumerate(lines) if line == "done")
    body = "\n".join(lines[start:end + 1])
    fake = tmp_path / "medalign"
    fake.write_text(f"#!{sys.executable}\nimport signal, sys, time\n"
                    "signal.signal(signal.SIGUSR1, lambda *a: (print('checkpoint', flush=True), sys.exit(75)))\n"
                    "print('training', flush=True)\ntime.sleep(60)\n")
    fake.chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_text(f"{body}\necho \"rc=$rc\"\n")
    p = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert p.stdout.readline().strip() == "training"
    p.send_signal(signal.SIGUSR1)  # what --signal=B:USR1 does: the batch shell alone
    out, _ = p.communicate(timeout=30)
    assert out.split() == ["checkpoint", "rc=75"]


def test_crontab_lines_have_five_time_fields_and_run_medalign():
    entries = [line for line in (EXAMPLES / "crontab").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert entries
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for line in entries:
        *fields, cmd = line.split(None, 5)
        for field, (lo, hi) in zip(fields, ranges):
            assert field == "*" or all(lo <= int(v) <= hi for v in re.split(r"[,-]", field.split("/")[0])), line
        assert "%" not in cmd  # cron turns % into a newline
        subprocess.run(["sh", "-n", "-c", cmd], check=True)
    run = [shlex.split(cmd) for *_, cmd in (line.split(None, 5) for line in entries) if "medalign run " in cmd]
    assert len(run) == 1
    argv = run[0][run[0].index(".venv/bin/medalign"):]
    assert argv[1:3] == ["run", "docs/examples/nightly-one-node.yaml"] and "--lock-timeout" in argv
    assert (ROOT / argv[2]).is_file()


def _pretrain(pipeline: str) -> tuple[Launcher, str]:
    raw = yaml.safe_load((EXAMPLES / pipeline).read_text())
    return Launcher(**raw["steps"]["pretrain"]["launcher"]), raw["workdir"]


@pytest.mark.parametrize("pipeline", ["nightly.yaml", "nightly-one-node.yaml"])
def test_example_pipelines_are_valid(pipeline):
    p = spec.load(EXAMPLES / pipeline)
    assert [s.name for s in p.steps] == ["pretrain", "finetune", "evaluate"]
    assert p.steps[0].launcher == _pretrain(pipeline)[0] and p.steps[1].launcher is None


def test_one_node_pipeline_is_the_nightly_one_but_for_its_launcher():
    a, b = (yaml.safe_load((EXAMPLES / f).read_text()) for f in ("nightly.yaml", "nightly-one-node.yaml"))
    assert a["steps"]["pretrain"].pop("launcher") == {"kind": "torchrun", "nproc_per_node": 4, "nnodes": 2}
    assert b["steps"]["pretrain"].pop("launcher") == {"kind": "torchrun", "nproc_per_node": 4}
    assert a == b


def test_docs_torchrun_lines_are_what_command_builds(monkeypatch):
    for k, v in SLURM_ENV.items():
        monkeypatch.setenv(k, v)
    text = (ROOT / "docs" / "scheduling.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
    lines = [line for b in blocks for line in b.splitlines() if "torch.distributed.run" in line]
    assert len(lines) == 2
    for line, pipeline in zip(lines, ["nightly.yaml", "nightly-one-node.yaml"]):
        launcher, workdir = _pretrain(pipeline)
        args = ["run", f"docs/examples/{pipeline}", "--only", "pretrain", "--workdir", workdir]
        argv = command(launcher, args)
        assert sys.executable in argv
        assert line == shlex.join("python" if a == sys.executable else a for a in argv)
    assert lines[0].startswith("srun --nodes=2 --ntasks-per-node=1 ")  # one agent per node
    # the sbatch script exports what the multi-node line reads
    _, sbatch = _sbatch()
    assert "export MASTER_ADDR" in sbatch and "export MASTER_PORT=29500" in sbatch


def test_command_single_node_multi_node_and_srun(monkeypatch):
    for k in ("SLURM_JOB_ID", "MASTER_ADDR", "MASTER_PORT", "SLURMD_NODENAME"):
        monkeypatch.delenv(k, raising=False)
    head = [sys.executable, "-m", "torch.distributed.run"]
    one = Launcher(kind="torchrun", nproc_per_node=2)
    assert command(one, ["pretrain"]) == [*head, "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
                                          "-m", "medalign", "pretrain"]
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert command(one, ["pretrain"])[0] == sys.executable  # one node: no srun even inside SLURM
    two = Launcher(kind="torchrun", nproc_per_node=8, nnodes=3, rdzv_endpoint="h:1234")
    assert command(two, ["x"]) == ["srun", "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *head,
                                   "--nnodes", "3", "--nproc-per-node", "8", "--rdzv-backend", "c10d",
                                   "--rdzv-endpoint", "h:1234", "--rdzv-id", "7", "-m", "medalign", "x"]
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("MASTER_ADDR", "m")
    plain = command(Launcher(kind="torchrun", nproc_per_node=1, nnodes=2), ["x"])
    assert plain[0] == sys.executable and "m:29500" in plain and plain[plain.index("--rdzv-id") + 1] == "medalign"
    assert command(Launcher(kind="torchrun", nproc_per_node=1, nnodes=2, srun=False, rdzv_id="a"), ["x"])[0] \
        == sys.executable


def test_launcher_rejects_bad_values():
    from medalign import config
    from medalign.errors import ConfigError

    for bad in ({"kind": "mpirun", "nproc_per_node": 2}, {"kind": "torchrun", "nproc_per_node": 0},
                {"kind": "torchrun", "nproc_per_node": 2, "nnodes": 0}, {"kind": "torchrun"},
                {"kind": "torchrun", "nproc_per_node": 2, "gpus": 2}):
        with pytest.raises(ConfigError):
            config.validate(Launcher, bad, "test")


def test_launch_module_imports_without_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, medalign.pipeline.launch; print('torch' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.stdout.strip() == "False", r.stderr


# -- run(): signals and exit codes ----------------------------------------------------------------

TRAPS_TERM = """
import signal, sys, time
def stop(signum, frame):
    print("child got", signal.Signals(signum).name, flush=True)
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1], "w").close()
time.sleep(60)
print("child was never signalled", flush=True)
"""


def _signal_when_ready(flag: Path, signum: int) -> threading.Thread:
    def go():
        deadline = time.monotonic() + 30
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_parent_reaches_the_child_as_sigterm(signum, tmp_path, capfd):
    before = {s: signal.getsignal(s) for s in launch.FORWARDED}
    flag = tmp_path / "ready"
    _signal_when_ready(flag, signum)
    t0 = time.monotonic()
    with pytest.raises(Preempted) as e:
        launch.run([sys.executable, "-c", TRAPS_TERM, str(flag)], "pretrain")
    assert time.monotonic() - t0 < 30
    lines = capfd.readouterr().out.splitlines()
    assert lines[0].startswith("[pretrain] launching: ")  # the command, for the log
    assert lines[-1] == "child got SIGTERM"
    msg = str(e.value)
    assert "\n" not in msg and "pretrain" in msg and signal.Signals(signum).name in msg and "rerun to resume" in msg
    assert e.value.exit_code == 75
    assert {s: signal.getsignal(s) for s in launch.FORWARDED} == before  # the old handlers are back


def test_a_failed_child_is_one_line_naming_the_step_and_code(capfd):
    with pytest.raises(MedalignError) as e:
        launch.run([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(1)"], "pretrain")
    assert not isinstance(e.value, Preempted) and e.value.exit_code == 1
    msg = str(e.value)
    assert "\n" not in msg and "'pretrain'" in msg and "exit code 1" in msg
    assert "boom" in capfd.readouterr().err  # the child's own output went through


def test_a_child_that_exits_75_itself_is_preempted_and_success_is_quiet():
    with pytest.raises(Preempted):
        launch.run([sys.executable, "-c", "raise SystemExit(75)"], "pretrain")
    launch.run([sys.executable, "-c", "pass"], "pretrain")  # exit 0: returns
    with pytest.raises(MedalignError, match="cannot start"):
        launch.run(["/nonexistent/torchrun"], "pretrain")


# -- the real thing: 2 CPU processes over gloo -------------------------------------------------------

def test_torchrun_step_is_preempted_through_the_agent_then_resumes(demo_set, tmp_path, capfd, monkeypatch):
    """command() + run() on `medalign pretrain` with 2 ranks: SIGUSR1 to this process makes both
    workers checkpoint (SIGTERM through torchrun's agent), run raises Preempted, and the same
    command resumes from that checkpoint and finishes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    out = tmp_path / "out"
    argv = command(Launcher(kind="torchrun", nproc_per_node=2),
                   ["pretrain", f"data.manifest={demo_set}", "backbone.name=test_resnet", "backbone.img_size=32",
                    "method.name=simclr", "data.batch_size=4", "optim.epochs=10", "runtime.device=cpu",
                    "--out", str(out)])
    # 2 steps per epoch per rank (see test_distributed), 20 in all: signal once the first is logged
    flag = tmp_path / "first-step"

    def first_step():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            logs = glob.glob(str(tmp_path / ".*" / "log.jsonl"))
            if logs and os.path.getsize(logs[0]) > 0:
                flag.touch()
                return
            time.sleep(0.2)

    threading.Thread(target=first_step, daemon=True).start()
    _signal_when_ready(flag, signal.SIGUSR1)
    with pytest.raises(Preempted, match="SIGUSR1"):
        launch.run(argv, "pretrain")
    first = capfd.readouterr()
    assert "stopped by SIGTERM" in first.err + first.out, (first.out[-2000:], first.err[-3000:])
    assert not out.exists()  # not published: an in-progress folder with resume state
    launch.run(argv, "pretrain")
    second = capfd.readouterr()
    assert "resuming the run interrupted at step" in second.out, second.out[-2000:]
    assert second.out.count("[pretrain] done") == 1
    assert (out / "checkpoint" / "model.safetensors").is_file()


PIPELINE = """
workdir: {work}
steps:
  pretrain:
    launcher: {{kind: torchrun, nproc_per_node: 2}}
    config:
      backbone: {{name: test_resnet, img_size: 32}}
      method: {{name: simclr}}
      data: {{manifest: {manifest}, batch_size: 4}}
      optim: {{epochs: 1, warmup_epochs: 0}}
      runtime: {{device: cpu}}
  finetune:
    config:
      backbone: {{checkpoint: "${{pretrain}}"}}
      data: {{manifest: {manifest}, batch_size: 4}}
      optim: {{epochs: 1, warmup_epochs: 0}}
"""


def test_a_launcher_step_runs_under_torchrun_and_the_rest_in_the_parent(demo_set, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(work=tmp_path / "work", manifest=demo_set))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "medalign", "run", str(path)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    launched = [line for line in r.stdout.splitlines() if "] launching: " in line]
    assert len(launched) == 1 and launched[0].startswith("[pretrain]") and "--nproc-per-node 2" in launched[0]
    assert r.stdout.count("[pretrain] done") == 1 and "[finetune] running finetune" in r.stdout
    pretrain = next((tmp_path / "work" / "pretrain").glob("[0-9a-f]*"))
    steps = [json.loads(x) for x in (pretrain / "log.jsonl").read_text().splitlines() if '"summary"' not in x]
    assert len(steps) == 2  # 20 images over 2 ranks of batch 4: 2 steps each (one process would take 5)

    parent = [rec for rec in history.read(tmp_path / "work") if len(rec["steps"]) == 2]
    assert [(s["step"], s["outcome"]) for s in parent[0]["steps"]] == [("pretrain", "ran"), ("finetune", "ran")]
    again = subprocess.run([sys.executable, "-m", "medalign", "run", str(path)], capture_output=True, text=True,
                           timeout=300, env=env)
    assert again.returncode == 0 and "launching" not in again.stdout and again.stdout.count("] cached ") == 2
