"""Plans a pipeline against its cache, and `execute`: the one path by which any stage run happens.

`medalign STAGE` and `medalign run` both call `execute` for each step: under the step's lock it
re-checks the cache, adopts or creates the in-progress folder, runs the stage there and renames
the result into place. Under torchrun rank 0 alone locks, prints and touches folders; every rank
runs the stage in the folder rank 0 names.
"""
from __future__ import annotations

import contextlib
import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medalign import config
from medalign.config import STAGES, Stage
from medalign.errors import MedalignError
from medalign.pipeline import cache, lock, ranks, store
from medalign.pipeline.spec import Pipeline, Step, resolve

say = functools.partial(print, flush=True)  # progress lines reach a log file as they happen


@dataclass
class Planned:
    step: Step
    key: str
    record: dict
    out: Path


def plan(pipeline: Pipeline) -> list[Planned]:
    """Every step's key, computed from configs and upstream keys alone: nothing needs to run first."""
    keys: dict[str, str] = {}
    planned = []
    for step in pipeline.steps:
        rec = cache.record(step.stage, step.cfg, {d: keys[d] for d in step.deps})
        key = keys[step.name] = cache.key_of(rec)
        planned.append(Planned(step, key, rec, pipeline.workdir / step.group / key))
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
    return "stale", cache.explain(p.out, p.record)


def run(pipeline: Pipeline, force: bool = False, lock_timeout: float | None = None,
        echo: Callable[[str], None] = say) -> dict[str, Path]:
    """Runs the steps in order, each through `execute`; returns every step's output folder."""
    outputs: dict[str, Path] = {}
    for p in plan(pipeline):
        outputs[p.step.name] = p.out
        stage = STAGES[p.step.stage]
        cfg = config.validate(stage.config, resolve(p.step.raw, outputs), f"{pipeline.path} step '{p.step.name}'")
        execute(stage, cfg, p.out, p.record, label=p.step.name, force=force, lock_timeout=lock_timeout, echo=echo)
    return outputs


def execute(stage: Stage, cfg: config.Section, out: Path, record: dict, *, label: str, force: bool = False,
            lock_timeout: float | None = None, echo: Callable[[str], None] = say) -> tuple[dict, bool]:
    """Runs `stage` into `out` unless it holds an output of `record` already; returns (metrics, cached).

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
            partial = None if metrics is not None else _prepare(stage, cfg, out, record, force, label, echo)
        except BaseException as e:
            ranks.share(("error", e))  # the other ranks wait for word from rank 0: they fail alike
            raise
        if metrics is not None:
            echo(f"[{label}] cached  {out}")
            _report(metrics, out, label, echo)
            ranks.share(("cached", metrics))
            return metrics, True
        ranks.share(("run", partial))
        metrics = stage.run(cfg, partial)
        ranks.barrier()  # every rank is done with the folder before it moves
        store.publish(partial, out, metrics)
        ranks.share(("done", metrics))  # and none reads `out` before it is there
        echo(f"[{label}] done    {out}")
        _report(metrics, out, label, echo)
        return metrics, False


def _report(metrics: dict, out: Path, label: str, echo: Callable[[str], None]) -> None:
    if metrics.get("report"):  # a step that wrote a page says where, so `make demo` ends with its path
        echo(f"[{label}] report  {out / metrics['report']}")


def _prepare(stage: Stage, cfg: config.Section, out: Path, record: dict, force: bool, label: str,
             echo: Callable[[str], None]) -> Path:
    """The in-progress folder for `record`, with config.yaml and key.json written."""
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
    else:  # nothing there to resume from (no record, or another record and no resume state)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        reason = "forced" if force else cache.explain(out, record)
    (partial / "config.yaml").write_text(config.dump(cfg))
    (partial / "key.json").write_text(json.dumps(record, indent=2) + "\n")
    echo(f"[{label}] running {stage.name}: {reason}")
    return partial


def _follow(stage: Stage, cfg: config.Section) -> tuple[dict, bool]:
    """A rank other than 0: does what rank 0 says, running the stage where rank 0 prepared it."""
    what, payload = ranks.share(None)
    if what == "error":
        raise payload
    if what == "cached":
        return payload, True
    stage.run(cfg, payload)
    ranks.barrier()
    _, metrics = ranks.share(None)
    return metrics, False


def _whom(h: lock.Holder | None) -> str:
    return f"pid {h.pid} on host {h.host} (since {h.since})" if h else "another run"
