"""The one training loop, shared by every stage.

A stage hands `fit` an objective: an nn.Module whose forward takes a batch and returns a dict with
"loss" (and any other scalars worth logging). Optional hooks, each called if the objective has it:

    after_backward(epoch)                gradients are there, not yet applied (DINO's last layer)
    after_optimizer_step(step, total)    the weights moved (EMA teachers)
    on_epoch_end(epoch) -> dict          scalars for the epoch summary (finetune validates here)
    resume_state() / load_resume_state(state)   what else a resume needs (finetune's best epoch)

The loop owns the rest: device, bfloat16 autocast, torch.distributed (launch with
`torchrun -m medalign ...`), AdamW over timm's parameter groups, warm-up and cosine decay,
gradient accumulation and clipping, one or several loaders per step, resume state every N steps
or M minutes, SIGTERM/SIGUSR1 preemption, a progress bar and one JSON line per step in log.jsonl
(and the same scalars to TensorBoard or MLflow, see medalign.tracking).
"""
from __future__ import annotations

import contextlib
import json
import logging
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
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from medalign import config, preemption, resume, tracking
from medalign.data.transforms import seed_worker
from medalign.errors import ConfigError, MedalignError, Preempted, writing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    amp: bool = False
    channels_last: bool = False
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0

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
    _reset_peak_memory(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    return Runtime(device, seed, rank, world_size, amp=cfg.amp and device.type == "cuda",
                   channels_last=cfg.channels_last, checkpoint_every_steps=cfg.checkpoint_every_steps,
                   checkpoint_every_minutes=cfg.checkpoint_every_minutes)


class EpochSampler(DistributedSampler):
    """DistributedSampler's order, a pure function of (seed, epoch) on one rank too, so a resumed
    epoch replays the interrupted one; `skip` leaves out the batches already trained on."""

    def __init__(self, dataset: Dataset, rt: Runtime, seed: int):
        super().__init__(dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])


# inference keeps no activations for a backward pass, so it batches at least this many images
# (EfficientNet-Lite0 at 64 px on 2 CPU cores: 1,083 img/s at 16, 1,962 at 64)
INFERENCE_BATCH = 64


def loader(dataset: Dataset, batch_size: int, rt: Runtime, *, train: bool, num_workers: int = 0,
           seed_offset: int = 0) -> DataLoader:
    sampler = EpochSampler(dataset, rt, rt.seed + seed_offset) if train else None
    # its own generator for worker seeds: starting an epoch's iterator must not draw from the global
    # RNG, or a run resumed mid-epoch would see other dropout masks than an uninterrupted one
    generator = torch.Generator().manual_seed(rt.seed + seed_offset + 1000 * rt.rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      drop_last=train and len(dataset) > batch_size, num_workers=num_workers,
                      pin_memory=rt.device.type == "cuda", persistent_workers=num_workers > 0,
                      worker_init_fn=seed_worker)


class Stream:
    """One loader's batches across epochs, restarting in the next epoch's order when exhausted:
    several loaders can be zipped per step (labeled and unlabeled ones), and each resumes where it was."""

    def __init__(self, data: DataLoader):
        self.data, self.epoch, self.consumed, self._batches = data, 0, 0, None

    def begin(self, epoch: int) -> None:
        self.epoch, self.consumed, self._batches = epoch, 0, None

    def next(self):
        if self._batches is None:
            if isinstance(self.data.sampler, EpochSampler):
                self.data.sampler.set_epoch(self.epoch)
                self.data.sampler.skip = self.consumed * self.data.batch_size
            self._batches = iter(self.data)
        try:
            batch = next(self._batches)
        except StopIteration:
            self.begin(self.epoch + 1)
            return self.next()
        self.consumed += 1
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load(self, state: dict) -> None:
        self.epoch, self.consumed, self._batches = state["epoch"], state["consumed"], None


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay reaching 0 at `total`; a pure function of the step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    # lightly's schedule ends at max_steps - 1: one more, so that the last step still learns
    return cosine_schedule(step - warmup, max(total - warmup, 1) + 1, peak, 0.0)


