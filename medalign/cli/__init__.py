"""The medalign command line: one subcommand per stage, plus `run`, `status`, `history` and `gc` for pipelines.

    medalign demo-data data/demo
    medalign pretrain -c configs/pretrain/dino_vit_tiny.yaml data.manifest=data/demo/manifest.csv
    medalign run pipelines/quickstart.yaml finetune.optim.lr=2e-3
    medalign status pipelines/quickstart.yaml

Each command is a thin shell over medalign.api, the functions a notebook calls.

Heavy libraries (torch, timm, monai, peft) are imported by the stage that runs, never here:
`--help`, `status` and a fully cached `run` start in well under a second.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from medalign import __version__, config
from medalign.errors import MedalignError
from medalign.cli import cache, evidence, manifest, models, pipelines, weights
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
    except BrokenPipeError:  # `medalign cache list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        sys.exit(0)


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
        p.add_argument("--force", action="store_true", help="rerun even if cached, discarding an interrupted run")
        p.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                       help="give up (exit 3) if another run holds the output for longer (default: wait)")
        p.set_defaults(func=_run_stage, stage=stage.name)

    pipelines.add_parsers(sub)
    manifest.add_parser(sub)
    cache.add_parser(sub)
    weights.add_parser(sub)
    models.add_parsers(sub)
    evidence.add_parsers(sub)
    return parser


def _run_stage(args) -> None:
    from medalign import api
    from medalign.pipeline import ranks

    out = api.stage(args.stage, args.config, out=args.out, workdir=getattr(args, "workdir", "runs"),
                    overrides=args.overrides, force=args.force, lock_timeout=args.lock_timeout)
    if ranks.rank() == 0:  # torchrun: rank 0 speaks for all
        pipelines.show(args.stage, out.metrics)


if __name__ == "__main__":
    main()
