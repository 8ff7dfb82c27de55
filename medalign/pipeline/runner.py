"""Plans a pipeline against its cache, and `execute`: the one path by which any stage run happens.

`medalign STAGE` and `medalign run` both call `execute` for each step: under the step's lock it
re-checks the cache, adopts or creates the in-progress folder, runs the stage there and renames
the result into place. Under torchrun rank 0 alone locks, prints and touches folders; every rank
runs the stage in the folder rank 0 names. A step with a `launcher` runs as `medalign run --only
STEP` under torchrun in child processes (pipeline.launch), which come back here as ranks.
"""
from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medalign import config, preemption
from medalign.config import STAGES, Stage
from medalign.errors import ConfigError, MedalignError, Preempted
from medalign.pipeline import cache, history, launch, lock, ranks, store
from medalign.pipeline.spec import Pipeline, Step, resolve

say = functools.partial(print, flush=True)  # progress lines reach a log file as they happen


@dataclass
class Planned:
    step: Step
    key: str
    record: dict
    inventories: dict[str, dict]  # of its outside manifests, as the record saw them
    out: Path


def plan(pipeline: Pipeline) -> list[Planned]:
    """Every step's key, computed from configs and upstream keys alone: nothing needs to run first."""
    keys: dict[str, str] = {}
    planned = []
    for step in pipeline.steps:
        rec, inventories = cache.record(step.stage, step.cfg, {d: keys[d] for d in step.deps})
        key = keys[step.name] = cache.key_of(rec)
        planned.append(Planned(step, key, rec, inventories, pipeline.workdir / step.group / key))
    return planned


def state(p: Planned) -> tuple[str, str]:
    """(cached | running | interrupted | stale, and the detail `medalign status` prints after it)."""
    if store.cached(p.out, p.record) is not None:
        return "cached", str(p.out)
    holder = lock.holder(store.lock_path(p.out))
    if holder:
        return "running", f"pid {holder.pid}, host {holder.host}, since {holder.since}"
    partial = store.partial_dir(p.out)
    if partial.is_dir():
        at = store.progress(partial)
        return "interrupted", f"at step {at[0]}/{at[1]}, the next run resumes" if at else "before its first checkpoint"
    return "stale", cache.explain(p.out, p.record, p.inventories)


def describe(p: Planned) -> dict:
    """A step as `status --json` prints it."""
    st, detail = state(p)
    return {"step": p.step.name, "group": p.step.group, "stage": p.step.stage, "key": p.key, "out": str(p.out),
            "state": st, "detail": detail}


ACTIONS = {"cached": "keep", "stale": "run", "interrupted": "resume", "running": "wait for it"}


def preview(pipeline: Pipeline, *, only: list[str] = (), until: str | None = None,
            force: bool | Collection[str] = False) -> list[dict]:
    """What `run` would do with each selected step (`--dry-run`), running nothing."""
    rows = []
    for p in select(plan(pipeline), only, until):
        row = describe(p)
        forced = _forced(force, p.step)
        row["action"] = "run (forced)" if forced and row["state"] != "running" else ACTIONS[row["state"]]
        rows.append(row)
    return rows


def select(planned: list[Planned], only: list[str] = (), until: str | None = None) -> list[Planned]:
    """The steps `--only` names (a step of the file stands for all its sweep runs), or `--until`'s
    step with everything it depends on; every step when neither is given."""
    named = {n for p in planned for n in (p.step.name, p.step.group)}
    for name in [*only, *([until] if until else [])]:
        if name not in named:
            steps = ", ".join(dict.fromkeys(p.step.name for p in planned))
            raise ConfigError(f"no step '{name}' in the pipeline (steps: {steps})")
    if only:
        return [p for p in planned if {p.step.name, p.step.group} & set(only)]
    if until:
        wanted = {p.step.name for p in planned if until in (p.step.name, p.step.group)}
        for p in reversed(planned):  # dependencies come earlier in `planned`, so one pass back suffices
            if p.step.name in wanted:
                wanted.update(p.step.deps)
        return [p for p in planned if p.step.name in wanted]
    return planned