def param_groups(objective: torch.nn.Module, optim: config.OptimConfig) -> list[dict]:
    """timm's groups for every timm model in the objective: no decay on biases, norms and the
    model's own no_weight_decay() (pos_embed, cls_token); optionally layer-wise LR decay.
    Parameters outside timm models (SSL heads) follow the same bias/norm rule."""
    groups, seen = [], set()
    for module in timm_models(objective):
        skip = module.no_weight_decay() if hasattr(module, "no_weight_decay") else set()
        if optim.layer_decay:
            if not hasattr(module, "group_matcher"):
                raise ConfigError(f"optim.layer_decay: {type(module).__name__} does not say how its layers group")
            found = param_groups_layer_decay(module, optim.weight_decay, skip, layer_decay=optim.layer_decay)
        else:
            found = param_groups_weight_decay(module, optim.weight_decay, no_weight_decay_list=skip)
        groups += found
        seen |= {id(p) for g in found for p in g["params"]}
    rest = [(n, p) for n, p in objective.named_parameters() if p.requires_grad and id(p) not in seen]
    groups.append({"params": [p for n, p in rest if p.ndim > 1 and not n.endswith(".bias")],
                   "weight_decay": optim.weight_decay})
    groups.append({"params": [p for n, p in rest if p.ndim <= 1 or n.endswith(".bias")], "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def timm_models(objective: torch.nn.Module) -> list[torch.nn.Module]:
    # timm sets pretrained_cfg on the instance; peft's wrappers only forward the attribute
    found, prefixes = [], []
    for name, m in objective.named_modules():
        if "pretrained_cfg" in vars(m) and not any(name.startswith(p) for p in prefixes):
            found.append(m)
            prefixes.append(name + ".")
    return found


def fit(objective: torch.nn.Module, loaders: DataLoader | dict[str, DataLoader], optim: config.OptimConfig,
        rt: Runtime, out_dir: Path, desc: str, monitor: Callable[[int], dict] | None = None,
        tracker: tracking.Tracker = tracking.NONE) -> list[dict]:
    """Trains `objective` in place, resuming from `out_dir/resume` if an earlier run left state there.

    With a dict of loaders each step's batch is a dict of their batches; the first loader defines
    the epoch and the others cycle. `monitor(epoch)`, a stage's own measurement (pretrain's k-NN),
    adds its scalars to the epoch summary. `tracker` (tracking.tracker) gets what log.jsonl gets.
    Returns one summary per epoch (means of the logged scalars).
    """
    streams = {name: Stream(d) for name, d in (loaders.items() if isinstance(loaders, dict) else [("", loaders)])}
    main = next(iter(streams.values()))
    steps_per_epoch = len(main.data) // optim.accumulate
    if steps_per_epoch == 0:
        raise ConfigError(f"{desc}: {len(main.data)} batch(es) per epoch, fewer than optim.accumulate={optim.accumulate}")
    total, warmup = optim.epochs * steps_per_epoch, int(optim.warmup_epochs * steps_per_epoch)
    place(objective, rt)
    # fused: one kernel steps every tensor; PyTorch's CPU default loops over them in Python, which is
    # a quarter of a ResNet-18 training step at batch 16 on 2 cores (benchmarks/optimizer_step.py)
    opt = torch.optim.AdamW(param_groups(objective, optim), lr=optim.lr,
                            fused=rt.device.type in ("cpu", "cuda"))
    model = DistributedDataParallel(objective) if rt.world_size > 1 else objective
    transforms = [t for s in streams.values() if hasattr(t := getattr(s.data.dataset, "transform", None), "rng_state")]
    state_dir, log_path = out_dir / "resume", out_dir / "log.jsonl"

    step, history, sums, elapsed = 0, [], {}, 0.0
    saved = resume.load(state_dir)
    if saved:
        weights, state = saved
        objective.load_state_dict(weights)
        opt.load_state_dict(state["optimizer"])
        for name, s in streams.items():
            s.load(state["streams"][name])
        for t, t_state in zip(transforms, state["augment"]):
            t.set_rng_state(t_state)
        resume.set_rng_state(state["rng"][rt.rank] if rt.rank < len(state["rng"]) else state["rng"][0])
        if hasattr(objective, "load_resume_state"):
            objective.load_resume_state(state["objective"])
        step, history, sums, elapsed = state["step"], state["history"], state["sums"], state["elapsed_s"]
        if rt.is_main:
            _truncate_log(log_path, step)
            log.info("%s: resumed from step %d of %d (%s)", desc, step, total, state_dir)

    start = time.perf_counter()

    def elapsed_now() -> float:
        return elapsed + time.perf_counter() - start

    def save() -> None:
        rngs = _gather(resume.rng_state(), rt)  # each rank's own streams, so every rank continues as it was
        if rt.is_main:
            state = {"step": step, "optimizer": opt.state_dict(), "history": history, "sums": sums,
                     "elapsed_s": elapsed_now(), "streams": {n: s.state() for n, s in streams.items()},
                     "augment": [t.rng_state() for t in transforms], "rng": rngs,
                     "objective": objective.resume_state() if hasattr(objective, "resume_state") else {}}
            resume.save(state_dir, objective.state_dict(), state, {"step": step, "total_steps": total})
        if rt.world_size > 1:
            dist.barrier()

    def write_log(record: dict) -> None:  # line-buffered: a full disk shows up on any step's line
        with writing(log_path):
            log_file.write(json.dumps(record) + "\n")

    last_save = time.monotonic()
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=None if rt.is_main else True, leave=False)
    with preemption.requested() as stop, tracker.run(step), \
            log_path.open("a", buffering=1) if rt.is_main else contextlib.nullcontext() as log_file:
        model.train()
        tick = time.perf_counter()
        while step < total:
            epoch = step // steps_per_epoch
            if step % steps_per_epoch == 0:
                main.begin(epoch)
            lr = lr_at(step, total, optim.lr, warmup)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            scalars, n_images = {}, 0
            for micro in range(optim.accumulate):
                batch = _to({n: s.next() for n, s in streams.items()} if len(streams) > 1 else main.next(), rt.device)
                n_images += _batch_size(batch)
                # DDP averages gradients across ranks on every backward unless told to wait for the last one
                last = micro == optim.accumulate - 1
                with model.no_sync() if rt.world_size > 1 and not last else contextlib.nullcontext():
                    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
                        out = model(batch)
                    if not torch.isfinite(out["loss"]):
                        raise MedalignError(f"{desc}: loss is {out['loss'].item()} at step {step}; "
                                            "lower optim.lr or check the data")
                    (out["loss"] / optim.accumulate).backward()
                for k, v in out.items():
                    # float() syncs with the GPU once per batch: the price of a log line per step
                    scalars[k] = scalars.get(k, 0.0) + float(v.detach()) / optim.accumulate
            if hasattr(objective, "after_backward"):
                objective.after_backward(epoch)
            if optim.clip_grad:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], optim.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if hasattr(objective, "after_optimizer_step"):
                objective.after_optimizer_step(step, total)
            step += 1

            # throughput from one step's end to the next: data loading counts, as it does for the user
            now = time.perf_counter()
            record = {"epoch": epoch, "step": step, "lr": lr, "img_per_s": n_images * rt.world_size / (now - tick),
                      "elapsed_s": elapsed_now(), **scalars}
            tick = now
            for k, v in scalars.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.0f}")
            if log_file:
                write_log(record)
            tracker.log(step, record)

            if step % steps_per_epoch == 0:
                summary = {"epoch": epoch, "step": step, "elapsed_s": elapsed_now(),
                           **{k: v / steps_per_epoch for k, v in sums.items()},
                           **(objective.on_epoch_end(epoch) if hasattr(objective, "on_epoch_end") else {}),
                           **(monitor(epoch) if monitor else {})}
                history.append(summary)
                sums = {}
                model.train()  # on_epoch_end may have evaluated
                if log_file:
                    write_log({"summary": True, **summary})
                tracker.log(step, summary, prefix="epoch/")
                # early stopping: the objective says when more epochs no longer pay
                if _agree([bool(getattr(objective, "converged", False))], rt)[0]:
                    log.info("%s: stopped early after epoch %d of %d", desc, epoch + 1, optim.epochs)
                    break

            due = (rt.checkpoint_every_steps and step % rt.checkpoint_every_steps == 0) or \
                  (rt.checkpoint_every_minutes and time.monotonic() - last_save >= 60 * rt.checkpoint_every_minutes)
            preempt, due = _agree([stop.signal is not None, bool(due) and step < total], rt)
            if due or preempt:
                if log_file:
                    log_file.flush()
                tracker.flush()  # a kill after the checkpoint would lose what is logged before it for good
                save()
                last_save = time.monotonic()
            if preempt:
                raise Preempted(f"{desc}: stopped by {stop.signal} at step {step} of {total}; resume state "
                                f"in {state_dir}; run the same command again to continue")
    bar.close()
    if rt.is_main:
        resume.discard(state_dir)  # done: the stage saves the weights it wants
    return history


