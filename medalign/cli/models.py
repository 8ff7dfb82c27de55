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

    p = sub.add_parser("export", help="a fine-tuned model as plain timm weights (merge) or as ONNX (onnx)")
    kinds = p.add_subparsers(title="formats", metavar="FORMAT", required=True)
    m = kinds.add_parser("merge", help="fold the adapter (LoRA, DoRA, APLA rows) into plain timm weights")
    m.add_argument("model", help="a finetune output folder (or its model/ folder)")
    m.add_argument("out", type=Path, help="new folder for model.safetensors and model.json")
    m.add_argument("--base", type=Path, help="the adapter's base weights, when they have moved")
    m.set_defaults(func=_merge)
    o = kinds.add_parser("onnx", help="one .onnx file that outputs probabilities, checked with onnxruntime",
                         description="The preprocessing (size, channels, intensity, normalisation) and the class "
                                     "names go into the file's metadata; the export is refused unless "
                                     "onnxruntime reproduces torch's probabilities within 1e-4 on real images.")
    o.add_argument("model", help="a finetune output folder (or its model/ folder)")
    o.add_argument("out", type=Path, help="the .onnx file to write")
    o.add_argument("--manifest", type=Path, required=True, help="images to check the export on (its first rows)")
    o.add_argument("--images", type=int, default=16, help="how many images the check runs on")
    o.add_argument("--base", type=Path, help="the adapter's base weights, when they have moved")
    o.set_defaults(func=_onnx)


def _predict(args) -> None:
    from medalign.predict import predict

    r = predict(args.model, args.manifest, args.out, base=args.base, tta=args.tta, batch_size=args.batch_size,
                on_error=args.on_error, device=args.device)
    print(f"predict: {r['rows']} rows -> {args.out}" + (f" ({r['skipped_rows']} skipped)" if r["skipped_rows"] else ""))


def _merge(args) -> None:
    from medalign.models import classifier

    print(f"export: merged weights -> {classifier.merge(args.model, args.out, args.base)}")


def _onnx(args) -> None:
    from medalign.export import to_onnx

    r = to_onnx(args.model, args.out, args.manifest, base=args.base, images=args.images)
    print(f"export: {r['onnx']} (opset {r['opset']}); onnxruntime vs torch on {r['images']} images: "
          f"max abs difference {r['max_abs_diff']:.1e}")
