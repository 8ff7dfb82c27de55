"""The medalign command line: one subcommand per stage, plus `run` and `status` for pipelines.

    medalign demo-data data/demo
    medalign pretrain -c configs/pretrain/dino_vit_tiny.yaml data.manifest=data/demo/manifest.csv
    medalign run pipelines/quickstart.yaml finetune.optim.lr=2e-3
    medalign status pipelines/quickstart.yaml

Heavy libraries (torch, timm, monai, peft) are imported by the stage that runs, never here:
`--help`, `status` and a fully cached `run` start in well under a second.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medalign import __version__, config
from medalign.errors import MedalignError
from medalign.cli import cache, evidence, manifest, models, weights
from medalign.config import STAGES


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    # key=value overrides may come after options too (`--out x a.b=1`); argparse alone stops at the first
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides += extra
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except MedalignError as e:
        print(f"medalign: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("medalign: interrupted", file=sys.stderr)
        sys.exit(130)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medalign", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"medalign {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="config keys (set in the YAML or as key=value):\n"
                                  + "\n".join(config.describe(stage.config)))
        if stage.name == "demo-data":
            p.add_argument("out", type=Path, help="folder to write the images and manifest.csv into")
        else:
            p.add_argument("--out", type=Path, help="output folder (default: WORKDIR/STAGE/KEY, cached by key)")
            p.add_argument("--workdir", type=Path, default=Path("runs"), help="where keyed outputs go (default: runs)")
        p.add_argument("-c", "--config", type=Path, help="stage config YAML")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-3")
        _run_options(p, "rerun even if cached, discarding an interrupted run")
        p.set_defaults(func=_run_stage, stage=stage.name)

    p = sub.add_parser("run", help="run a pipeline, recomputing only stale steps")
    p.add_argument("pipeline", type=Path)
    p.add_argument("overrides", nargs="*", metavar="step.key=value", help="e.g. finetune.optim.lr=1e-3")
    p.add_argument("--workdir", type=Path, help="override the pipeline's workdir")
    _run_options(p, "rerun every step, cached or not, discarding interrupted runs")
    p.set_defaults(func=_run_pipeline)

    manifest.add_parser(sub)
    cache.add_parser(sub)
    weights.add_parser(sub)
    models.add_parsers(sub)
    evidence.add_parsers(sub)

    p = sub.add_parser("status", help="show each pipeline step as cached, running, interrupted or stale, and why")
    p.add_argument("pipeline", type=Path)
    p.add_argument("overrides", nargs="*", metavar="step.key=value")
    p.add_argument("--workdir", type=Path, help="override the pipeline's workdir")
    p.set_defaults(func=_status)
    return parser


def _run_options(p: argparse.ArgumentParser, force_help: str) -> None:
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                   help="give up (exit 3) if another run holds a step for longer (default: wait)")


def _run_stage(args) -> None:
    from medalign.pipeline import cache, ranks, runner

    stage = STAGES[args.stage]
    cfg = config.load(stage.config, args.config, args.overrides)
    rec = cache.record(stage.name, cfg, upstream={})
    out = args.out or args.workdir / stage.name / cache.key_of(rec)
    metrics, _ = runner.execute(stage, cfg, out, rec, label=stage.name, force=args.force,
                                lock_timeout=args.lock_timeout)
    if ranks.rank() == 0:  # torchrun: rank 0 speaks for all
        _show(stage.name, metrics)


def _run_pipeline(args) -> None:
    from medalign.pipeline import ranks, runner, spec

    pipeline = spec.load(args.pipeline, args.overrides, args.workdir)
    outputs = runner.run(pipeline, force=args.force, lock_timeout=args.lock_timeout)
    last = pipeline.steps[-1].name
    if ranks.rank() == 0:
        metrics = json.loads((outputs[last] / "metrics.json").read_text())
        _show(last, metrics)
        if metrics.get("report"):
            print(f"report: {outputs[last] / metrics['report']}")


def _status(args) -> None:
    from medalign.pipeline import runner, spec

    pipeline = spec.load(args.pipeline, args.overrides, args.workdir)
    width = max(len(s.name) for s in pipeline.steps)
    for p in runner.plan(pipeline):
        state, detail = runner.state(p)
        print(f"{p.step.name:<{width}}  {state:<11}  {detail}")


def _show(name: str, metrics: dict) -> None:
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


if __name__ == "__main__":
    main()
