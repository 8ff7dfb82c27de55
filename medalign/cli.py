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
import os
import sys
from pathlib import Path

from medalign import __version__, config
from medalign.errors import MedalignError
from medalign.stages import STAGES


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
        p.set_defaults(func=_run_stage, stage=stage.name)

    p = sub.add_parser("run", help="run a pipeline, recomputing only stale steps")
    p.add_argument("pipeline", type=Path)
    p.add_argument("overrides", nargs="*", metavar="step.key=value", help="e.g. finetune.optim.lr=1e-3")
    p.add_argument("--force", action="store_true", help="rerun every step, cached or not")
    p.add_argument("--workdir", type=Path, help="override the pipeline's workdir")
    p.set_defaults(func=_run_pipeline)

    p = sub.add_parser("manifest", help="build manifests (folders, DICOM, NIfTI, npz), join labels, split, validate")
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    b = actions.add_parser("build", help="write a manifest CSV from images you have")
    b.add_argument("kind", choices=("folder", "flat", "dicom", "nifti", "npz"),
                   help="folder: class subfolders (optionally under train/val/test); flat: unlabeled images; "
                        "dicom: a DICOM tree (headers only); nifti: one row per slice; npz: MedMNIST file")
    b.add_argument("source", type=Path)
    b.add_argument("out", type=Path, help="manifest CSV to write (npz: a folder for PNGs + manifest.csv)")
    b.add_argument("--split", help="split for every row (folder, flat)")
    b.add_argument("--axis", type=int, default=2, help="slicing axis (nifti)")
    b.add_argument("--keep-empty", action="store_true", help="keep constant slices (nifti)")
    b.set_defaults(func=_manifest_build)
    j = actions.add_parser("join", help="add columns (labels, official splits) from another CSV, matched by file")
    j.add_argument("manifest", type=Path)
    j.add_argument("labels", type=Path)
    j.add_argument("out", type=Path)
    j.add_argument("--key", help="the labels CSV's file column (default: guessed)")
    j.add_argument("--columns", help="comma-separated columns to add (default: all)")
    j.add_argument("--overwrite", default="", help="comma-separated columns that replace the manifest's own")
    j.set_defaults(func=_manifest_join)
    sp = actions.add_parser("split", help="patient-grouped, stratified train/val/test, k folds, few-shot subsets")
    sp.add_argument("manifest", type=Path)
    sp.add_argument("out", type=Path)
    sp.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test (default 0.7,0.15,0.15)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--folds", type=int, default=0, help="add a `fold` column over train+val")
    sp.add_argument("--few-shot", default="", help="e.g. 5,10,0.1: k per class or a fraction of train")
    sp.add_argument("--few-shot-seeds", default="0", help="e.g. 0,1,2: one column per subset and seed")
    sp.set_defaults(func=_manifest_split)
    v = actions.add_parser("validate", help="report every problem at once; exit 1 on errors")
    v.add_argument("manifest", type=Path)
    v.add_argument("--no-near-duplicates", action="store_true", help="skip the perceptual-hash check")
    v.add_argument("--limit", type=int, default=50, help="problems shown per kind (0: all)")
    v.set_defaults(func=_manifest_validate)

    p = sub.add_parser("status", help="show each pipeline step as cached or stale, and why")
    p.add_argument("pipeline", type=Path)
    p.add_argument("overrides", nargs="*", metavar="step.key=value")
    p.add_argument("--workdir", type=Path, help="override the pipeline's workdir")
    p.set_defaults(func=_status)
    return parser


