"""`medalign report`, `medalign gap` and `medalign drift`: evidence about models and data."""
from __future__ import annotations

import json
import sys
from pathlib import Path

DRIFT_EXIT = 4  # drift detected: a scheduled job's signal, distinct from failure (1) and bad config (2)


def add_parsers(sub) -> None:
    p = sub.add_parser("report", help="rebuild an evaluation's report.html, or one page comparing several",
                       description="One RUN: its report.html again. Several: a comparison page with the paired "
                                   "difference of each run to the first, on the rows they share.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="evaluate output folders")
    p.add_argument("--out", type=Path, help="the page to write (default: RUN/report.html, or comparison.html)")
    p.set_defaults(func=_report)

    p = sub.add_parser("gap", help="distance between two manifests' images under a backbone (Fréchet, MMD)")
    p.add_argument("a", type=Path, help="manifest CSV (e.g. the pretraining pool)")
    p.add_argument("b", type=Path, help="manifest CSV (e.g. the target site)")
    p.add_argument("--backbone", required=True,
                   help="named weights (medalign weights), a checkpoint or pretrain output, or a timm model name")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--split", action="append", help="only these splits' rows (repeatable; default: all rows)")
    _common(p)
    p.set_defaults(func=_gap)

    p = sub.add_parser("drift", help="has a deployed model's input drifted? exit 0: no, 4: drift",
                       description="Compares NEW with REFERENCE under the model's own backbone (kernel MMD with a "
                                   "permutation test, Fréchet distance) and the predicted-class frequencies.")
    p.add_argument("reference", type=Path, help="manifest CSV of the images the model was validated on")
    p.add_argument("new", type=Path, help="manifest CSV of the incoming images")
    p.add_argument("--model", required=True, help="a finetune output folder")
    p.add_argument("--alpha", type=float, default=0.01, help="drift when the MMD test's p-value is below this")
    p.add_argument("--base", type=Path, help="the adapter's base weights, when they have moved")
    _common(p)
    p.set_defaults(func=_drift)


def _common(p) -> None:
    p.add_argument("--permutations", type=int, default=500)
    p.add_argument("--max-images", type=int, default=1000, help="a seeded sample per side beyond this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the whole result as JSON")


def _report(args) -> None:
    from medalign.report import build

    out = build.rebuild(args.runs, args.out)
    print(f"report: {out}")


def _gap(args) -> None:
    from medalign import config
    from medalign.gap import gap

    bb = config.BackboneConfig(**_backbone(args.backbone), img_size=args.img_size, in_chans=args.in_chans)
    r = gap(args.a, args.b, bb, splits=args.split, permutations=args.permutations, max_images=args.max_images,
            seed=args.seed, device=args.device)
    _emit(r, args.json)
    print(f"gap under {r['backbone']} ({r['images'][0]} vs {r['images'][1]} images): Fréchet {r['frechet']:.4g}, "
          f"MMD² {r['mmd2']:.4g} (p {r['mmd_p_value']:.3g}, {r['permutations']} permutations)")


def _drift(args) -> None:
    from medalign.gap import drift

    r = drift(args.reference, args.new, args.model, alpha=args.alpha, permutations=args.permutations,
              max_images=args.max_images, seed=args.seed, base=args.base, device=args.device)
    _emit(r, args.json)
    f = r["predicted_frequencies"]
    print(f"{'DRIFT' if r['drift'] else 'no drift'}: MMD² {r['mmd2']:.4g}, p {r['mmd_p_value']:.3g} "
          f"(alpha {r['alpha']:g}); Fréchet {r['frechet']:.4g}; predicted classes "
          + ", ".join(f"{c} {a:.0%} -> {b:.0%}" for c, a, b in zip(f["classes"], f["reference"], f["new"])))
    if r["drift"]:
        sys.exit(DRIFT_EXIT)


def _backbone(spec: str) -> dict:
    if Path(spec).exists():
        return {"checkpoint": spec}
    from medalign.models.weights import STARTS
    return {"weights": spec} if spec in STARTS else {"name": spec}


def _emit(result: dict, path: Path | None) -> None:
    if path:
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(path)
