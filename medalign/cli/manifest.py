"""`medalign manifest build|join|concat|split|validate`: manifests from the images a user has. No torch."""
from __future__ import annotations

import sys
from pathlib import Path

from medalign.errors import DataError, MedalignError


def add_parser(sub) -> None:
    p = sub.add_parser("manifest", help="build manifests (folders, DICOM, NIfTI, npz), join labels, concat, "
                                        "split, validate")
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    b = actions.add_parser("build", help="write a manifest CSV from images you have")
    b.add_argument("kind", choices=("folder", "flat", "dicom", "nifti", "npz"),
                   help="folder: class subfolders (optionally under train/val/test); flat: unlabeled images; "
                        "dicom: a DICOM tree (headers only); nifti: one row per slice; npz: MedMNIST file")
    b.add_argument("source", type=Path)
    b.add_argument("out", type=Path, help="manifest CSV to write (npz: a folder for PNGs + manifest.csv)")
    b.add_argument("--split", help="split for every row (folder, flat)")
    b.add_argument("--axis", type=int, default=2, choices=(0, 1, 2),
                   help="voxel axis to slice (nifti; written as an `axis` column that the readers follow)")
    b.add_argument("--keep-empty", action="store_true", help="keep constant slices (nifti)")
    b.set_defaults(func=_build)
    j = actions.add_parser("join", help="add columns (labels, official splits) from another CSV, matched by file")
    j.add_argument("manifest", type=Path)
    j.add_argument("labels", type=Path)
    j.add_argument("out", type=Path)
    j.add_argument("--key", help="the labels CSV's file column (default: guessed)")
    j.add_argument("--columns", help="comma-separated columns to add (default: all)")
    j.add_argument("--overwrite", default="", help="comma-separated columns that replace the manifest's own")
    j.set_defaults(func=_join)
    c = actions.add_parser("concat", help="stack manifests built folder by folder into one (paths re-based)")
    c.add_argument("out", type=Path, help="manifest CSV to write")
    c.add_argument("inputs", type=Path, nargs="+", metavar="manifest", help="manifests to stack, in order")
    c.add_argument("--keep-first", action="store_true",
                   help="keep the first row of an image listed twice (same path and index) instead of refusing")
    c.set_defaults(func=_concat)
    sp = actions.add_parser("split", help="patient-grouped, stratified train/val/test, k folds, few-shot subsets")
    sp.add_argument("manifest", type=Path)
    sp.add_argument("out", type=Path)
    sp.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test (default 0.7,0.15,0.15)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--keep-split", action="store_true",
                    help="keep the manifest's own train/val/test (an official split); only add folds and few-shot")
    sp.add_argument("--folds", type=int, default=0, help="add a `fold` column over train+val")
    sp.add_argument("--few-shot", default="", help="e.g. 5,10,0.1: k per class or a fraction of train")
    sp.add_argument("--few-shot-seeds", default="0", help="e.g. 0,1,2: one column per subset and seed")
    sp.set_defaults(func=_split)
    v = actions.add_parser("validate", help="report every problem at once; exit 1 on errors")
    v.add_argument("manifest", type=Path)
    v.add_argument("--no-near-duplicates", action="store_true", help="skip the perceptual-hash check")
    v.add_argument("--limit", type=int, default=50, help="problems shown per kind (0: all)")
    v.add_argument("--json", action="store_true", help="print the whole report as JSON instead of text")
    v.add_argument("--csv", type=Path, metavar="FILE",
                   help="write the problems to FILE, one row per manifest row concerned: "
                        "path,index,line,split,label,kind,severity,detail,related")
    v.set_defaults(func=_validate)


def _build(args) -> None:
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


def _join(args) -> None:
    from medalign.data import build

    report = build.join_csv(args.manifest, args.labels, args.out, key_column=args.key,
                            columns=args.columns.split(",") if args.columns else None,
                            overwrite=[c for c in args.overwrite.split(",") if c])
    print(build.summarize(report))


def _concat(args) -> None:
    from medalign.data import build

    print(build.summarize(build.concat(args.out, args.inputs, keep_first=args.keep_first)))


def _split(args) -> None:
    from medalign.data.manifest import plural
    from medalign.data.split import split

    def numbers(text: str, kind=float) -> list:
        try:
            return [int(x) if kind is int or x.strip().isdigit() else float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise MedalignError(f"not a comma-separated list of numbers: '{text}'") from None

    report = split(args.manifest, args.out, fractions=tuple(numbers(args.fractions)), seed=args.seed,
                   folds=args.folds, few_shot=numbers(args.few_shot), few_shot_seeds=numbers(args.few_shot_seeds, int),
                   keep_split=args.keep_split)
    print(f"wrote {plural(report['rows'], 'row')} to {report['manifest']}")
    for name, labels in report["counts"].items():
        print(f"  {name}: " + ", ".join(f"{k or '(no label)'} {v}" for k, v in labels.items()))
    extra = [c for c in report["columns"] if c == "fold" or c.startswith("fewshot_")]
    if extra:
        print("  columns: " + ", ".join(extra))


def _validate(args) -> None:
    import json

    from medalign.data.validate import validate

    report = validate(args.manifest, near_duplicates=not args.no_near_duplicates)
    if args.csv:
        report.write_csv(args.csv)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.format(limit=args.limit or None))
    if not report.ok:
        sys.exit(DataError.exit_code)  # bad input, as a stage would call it