def run(pipeline: Pipeline, *, only: list[str] = (), until: str | None = None, force: bool | Collection[str] = False,
        lock_timeout: float | None = None, echo: Callable[[str], None] = say,
        entry: history.Entry | None = None) -> dict[str, Path]:
    """Runs the selected steps in order, each through `execute`; returns every step's output folder.

    `force` is True (every selected step) or step names. Steps outside the selection are not run; a
    selected step whose upstream has no output stops the run before anything starts. An `entry`
    collects each step's outcome and is appended to the work directory's history however the run ends.
    """
    entry = entry if ranks.rank() == 0 else None  # under torchrun rank 0 speaks for all
    try:
        outputs = _run(pipeline, only, until, force, lock_timeout, echo, entry)
    except BaseException as e:
        if entry:
            entry.finish(exit_code(e))
        raise
    if entry:
        entry.finish(0)
    return outputs


def _run(pipeline: Pipeline, only: list[str], until: str | None, force: bool | Collection[str],
         lock_timeout: float | None, echo: Callable[[str], None], entry: history.Entry | None) -> dict[str, Path]:
    planned = {p.step.name: p for p in plan(pipeline)}
    outputs = {name: p.out for name, p in planned.items()}
    chosen = select(list(planned.values()), only, until)
    if force is not True:
        select(list(planned.values()), list(force or ()))  # a misspelt --force STEP is an error, not a no-op
    names = {p.step.name for p in chosen}
    missing = [(p.step.name, d) for p in chosen for d in p.step.deps
               if d not in names and store.cached(outputs[d], planned[d].record) is None]
    if missing:
        step, dep = missing[0]
        raise ConfigError(f"step '{step}' needs '{dep}', which has no output and is not selected; "
                          f"run it first (--until {step} runs both)")
    with preemption.requested() as stop:
        for p in chosen:
            # a stage without a training loop got SIGTERM/SIGUSR1: stop between steps (one process only:
            # ranks could each see it before a different step)
            if stop.signal and ranks.world() == 1:
                raise Preempted(f"stopped by {stop.signal} before step '{p.step.name}'; rerun to continue")
            forced = _forced(force, p.step)
            started, outcome, code = time.time(), "failed", 1
            try:
                launched = p.step.launcher and not launch.inside_torchrun()
                if launched and (forced or store.cached(p.out, p.record) is None):
                    outcome = _launch(pipeline, p, forced, lock_timeout)
                else:
                    stage = STAGES[p.step.stage]
                    where = f"{pipeline.path} step '{p.step.name}'"
                    cfg = config.validate(stage.config, resolve(p.step.raw, outputs), where)
                    _, outcome = execute(stage, cfg, p.out, p.record, p.inventories, label=p.step.name,
                                         force=forced, lock_timeout=lock_timeout, echo=echo)
                code = 0
            except BaseException as e:
                code = exit_code(e)
                raise
            finally:
                if entry:
                    entry.step(p.step.name, p.step.stage, p.key, p.out, outcome, time.time() - started, code)
    return outputs


def _forced(force: bool | Collection[str], step: Step) -> bool:
    return force is True or bool({step.name, step.group} & set(force or ()))


def _launch(pipeline: Pipeline, p: Planned, forced: bool, lock_timeout: float | None) -> str:
    """Runs step `p` as `medalign run --only STEP` under its launcher (torchrun), in child processes;
    returns its outcome as the child's own history record tells it."""
    args = ["run", str(pipeline.path), "--only", p.step.name, "--workdir", str(pipeline.workdir),
            *pipeline.overrides]
    args += ["--force", p.step.name] if forced else []
    args += ["--lock-timeout", str(lock_timeout)] if lock_timeout is not None else []
    before = len(history.read(pipeline.workdir))
    launch.run(launch.command(p.step.launcher, args), p.step.name)
    mine = [s for r in history.read(pipeline.workdir)[before:] for s in r.get("steps", []) if s.get("key") == p.key]
    return mine[-1]["outcome"] if mine else "ran"


def exit_code(e: BaseException) -> int:
    """What the CLI exits with for `e`: docs/scheduling.md's table."""
    if isinstance(e, MedalignError):
        return e.exit_code
    return 130 if isinstance(e, KeyboardInterrupt) else 1


