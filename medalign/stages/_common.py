"""What the training stages share: rows -> dataset -> loader, the checkpoint metadata, the record."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from medalign import config, engine
from medalign.data.datasets import ImageDataset, load_rows
from medalign.data.manifest import Manifest, fingerprint
from medalign.data.transforms import MultiView, Single, eval_view, train_view
from medalign.errors import DataError
from medalign.models import checkpoint
from medalign.models.backbones import Backbone


def rows(data: config.DataSection, splits: list[str] | str,
         subset: str | None = None) -> tuple[Manifest, list[dict], list[dict]]:
    """The usable rows of `splits` (and the skipped ones), optionally only those whose `subset` column is 1."""
    if data.fold is None:
        manifest, kept, skipped = load_rows(data.manifest, splits, data.on_error)
    else:
        manifest, kept, skipped = _fold_rows(data, [splits] if isinstance(splits, str) else list(splits))
    if subset is None:
        return manifest, kept, skipped
    if subset not in manifest.columns:
        offered = [c for c in manifest.columns if c.startswith("fewshot_")]
        raise DataError(f"data.subset: manifest {manifest.path} has no column '{subset}'"
                        + (f" (it has {', '.join(offered)})" if offered else ""))
    chosen = [r for r in kept if in_subset(r, subset)]
    if not chosen:
        raise DataError(f"data.subset: no row of split {splits} has {subset}=1 in {manifest.path}")
    return manifest, chosen, skipped


def _fold_rows(data: config.DataSection, splits: list[str]) -> tuple[Manifest, list[dict], list[dict]]:
    """Cross-validation: each train/val row's split comes from its fold (see config FOLD_HELP); the
    manifest's own test rows stay out of every fold."""
    manifest, kept, skipped = load_rows(data.manifest, None, data.on_error)
    if "fold" not in manifest.columns:
        raise DataError(f"data.fold: manifest {manifest.path} has no 'fold' column "
                        "(medalign manifest split --folds K adds one)")
    try:
        folds = sorted({int(r["fold"]) for r in kept if str(r["fold"]).strip()})
    except ValueError:
        raise DataError(f"data.fold: manifest {manifest.path} has a 'fold' value that is not an integer") from None
    if data.fold not in folds or len(folds) < 3:
        raise DataError(f"data.fold={data.fold}: manifest {manifest.path} has folds {folds}; cross-validation here "
                        "needs at least 3 (one to test, one to validate, the rest to train)")
    test, val = data.fold, folds[(folds.index(data.fold) + 1) % len(folds)]

    def split(r: dict) -> str:
        if not str(r["fold"]).strip():
            return "unlabeled" if r.get("split") == "unlabeled" else "outside the folds"
        return {test: "test", val: "val"}.get(int(r["fold"]), "train")
    chosen = [{**r, "split": split(r)} for r in kept]
    chosen = [r for r in chosen if r["split"] in splits]
    if not chosen:
        raise DataError(f"data.fold={data.fold}: no row of split {splits} in {manifest.path}")
    return manifest, chosen, skipped


def in_subset(row: dict, subset: str) -> bool:
    return str(row[subset]).strip() in ("1", "1.0", "true", "True")


def dataset(manifest: Manifest, rows: list[dict], data: config.DataSection, intensity: config.Intensity,
            transform: MultiView, bb: Backbone, classes: list[str] | None = None,
            targets: list | None = None) -> ImageDataset:
    return ImageDataset(manifest, rows, transform, bb.in_chans, classes, intensity.reader_args(),
                        cache_size=bb.img_size if data.cache else None, targets=targets)


def loader(ds: ImageDataset, data: config.DataSection, run: config.Section, rt: engine.Runtime, *, train: bool):
    batch_size = data.batch_size if train else max(data.batch_size, engine.INFERENCE_BATCH)
    return engine.loader(ds, batch_size, rt, train=train, num_workers=run.runtime.num_workers)


def train_transform(bb: Backbone, augment: config.AugmentConfig, intensity: config.Intensity, seed: int) -> Single:
    view = (train_view(bb.img_size, augment, bb.mean, bb.std, zscore=intensity.zscore) if augment.enabled
            else eval_view(bb.img_size, bb.mean, bb.std, zscore=intensity.zscore))
    return Single(view).reseed(seed)


def eval_transform(bb: Backbone, intensity: config.Intensity) -> Single:
    return Single(eval_view(bb.img_size, bb.mean, bb.std, zscore=intensity.zscore))


def record_built(out_dir: Path, cfg: config.Section, bb: Backbone, rt: engine.Runtime) -> None:
    """config.yaml says what was built: a checkpoint's architecture replaces the config's guess."""
    if rt.is_main:
        built = cfg.model_copy(update={"backbone": bb.as_config(cfg.backbone)})
        (out_dir / "config.yaml").write_text(config.dump(built))


def metadata(bb: Backbone, cfg: config.Section, out_dir: Path, **extra) -> dict:
    if bb.starting_point:
        extra["starting_point"] = bb.starting_point
    return checkpoint.metadata(bb.arch, bb.img_size, bb.normalization,
                               intensity=cfg.data.intensity.model_dump(mode="json"),
                               data_fingerprint=fingerprint(cfg.data.manifest),
                               config_hash=run_hash(cfg, out_dir), **extra)


def run_hash(cfg: config.Section, out_dir: Path) -> str:
    """The run's cache record hashed (what `medalign status` keys on, stable when a workdir moves);
    the semantic config alone when the stage runs outside the store."""
    record = out_dir / "key.json"
    return config.digest(json.loads(record.read_text()) if record.is_file() else config.semantic(cfg))


@torch.no_grad()
def features(model: torch.nn.Module, data, rt: engine.Runtime) -> TensorDataset:
    """The network's pooled features (what a classifier on it sees) for every image of a loader."""
    was_training = model.training
    engine.place(model, rt).eval()
    xs, ys = [], []
    for x, y in data:
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            f = model.forward_head(model.forward_features(x.to(rt.device)), pre_logits=True)
        xs.append(f.float().cpu())
        ys.append(y)
    model.train(was_training)
    return TensorDataset(torch.cat(xs), torch.cat(ys))
