"""`medalign predict` and `medalign export`: use a fine-tuned model outside the pipeline."""
from __future__ import annotations

from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="probabilities per class (or grade) for every row of a manifest",
                       description="Writes OUT.csv: path, prediction and p_CLASS columns, one row per image, "
                                   "in manifest order; labels and splits are not needed.")
    p.add_argument("model", help="a finetune output folder (or its model/ folder, or an export)")
    p.add_argument("manifest", type=Path, help="manifest CSV with a path column")
    p.add_argument("out", type=Path, help="predictions CSV to write")
    p.add_argument("--base", type=Path, help="the adapter's base weights, when they have moved")
    p.add_argument("--tta", action="store_true", help="average over the image and its mirror")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="an unreadable image: stop (default), or skip it and list it in OUT.skipped.csv")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="write a fine-tuned model as plain timm weights")
    p.add_argument("--merge", action="store_true", required=True,
                   help="fold the adapter (LoRA, DoRA, APLA rows) into the backbone's weights")
    p.add_argument("model", help="a finetune output folder (or its model/ folder)")
    p.add_argument("out", type=Path, help="new folder for model.safetensors and model.json")
    p.add_argument("--base", type=Path, help="the adapter's base weights, when they have moved")
    p.set_defaults(func=_export)


def _predict(args) -> None:
    from medalign.predict import predict

    r = predict(args.model, args.manifest, args.out, base=args.base, tta=args.tta, batch_size=args.batch_size,
                on_error=args.on_error, device=args.device)
    print(f"predict: {r['rows']} rows -> {args.out}" + (f" ({r['skipped_rows']} skipped)" if r["skipped_rows"] else ""))


def _export(args) -> None:
    from medalign.models import classifier

    print(f"export: merged weights -> {classifier.merge(args.model, args.out, args.base)}")
