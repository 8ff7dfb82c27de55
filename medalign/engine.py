"""The one training loop, shared by every stage.

A stage hands `fit` an objective: an nn.Module whose forward takes a batch and returns a dict with
"loss" (and any other scalars worth logging), and which may define `after_step(step, total)` for
momentum updates. The loop owns the rest: device, bfloat16 autocast, torch.distributed (launch with
`torchrun -m medalign ...`), AdamW with warm-up and cosine decay, gradient clipping, a progress bar
with throughput and ETA, and one JSON line per step in log.jsonl.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from lightly.utils.scheduler import cosine_schedule
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from medalign import config
from medalign.data.transforms import seed_worker
from medalign.errors import MedalignError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: config.Runtime, seed: int) -> Runtime:
    """Device and process group; torchrun's environment variables switch distributed on."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    return Runtime(device, rank, world_size, amp=cfg.amp and device.type == "cuda")


def loader(dataset: Dataset, batch_size: int, rt: Runtime, *, train: bool, num_workers: int = 0) -> DataLoader:
    sampler = DistributedSampler(dataset, shuffle=train) if rt.world_size > 1 and train else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      drop_last=train and len(dataset) > batch_size, num_workers=num_workers,
                      pin_memory=rt.device.type == "cuda", persistent_workers=num_workers > 0,
                      worker_init_fn=seed_worker)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 0; a pure function of the step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine_schedule(step - warmup, max(total - warmup, 1), peak, 0.0)


def fit(objective: torch.nn.Module, train_loader: DataLoader, optim: config.OptimConfig, rt: Runtime,
        log_path: Path, desc: str, on_epoch_end: Callable[[int], dict] | None = None) -> list[dict]:
    """Trains `objective` in place; returns one summary per epoch (means of the logged scalars)."""
    objective.to(rt.device)
    params = [p for p in objective.parameters() if p.requires_grad]
    # no weight decay on biases, norms and tokens, as in DINO, MAE and timm's recipes
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=optim.lr)
    model = DistributedDataParallel(objective) if rt.world_size > 1 else objective
    steps_per_epoch = len(train_loader)
    total, warmup = optim.epochs * steps_per_epoch, int(optim.warmup_epochs * steps_per_epoch)
    step, start, history = 0, time.perf_counter(), []
    with log_path.open("a") if rt.is_main else contextlib.nullcontext() as log:
        for epoch in range(optim.epochs):
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            model.train()
            sums: dict[str, float] = {}
            bar = tqdm(train_loader, desc=f"{desc} epoch {epoch + 1}/{optim.epochs}", unit="batch",
                       disable=None if rt.is_main else True, leave=False)
            tick = time.perf_counter()
            for batch in bar:
                lr = lr_at(step, total, optim.lr, warmup)
                for g in opt.param_groups:
                    g["lr"] = lr
                batch = _to(batch, rt.device)
                with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
                    out = model(batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise MedalignError(f"{desc}: loss is {loss.item()} at step {step}; lower optim.lr or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if optim.clip_grad:
                    torch.nn.utils.clip_grad_norm_(params, optim.clip_grad)
                opt.step()
                if hasattr(objective, "after_step"):
                    objective.after_step(step, total)
                step += 1

                # throughput from one step's end to the next: data loading counts, as it does for the user
                now, n = time.perf_counter(), _batch_size(batch) * rt.world_size
                # float() syncs with the GPU once a step: the price of a log line per step
                record = {"epoch": epoch, "step": step, "lr": lr, "img_per_s": n / (now - tick),
                          "elapsed_s": now - start, **{k: float(v.detach()) for k, v in out.items()}}
                tick = now
                for k in out:
                    sums[k] = sums.get(k, 0.0) + record[k]
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.0f}")
                if log:
                    log.write(json.dumps(record) + "\n")
            summary = {"epoch": epoch, "step": step, "elapsed_s": time.perf_counter() - start,
                       **{k: v / steps_per_epoch for k, v in sums.items()},
                       **(on_epoch_end(epoch) if on_epoch_end else {})}
            history.append(summary)
            if log:
                log.write(json.dumps({"summary": True, **summary}) + "\n")
                log.flush()
    return history


@torch.no_grad()
def predict(model: torch.nn.Module, data: DataLoader, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and targets over a whole loader."""
    model.eval()
    probs, targets = [], []
    for x, y in data:
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            logits = model(x.to(rt.device, non_blocking=True))
        probs.append(logits.float().softmax(-1).cpu())
        targets.append(y)
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def _to(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


def _batch_size(batch) -> int:
    while not isinstance(batch, torch.Tensor):
        batch = batch[0]
    return batch.shape[0]