def execute(stage: Stage, cfg: config.Section, out: Path, record: dict, inventories: dict[str, dict], *,
            label: str, force: bool = False,
            lock_timeout: float | None = None, echo: Callable[[str], None] = say) -> tuple[dict, str]:
    """Runs `stage` into `out` unless it holds an output of `record` already; returns (metrics, outcome):
    cached, ran or resumed.

    Under the lock: cached iff `out` has COMPLETE and its key.json equals `record`. Otherwise the
    in-progress folder is adopted (or made; `force` discards it first), config.yaml and key.json
    are written, the stage runs in it, then metrics.json, COMPLETE, and the rename into place. On
    any exception the in-progress folder stays for the next run to resume from.
    """
    if ranks.rank() != 0:
        return _follow(stage, cfg)
    with contextlib.ExitStack() as held:
        try:
            if out.exists() and not store.is_complete(out) and (not out.is_dir() or any(out.iterdir())):
                raise MedalignError(f"{out} exists and is not a medalign output; it is left alone, "
                                    "choose another folder")
            out.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(lock.acquire(store.lock_path(out), str(out), lock_timeout,
                                            on_wait=lambda h: echo(f"[{label}] waiting for {_whom(h)}")))
            metrics = None if force else store.cached(out, record)
            partial, outcome = (None, "cached") if metrics is not None else \
                _prepare(stage, cfg, out, record, inventories, force, label, echo)
        except BaseException as e:
            ranks.share(("error", e))  # the other ranks wait for word from rank 0: they fail alike
            raise
        if metrics is not None:
            echo(f"[{label}] cached  {out}")
            _report(metrics, out, label, echo)
            ranks.share(("cached", metrics))
            return metrics, outcome
        ranks.share(("run", partial))
        metrics = stage.run(cfg, partial)
        ranks.barrier()  # every rank is done with the folder before it moves
        store.publish(partial, out, metrics)
        ranks.share(("done", metrics))  # and none reads `out` before it is there
        echo(f"[{label}] done    {out}")
        _report(metrics, out, label, echo)
        return metrics, outcome


def _report(metrics: dict, out: Path, label: str, echo: Callable[[str], None]) -> None:
    if metrics.get("report"):  # a step that wrote a page says where, so `make demo` ends with its path
        echo(f"[{label}] report  {out / metrics['report']}")


def _prepare(stage: Stage, cfg: config.Section, out: Path, record: dict, inventories: dict[str, dict], force: bool,
             label: str, echo: Callable[[str], None]) -> tuple[Path, str]:
    """The in-progress folder for `record`, with config.yaml, key.json and the inputs' inventory
    written, and whether the stage resumes there (resumed) or starts afresh (ran)."""
    partial = store.partial_dir(out)
    if force:
        shutil.rmtree(partial, ignore_errors=True)
    try:
        old = json.loads((partial / "key.json").read_text())
    except (OSError, ValueError):
        old = None  # no key.json: that run died before its stage began
    if old is not None and old != record and (partial / "resume").exists():
        raise MedalignError(f"cannot resume {out}: the interrupted run had "
                            f"{'; '.join(cache.diff(old, record)) or 'another record'}; use --force to start over")
    if old == record:
        at = store.progress(partial)
        reason = (f"resuming the run interrupted at step {at[0]}/{at[1]}" if at
                  else "restarting the run interrupted before its first checkpoint")
        outcome = "resumed" if at else "ran"
    else:  # nothing there to resume from (no record, or another record and no resume state)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        reason, outcome = "forced" if force else cache.explain(out, record, inventories), "ran"
    (partial / "config.yaml").write_text(config.dump(cfg))
    (partial / "key.json").write_text(json.dumps(record, indent=2) + "\n")
    (partial / cache.INVENTORY).write_text(json.dumps(inventories) + "\n")
    echo(f"[{label}] running {stage.name}: {reason}")
    return partial, outcome


def _follow(stage: Stage, cfg: config.Section) -> tuple[dict, bool]:
    """A rank other than 0: does what rank 0 says, running the stage where rank 0 prepared it."""
    what, payload = ranks.share(None)
    if what == "error":
        raise payload
    if what == "cached":
        return payload, "cached"
    stage.run(cfg, payload)
    ranks.barrier()
    _, metrics = ranks.share(None)
    return metrics, "ran"


def _whom(h: lock.Holder | None) -> str:
    return f"pid {h.pid} on host {h.host} (since {h.since})" if h else "another run"