def _agree(flags: list[bool], rt: Runtime) -> list[bool]:
    """Every rank stops or saves at the same step: a flag raised on any rank counts on all."""
    if rt.world_size == 1:
        return flags
    t = torch.tensor(flags, dtype=torch.int32, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def _gather(obj, rt: Runtime) -> list:
    if rt.world_size == 1:
        return [obj]
    out = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Steps logged after the last checkpoint are trained again: drop their lines, and a line a
    kill cut in half."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            pass
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def place(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """The model on the run's device, its 4-D weights channels-last if the runtime says so: a
    convolution whose weight is NHWC runs NHWC, converting its input, so batches need no change."""
    return model.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.preserve_format)


def _reset_peak_memory(device: torch.device) -> None:
    """Each stage reports its own peak, also when `medalign run` runs many in one process."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the resident-set high-water mark (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(rt: Runtime) -> float:
    """CUDA's peak allocation, or on the CPU the peak resident set since `setup` (elsewhere than
    Linux: since the process began)."""
    if rt.device.type == "cuda":
        return torch.cuda.max_memory_allocated(rt.device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


@torch.no_grad()
def predict(model: torch.nn.Module, data: DataLoader, rt: Runtime,
            to_probs: Callable[[torch.Tensor], torch.Tensor] = lambda z: z.softmax(-1)) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (softmax unless `to_probs` says otherwise) and targets over a whole loader."""
    model.eval()
    probs, targets = [], []
    for x, y in data:
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            logits = model(x.to(rt.device, non_blocking=True))
        probs.append(to_probs(logits.float()).cpu())
        targets.append(y)
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def _to(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return type(batch)(_to(b, device) for b in batch)


def _batch_size(batch) -> int:
    while not isinstance(batch, torch.Tensor):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return batch.shape[0]
