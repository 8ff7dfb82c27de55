"""finetune: adapter-based fine-tuning on the labeled split; keeps the epoch with the best validation score."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from medalign import config, engine, tracking
from medalign.data.datasets import write_skipped
from medalign.data.transforms import MultiView, train_view
from medalign.data.manifest import check_no_leak
from medalign.errors import DataError
from medalign.models import adapters, backbones, classifier
from medalign.models.backbones import head_names
from medalign.stages import _common as common
from medalign.tasks import Task


class Classifier(nn.Module):
    """The task's loss on `model`; validates after every epoch, keeps the best epoch's state and
    says when `patience` epochs went by without a better one. What the adapter froze stays in
    eval mode while the rest trains."""

    def __init__(self, model: nn.Module, loss: Callable, validate: Callable[[nn.Module], dict],
                 score: Callable[[dict], float], patience: int | None = None):
        super().__init__()
        self.model, self.loss, self.validate, self.score, self.patience = model, loss, validate, score, patience
        self.frozen = adapters.frozen_modules(model)  # a plain list: the modules are registered via model
        self.best: dict = {}
        self.converged = False

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, batch):
        x, y = batch
        return {"loss": self.loss(self.model(x), y)}

    def on_epoch_end(self, epoch: int) -> dict:
        m = self.validate(self.model)
        score = self.score(m)
        if not self.best or score > self.best["score"]:
            self.best = {"score": score, "epoch": epoch, "metrics": m, "state": adapters.trainable_state(self.model)}
        self.converged = self.patience is not None and epoch - self.best["epoch"] >= self.patience
        return {"val_score": score, **{f"val_{k}": v for k, v in m.items() if isinstance(v, float)}}

    def resume_state(self) -> dict:
        return {"best": self.best}

    def load_resume_state(self, state: dict) -> None:
        self.best = state["best"]


class SemiSupervised(Classifier):
    """FixMatch (Sohn et al. 2020): where the model is confident on a weakly augmented unlabeled
    image, that prediction is the target of a strongly augmented view of it; without the strong
    view, the weak view's own target (pseudo-labelling, Lee 2013). One forward over labeled and
    unlabeled images, so BatchNorm sees both, as in the paper."""

    def __init__(self, *args, semi: config.SemiConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.semi = semi

    def forward(self, batch):
        x, y = batch["labeled"]
        views, _ = batch["unlabeled"]
        logits = self.model(torch.cat([x, *views])).split([len(x), *(len(v) for v in views)])
        confidence, target = logits[1].detach().softmax(-1).max(-1)
        mask = (confidence >= self.semi.threshold).float()
        unlabeled = (F.cross_entropy(logits[-1], target, reduction="none") * mask).mean()
        supervised = self.loss(logits[0], y)
        return {"loss": supervised + self.semi.lambda_u * unlabeled, "supervised_loss": supervised,
                "unlabeled_loss": unlabeled, "confident_fraction": mask.mean()}


def run(cfg: config.FinetuneConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, cfg.seed)
    tracker = tracking.tracker(cfg, out_dir, rt.is_main, "finetune")
    manifest, train_rows, skipped = common.rows(cfg.data, cfg.data.train_split, cfg.data.subset)
    _, val_rows, skipped_val = common.rows(cfg.data, cfg.data.val_split)
    check_no_leak(manifest)
    task = Task.from_config(cfg.task, manifest, train_rows)
    bb = backbones.resolve(cfg.backbone)
    common.record_built(out_dir, cfg, bb, rt)
    # a head trained for exactly these classes stays
    model = classifier.build(bb, task, cfg.head, keep_head=bool(bb.meta and bb.meta.get("classes") == task.classes))
    model = adapters.apply(model, cfg.adapter, cfg.seed)
    trainable, total = adapters.count_parameters(model)
    train_targets = task.targets(train_rows, manifest)
    weight = task.class_weights(train_targets).to(rt.device) if cfg.loss.class_weights else None

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task.loss(logits, y, cfg.loss, weight)

    def data(rows: list[dict], transform, targets: list | None = None):
        return common.dataset(manifest, rows, cfg.data, cfg.data.intensity, transform, bb,
                              targets=task.targets(rows, manifest) if targets is None else targets)

    evaluation = common.eval_transform(bb, cfg.data.intensity)
    val = common.loader(data(val_rows, evaluation), cfg.data, cfg, rt, train=False)
    heads = head_names(model)
    # a frozen backbone without augmentation sees each image the same way every epoch:
    # compute its features once and train the head on them
    on_features = cfg.adapter.name == "linear" and not cfg.augment.enabled and len(heads) == 1 \
        and cfg.semi.name == "none"
    if on_features:
        features = common.features(model, common.loader(data(train_rows, evaluation, train_targets), cfg.data, cfg, rt, train=False), rt)
        val = DataLoader(common.features(model, val, rt), batch_size=cfg.data.batch_size)
        trained = model.get_submodule(heads[0])
        train_data = engine.loader(features, cfg.data.batch_size, rt, train=True)
    else:
        augment = common.train_transform(bb, cfg.augment, cfg.data.intensity, cfg.seed + rt.rank)
        trained = model
        train_data = common.loader(data(train_rows, augment, train_targets), cfg.data, cfg, rt, train=True)

    def validate(m: nn.Module) -> dict:
        probs, targets = engine.predict(m, val, rt, task.probs)
        return task.metrics(targets, probs)

    if cfg.semi.name == "none":
        objective = Classifier(trained, loss, validate, task.score, cfg.optim.patience)
    else:
        objective = SemiSupervised(trained, loss, validate, task.score, cfg.optim.patience, semi=cfg.semi)
        pool = _unlabeled(cfg, manifest, bb, rt)
        train_data = {"labeled": train_data, "unlabeled": pool}
    history = engine.fit(objective, train_data, cfg.optim, rt, out_dir, "finetune", tracker=tracker)
    best = objective.best
    objective.model.load_state_dict(best["state"], strict=False)
    weights = None
    if rt.is_main:
        meta = common.metadata(bb, cfg, out_dir, num_classes=len(task.classes), classes=task.classes,
                               task=task.as_meta(), head=cfg.head.model_dump(), seed=cfg.seed,
                               adapter=cfg.adapter.model_dump())
        weights = classifier.save(out_dir / "model", model, bb, cfg.adapter, meta)
    n_skipped = len(skipped) + len(skipped_val)
    return {"task": task.kind, "classes": task.classes, "train_images": len(train_rows),
            "skipped_rows": write_skipped(out_dir, skipped + skipped_val) if rt.is_main else n_skipped,
            "epochs_run": len(history), "best_epoch": best["epoch"], "val": best["metrics"],
            "trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total,
            "peak_memory_mib": engine.peak_memory_mib(rt), "seconds": history[-1]["elapsed_s"],
            "img_per_s": len(train_rows) * len(history) / history[-1]["elapsed_s"],
            "model": "model", "weights": weights,
            **({"unlabeled_images": len(pool.dataset)} if cfg.semi.name != "none" else {})}


def _unlabeled(cfg: config.FinetuneConfig, manifest, bb, rt: engine.Runtime) -> DataLoader:
    """The unlabeled pool's loader: a weak view (the fine-tuning augmentation) and, for FixMatch, a
    strong one (the pretraining-strength medical preset, never RandAugment's colour operations)."""
    train, subset = cfg.data.train_split, cfg.data.subset

    def labeled(r: dict) -> bool:  # val, test, and the train rows that are this run's labels
        split = r.get("split")
        return split in (cfg.data.val_split, "test") or (split == train and (subset is None or
                                                                              common.in_subset(r, subset)))

    _, rows, _ = common.rows(cfg.data, cfg.semi.splits)
    # semi.splits may name train: its rows outside the labeled subset, their labels withheld
    rows = [r for r in rows if r.get("split") != train or not labeled(r)]
    held = {(r["path"], r.get("index", "")) for r in manifest.rows if labeled(r)}
    leaked = [r["path"] for r in rows if (r["path"], r.get("index", "")) in held]
    if leaked:
        raise DataError(f"semi.splits: {len(leaked)} unlabeled row(s) are also train, val or test images, "
                        f"e.g. {', '.join(leaked[:3])}")
    weak = train_view(bb.img_size, cfg.augment, bb.mean, bb.std, zscore=cfg.data.intensity.zscore)
    views = [weak]
    if cfg.semi.name == "fixmatch":
        strong = config.AugmentConfig(preset=cfg.augment.preset)
        views.append(train_view(bb.img_size, strong, bb.mean, bb.std, zscore=cfg.data.intensity.zscore))
    dataset = common.dataset(manifest, rows, cfg.data, cfg.data.intensity, MultiView(views).reseed(cfg.seed + 7), bb)
    return engine.loader(dataset, cfg.data.batch_size * cfg.semi.mu, rt, train=True, seed_offset=1,
                         num_workers=cfg.runtime.num_workers)