def _run_stage(args) -> None:
    from medalign.pipeline import cache, runner, store

    stage = STAGES[args.stage]
    cfg = config.load(stage.config, args.config, args.overrides)
    rec = cache.record(stage.name, cfg, upstream={})
    out = args.out or args.workdir / stage.name / cache.key_of(rec)
    if out.exists() and any(out.iterdir()) and not store.is_complete(out):
        raise MedalignError(f"{out} exists and is not a medalign output; it is left alone, choose another folder")
    if store.is_complete(out) and json.loads((out / "key.json").read_text()) == rec:
        print(f"[{stage.name}] cached  {out}")
        metrics = json.loads((out / "metrics.json").read_text())
    else:
        metrics = runner.execute(stage, cfg, out, rec)
        if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for all
            return
        print(f"[{stage.name}] done    {out}")
    _show(stage.name, metrics)


def _run_pipeline(args) -> None:
    from medalign.pipeline import runner, spec

    pipeline = spec.load(args.pipeline, args.overrides, args.workdir)
    outputs = runner.run(pipeline, force=args.force)
    last = pipeline.steps[-1].name
    _show(last, json.loads((outputs[last] / "metrics.json").read_text()))


def _status(args) -> None:
    from medalign.pipeline import runner, spec

    pipeline = spec.load(args.pipeline, args.overrides, args.workdir)
    width = max(len(s.name) for s in pipeline.steps)
    for p in runner.plan(pipeline):
        state = "cached" if p.cached else "stale "
        print(f"{p.step.name:<{width}}  {state}  {p.out if p.cached else p.reason}")


def _manifest_build(args) -> None:
    from medalign.data import build

    if args.kind == "npz":
        report = build.from_npz(args.source, args.out)
    elif args.kind == "nifti":
        report = build.from_nifti(args.source, args.out, axis=args.axis, skip_empty=not args.keep_empty)
    elif args.kind == "dicom":
        report = build.from_dicom_tree(args.source, args.out)
    elif args.kind == "flat":
        report = build.from_flat_folder(args.source, args.out, split=args.split or "unlabeled")
    else:
        report = build.from_image_folder(args.source, args.out, split=args.split)
    print(build.summarize(report))


def _manifest_join(args) -> None:
    from medalign.data import build

    report = build.join_csv(args.manifest, args.labels, args.out, key_column=args.key,
                            columns=args.columns.split(",") if args.columns else None,
                            overwrite=[c for c in args.overwrite.split(",") if c])
    print(build.summarize(report))


def _manifest_split(args) -> None:
    from medalign.data.split import split

    def numbers(text: str, kind=float) -> list:
        try:
            return [int(x) if kind is int or x.strip().isdigit() else float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise MedalignError(f"not a comma-separated list of numbers: '{text}'") from None

    report = split(args.manifest, args.out, fractions=tuple(numbers(args.fractions)), seed=args.seed,
                   folds=args.folds, few_shot=numbers(args.few_shot), few_shot_seeds=numbers(args.few_shot_seeds, int))
    print(f"wrote {report['rows']} rows to {report['manifest']}")
    for name, labels in report["counts"].items():
        print(f"  {name}: " + ", ".join(f"{k or '(no label)'} {v}" for k, v in labels.items()))
    extra = [c for c in report["columns"] if c == "fold" or c.startswith("fewshot_")]
    if extra:
        print("  columns: " + ", ".join(extra))


def _manifest_validate(args) -> None:
    from medalign.data.validate import validate

    report = validate(args.manifest, near_duplicates=not args.no_near_duplicates)
    print(report.format(limit=args.limit or None))
    if not report.ok:
        sys.exit(1)


def _show(name: str, metrics: dict) -> None:
    print(f"{name} metrics:")
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"  {k:<20} {v:.4f}")
        elif isinstance(v, int | str) or v is None:
            print(f"  {k:<20} {v}")
    cm = metrics.get("confusion_matrix")
    if cm:
        width = max(len(c) for c in cm["classes"]) + 2
        print("  confusion matrix (rows true, columns predicted)")
        print(" " * (width + 2) + "".join(f"{c:>{width}}" for c in cm["classes"]))
        for c, row in zip(cm["classes"], cm["rows_true_cols_pred"]):
            print(f"  {c:<{width}}" + "".join(f"{n:>{width}}" for n in row))


if __name__ == "__main__":
    main()
