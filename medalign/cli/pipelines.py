"""`medalign run|status|history|gc`: pipelines, what they did, and what they left behind. No torch."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from medalign.errors import ConfigError, human


def add_parsers(sub) -> None:
    p = sub.add_parser("run", help="run a pipeline, recomputing only stale steps")
    p.add_argument("pipeline", type=Path)
    p.add_argument("overrides", nargs="*", metavar="step.key=value", help="e.g. finetune.optim.lr=1e-3")
    p.add_argument("--workdir", type=Path, help="override the pipeline's workdir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--only", action="append", default=[], metavar="STEP",
                       help="run only this step (repeatable); its upstream steps must have outputs")
    which.add_argument("--until", metavar="STEP", help="run this step and the steps it needs, nothing after")
    p.add_argument("--force", nargs="?", const="*", action="append", metavar="STEP",
                   help="rerun STEP even if cached, discarding its interrupted run (repeatable); alone, after "
                        "the pipeline: every step")
    p.add_argument("--dry-run", action="store_true", help="print what would run and why; run nothing")
    p.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                   help="give up (exit 3) if another run holds a step for longer (default: wait)")
    p.add_argument("--json", action="store_true",
                   help="progress on stderr, and on stdout one JSON object: the run's history record")
    p.set_defaults(func=_run)

    p = sub.add_parser("status", help="show each pipeline step as cached, running, interrupted or stale, and why")
    p.add_argument("pipeline", type=Path)
    p.add_argument("overrides", nargs="*", metavar="step.key=value")
    p.add_argument("--workdir", type=Path, help="override the pipeline's workdir")
    p.add_argument("--json", action="store_true", help="one JSON list of the steps")
    p.set_defaults(func=_status)

    p = sub.add_parser("history", help="list the runs recorded in a work directory")
    p.add_argument("pipeline", type=Path, nargs="?", help="a pipeline file: its workdir (or give --workdir)")
    p.add_argument("--workdir", type=Path)
    p.add_argument("-n", "--last", type=int, default=20, metavar="N", help="the last N runs (default 20; 0: all)")
    p.add_argument("--json", action="store_true", help="one JSON list of the records")
    p.set_defaults(func=_history)

    p = sub.add_parser("gc", help="delete stage outputs that no given pipeline and no recent run needs",
                       description="Lists (and with --yes deletes) the outputs in a work directory that none of "
                                   "the given pipelines plans today and no run of the last --keep-days recorded.")
    p.add_argument("pipelines", type=Path, nargs="*", metavar="PIPELINE", help="pipeline files whose outputs stay")
    p.add_argument("--workdir", type=Path, help="the work directory (default: the first pipeline's)")
    p.add_argument("--keep-days", type=float, default=7.0, help="keep what runs of the last N days used (default 7)")
    p.add_argument("--dry-run", action="store_true", help="list only (the default without --yes)")
    p.add_argument("--yes", action="store_true", help="delete what is listed")
    p.set_defaults(func=_gc)


def _run(args) -> None:
    from medalign import api
    from medalign.pipeline import history, ranks, runner, spec

    force = True if "*" in (args.force or ()) else list(args.force or ())
    if args.dry_run:
        pipeline = spec.load(args.pipeline, args.overrides, args.workdir)
        rows = runner.preview(pipeline, only=args.only, until=args.until, force=force)
        _table(rows, ["step", "action", "state", "detail"], args.json)
        return
    stdout = sys.stdout
    if args.json:
        sys.stdout = sys.stderr  # the progress lines; the record alone goes to stdout
    try:
        steps = api.run(args.pipeline, args.overrides, workdir=args.workdir, only=args.only, until=args.until,
                        force=force, lock_timeout=args.lock_timeout)
    finally:
        sys.stdout = stdout
        if args.json and ranks.rank() == 0:
            workdir = args.workdir or spec.load(args.pipeline, args.overrides).workdir
            mine = [r for r in history.read(workdir) if r.get("pid") == os.getpid()]
            print(json.dumps(mine[-1] if mine else None, indent=2))
    if ranks.rank() == 0 and not args.json and steps:
        last, out = list(steps.items())[-1]
        show(last, out.metrics)
        if out.metrics.get("report"):
            print(f"report: {out.path / out.metrics['report']}")


def _status(args) -> None:
    from medalign.pipeline import runner, spec

    pipeline = spec.load(args.pipeline, args.overrides, args.workdir)
    _table([runner.describe(p) for p in runner.plan(pipeline)], ["step", "state", "detail"], args.json)


def _table(rows: list[dict], columns: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    widths = {c: max(len(str(r[c])) for r in rows) for c in columns[:-1]}
    for r in rows:
        print("  ".join(f"{r[c]:<{widths[c]}}" for c in columns[:-1]) + f"  {r[columns[-1]]}")


def _workdir(args) -> Path:
    from medalign.pipeline import spec

    if args.workdir:
        return args.workdir
    pipeline = getattr(args, "pipeline", None) or (args.pipelines[0] if getattr(args, "pipelines", None) else None)
    if pipeline is None:
        raise ConfigError("name a pipeline file or --workdir")
    return spec.load(pipeline).workdir


def _history(args) -> None:
    from medalign.pipeline import history

    records = history.read(_workdir(args))
    records = records[-args.last:] if args.last else records
    if args.json:
        print(json.dumps(records, indent=2))
        return
    for r in records:
        counts = {}
        for s in r.get("steps", []):
            counts[s["outcome"]] = counts.get(s["outcome"], 0) + 1
        steps = ", ".join(f"{n} {what}" for what, n in counts.items()) or "no step"
        print(f"{r['start']}  {r.get('seconds', 0):>8.1f} s  {r.get('status', '?'):<11}  {r['host']}  "
              f"{Path(r['pipeline']).name}  {steps}")


def _gc(args) -> None:
    from medalign.pipeline import gc, spec

    workdir = _workdir(args)
    if not workdir.is_dir():
        raise ConfigError(f"no work directory {workdir}")
    pipelines = [spec.load(p, workdir=args.workdir) for p in args.pipelines]
    garbage = gc.find(workdir, pipelines, args.keep_days)
    for g in garbage:
        print(f"{'delete' if args.yes and not args.dry_run else 'would delete'}  {human(g.bytes):>10}  "
              f"{g.what:<11}  {g.path}")
    total = human(sum(g.bytes for g in garbage))
    if not garbage:
        print(f"nothing to delete in {workdir}")
    elif args.yes and not args.dry_run:
        gc.remove(garbage)
        print(f"deleted {len(garbage)} folder(s), {total} freed")
    else:
        print(f"{len(garbage)} folder(s), {total}; rerun with --yes to delete them")


def show(name: str, metrics: dict) -> None:
    """A step's metrics as the CLI prints them after it ran."""
    print(f"{name} metrics:")
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"  {k:<20} {v:.4f}")
        elif isinstance(v, int | str) or v is None:
            print(f"  {k:<20} {v}")
    if "per_run" in metrics:  # collect: each metric over the runs
        pooled = metrics.get("pooled") or {}
        for k, mean in metrics["mean"].items():
            print(f"  {k:<20} {mean:.4f} +- {metrics['std'][k]:.4f} over {len(metrics['per_run'][k])} runs"
                  + (f"; pooled {pooled[k]:.4f}" if isinstance(pooled.get(k), float) else ""))
    cm = metrics.get("confusion_matrix")
    if cm:
        width = max(len(c) for c in cm["classes"]) + 2
        print("  confusion matrix (rows true, columns predicted)")
        print(" " * (width + 2) + "".join(f"{c:>{width}}" for c in cm["classes"]))
        for c, row in zip(cm["classes"], cm["rows_true_cols_pred"]):
            print(f"  {c:<{width}}" + "".join(f"{n:>{width}}" for n in row))
