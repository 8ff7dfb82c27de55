"""A pipeline step on several processes, GPUs or nodes: torch's own launcher, started and waited for.

    pretrain:
      base: ../configs/pretrain/dino_vit_tiny.yaml
      launcher: {kind: torchrun, nproc_per_node: 4, nnodes: 2}

`medalign run` runs such a step as a child, `medalign run PIPELINE --only STEP ...` under
`python -m torch.distributed.run` (torchrun; no launcher of medalign's own), waits for it and goes
on with the rest of the pipeline in its own process. `command` builds the child's argv, `run`
starts it and waits. Nothing here imports torch: `medalign status` starts in well under a second.

One node: `torchrun --standalone --nnodes 1 --nproc-per-node N`, a rendezvous on a free local port.

Several nodes: a c10d rendezvous at `rdzv_endpoint` (default $MASTER_ADDR:$MASTER_PORT, else this
host, port 29500) under the id `rdzv_id` (default $SLURM_JOB_ID, else "medalign"). Every node needs
one torchrun agent with the same options. Inside a SLURM allocation ($SLURM_JOB_ID set) medalign
starts them itself, prefixing the command with `srun --nodes=M --ntasks-per-node=1
--kill-on-bad-exit=1`: one job step whose one task per node is that node's agent. srun, not ssh or
a launcher of ours, because SLURM then accounts for, signals and cleans up every agent. Outside
SLURM (or with `srun: false`) medalign starts this node's agent only and prints the command; start
the same command on each other node.

Signals: the child runs in a session of its own, so a terminal's Ctrl-C reaches the parent alone.
The first SIGTERM, SIGUSR1, SIGINT or SIGHUP to the parent reaches the child as SIGTERM (once: a
second SIGTERM would cut short the agent's wait for its workers). torchrun's agent, and srun, hand
SIGTERM on to the workers, whose training loop checkpoints and stops (medalign.engine); SIGUSR1
itself would kill the agent outright, as it handles only TERM, INT, HUP and QUIT. The agent gives
the workers 30 s after SIGTERM before SIGKILL (TORCH_ELASTIC_SHUTDOWN_TIMEOUT on torch versions
that read it). The parent then raises Preempted (exit 75): rerun to resume.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from typing import Literal

from pydantic import Field

from medalign.config.loading import Section
from medalign.errors import MedalignError, Preempted

DEFAULT_PORT = 29500
FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)


class Launcher(Section):
    """How a step's processes are started: `launcher: {kind: torchrun, nproc_per_node: 4, nnodes: 2}`."""

    kind: Literal["torchrun"] = Field(description="the launcher: torchrun (python -m torch.distributed.run)")
    nproc_per_node: int = Field(ge=1, description="processes per node, one per GPU")
    nnodes: int = Field(1, ge=1, description="nodes; above 1, a c10d rendezvous (one srun step under SLURM)")
    rdzv_endpoint: str | None = Field(None, description="HOST:PORT of the rendezvous when nnodes > 1 "
                                      f"(default $MASTER_ADDR:$MASTER_PORT, else this host:{DEFAULT_PORT})")
    rdzv_id: str | None = Field(None, description="rendezvous id shared by the nodes when nnodes > 1 "
                                "(default $SLURM_JOB_ID, else medalign)")
    srun: bool | None = Field(None, description="start one agent per node with srun "
                              "(default: when nnodes > 1 inside a SLURM allocation)")


def inside_torchrun() -> bool:
    """True in a worker torchrun started: a step's child must run it, not launch it again."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def command(launcher: Launcher, args: list[str]) -> list[str]:
    """The argv that runs `medalign *args` under torchrun as `launcher` says."""
    n, m = str(launcher.nproc_per_node), launcher.nnodes
    argv = [sys.executable, "-m", "torch.distributed.run"]
    if m == 1:
        argv += ["--standalone", "--nnodes", "1", "--nproc-per-node", n]
    else:
        argv += ["--nnodes", str(m), "--nproc-per-node", n, "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", launcher.rdzv_endpoint or _endpoint(),
                 "--rdzv-id", launcher.rdzv_id or os.environ.get("SLURM_JOB_ID") or "medalign"]
    argv += ["-m", "medalign", *args]
    srun = launcher.srun if launcher.srun is not None else m > 1 and "SLURM_JOB_ID" in os.environ
    if srun:
        argv = ["srun", f"--nodes={m}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *argv]
    return argv


def _endpoint() -> str:
    host = os.environ.get("MASTER_ADDR") or os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    return f"{host}:{os.environ.get('MASTER_PORT') or DEFAULT_PORT}"


def run(argv: list[str], label: str) -> None:
    """Runs `argv` to its end, its output going where ours goes; a signal to us reaches it as SIGTERM.

    Raises Preempted if we were signalled (or the child itself exited 75), MedalignError naming
    `label` and the exit code if the child failed otherwise: it has printed its own error already.
    """
    print(f"[{label}] launching: {shlex.join(argv)}", flush=True)
    got: list[str] = []
    child: list[subprocess.Popen] = []

    def forward(signum, frame) -> None:
        got.append(signal.Signals(signum).name)
        # once: a second SIGTERM would cut short the agent's wait for the workers' checkpoint
        if len(got) == 1 and child and child[0].poll() is None:
            child[0].send_signal(signal.SIGTERM)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # only there can handlers be set
        for s in FORWARDED:
            previous[s] = signal.signal(s, forward)
    try:
        try:
            # our stdout as it is now: `run --json` points it at stderr, keeping the real one for the JSON
            out = sys.stdout if _has_fd(sys.stdout) else None
            child.append(subprocess.Popen(argv, start_new_session=True, stdout=out))
        except OSError as e:
            raise MedalignError(f"step '{label}': cannot start {argv[0]}: {e.strerror}") from None
        if got:  # a signal came before the child was there to pass it to
            child[0].send_signal(signal.SIGTERM)
        code = child[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if got:
        raise Preempted(f"step '{label}' stopped by {got[0]} (passed on as SIGTERM); rerun to resume")
    if code == Preempted.exit_code:
        raise Preempted(f"step '{label}' was preempted (exit code {code}); rerun to resume")
    if code != 0:
        raise MedalignError(f"step '{label}' failed: {_how(code)} from {_name(argv)} (its own error is above)")


def _has_fd(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):  # pytest's capture, a notebook's: the child inherits ours
        return False


def _name(argv: list[str]) -> str:
    return "srun" if argv[0] == "srun" else "torchrun" if "torch.distributed.run" in argv else os.path.basename(argv[0])


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
