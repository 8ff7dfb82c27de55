"""A backbone with a task's head, and the saved form of a fine-tuned one.

A fine-tuned model is saved as what training changed (adapter.safetensors: the adapter's weights,
the head and every buffer) over a base weights file that model.json names by path and sha256, so
many tasks share one backbone file and each stores only its adapter. With no base file (random
init) or every weight trained it is saved whole (model.safetensors). LoRA/DoRA adapters are also
written in peft's own layout (peft/). `merge` folds an adapter into plain timm weights.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medalign import config
from medalign.data.manifest import file_sha256
from medalign.errors import CheckpointError, ConfigError, writing
from medalign.models import adapters, checkpoint, tuning
from medalign.models.backbones import Backbone, head_names
from medalign.tasks import Task

ADAPTER = checkpoint.ADAPTER


def build(bb: Backbone, task: Task, head: config.HeadConfig, keep_head: bool = False) -> nn.Module:
    """The backbone, its weights loaded, under a new head for `task` (or the checkpoint's own one,
    `keep_head`, when it was trained for exactly these classes)."""
    model = bb.create(num_classes=len(task.classes))
    (name, *others) = head_names(model)
    if (task.kind, head.name) == ("classification", "linear"):
        if not keep_head:
            for h in (name, *others):
                _small_init(model.get_submodule(h))
        return model
    if others:
        raise ConfigError(f"{bb.name} has {len(others) + 1} heads ({', '.join([name, *others])}); "
                          "only head.name=linear and task.type=classification fit it")
    parent, _, leaf = name.rpartition(".")
    old = model.get_submodule(name)
    setattr(model.get_submodule(parent) if parent else model, leaf, task.head(old.in_features, head))
    return model


def _small_init(head: nn.Module) -> None:
    """A new head starts near zero, as MAE's and DINO's probes do: timm's from-scratch init (0.7 wide
    for EfficientNet) on frozen 1280-d features gives logits in the tens and a first epoch of noise."""
    if isinstance(head, nn.Linear):
        nn.init.trunc_normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def save(directory: Path, model: nn.Module, bb: Backbone, adapter: config.Section, meta: dict) -> str:
    """Writes `model` (as trained, adapter unmerged) into `directory`; returns the weights file's name."""
    directory.mkdir(parents=True, exist_ok=True)
    if bb.weights is None or adapter.name == "full":
        checkpoint.save(directory, tuning.merged(model).state_dict(), meta)
        return checkpoint.WEIGHTS
    base = {"file": str(Path(bb.weights).resolve()), "sha256": file_sha256(Path(bb.weights))}
    if bb.starting_point and bb.meta is None:  # the base is a named start itself, not trained from one
        base["starting_point"] = bb.starting_point
    meta = {**meta, "base": base}
    with writing(directory / ADAPTER, checkpoint.THEN):
        save_file({k: v.contiguous() for k, v in adapters.trainable_state(model).items()}, str(directory / ADAPTER))
    if hasattr(model, "save_pretrained"):  # peft's layout, for tools that read peft adapters
        with writing(directory / "peft", checkpoint.THEN):
            model.save_pretrained(str(directory / "peft"))
    with writing(directory / checkpoint.META, checkpoint.THEN):
        (directory / checkpoint.META).write_text(json.dumps(meta, indent=2) + "\n")
    return ADAPTER


def load(path: str | Path, base: str | Path | None = None) -> tuple[nn.Module, Backbone, Task]:
    """A fine-tuned model as it was trained: whole, or its base (the recorded file, or `base` when
    it has moved) with the adapter on top; a base whose sha256 differs is refused."""
    folder = _folder(Path(path))
    meta = checkpoint.read_meta(folder)
    if not meta or not meta.get("classes"):
        raise CheckpointError(f"{path} is not a fine-tuned model (no classes in its model.json)")
    a, task = meta["architecture"], Task.from_meta(meta)
    head = config.HeadConfig(**meta.get("head", {}))

    def backbone(weights: Path | None) -> Backbone:
        return Backbone(a["name"], a["kwargs"], a["in_chans"], meta["img_size"], **meta["normalization"],
                        weights=weights, meta=meta)

    if (folder / checkpoint.WEIGHTS).is_file():
        bb = backbone(None)
        model = build(bb, task, head)
        state = checkpoint.load_state_dict(folder / checkpoint.WEIGHTS)
        checkpoint.check_fit(model, state, folder / checkpoint.WEIGHTS)
        model.load_state_dict(state)
        return model, bb, task

    recorded = meta.get("base")
    if not recorded or not (folder / ADAPTER).is_file():
        raise CheckpointError(f"{folder}: neither {checkpoint.WEIGHTS} nor {ADAPTER} with a recorded base")
    file, start = Path(base or recorded["file"]), recorded.get("starting_point")
    if not base and not file.is_file() and start:
        file = _reconverted(folder, start)
    elif not file.is_file():
        raise CheckpointError(f"{folder}: its base weights {file} are missing (pass the base file's new place)")
    else:
        digest = file_sha256(file)
        if digest != recorded["sha256"]:
            raise CheckpointError(f"{file} (sha256 {digest[:12]}) is not the base {folder} was trained on: "
                                  f"{recorded['file']} (sha256 {recorded['sha256'][:12]})")
    bb = backbone(file)
    adapter = config.ADAPTERS.get(meta["adapter"]["name"])(**meta["adapter"])
    model = adapters.apply(build(bb, task, head), adapter, meta.get("seed", 0))
    state = load_file(str(folder / ADAPTER))
    own = model.state_dict()
    trained = [k for k, p in model.named_parameters() if p.requires_grad]
    problems = [k for k in state if k not in own or own[k].shape != state[k].shape] + \
               [k for k in trained if k not in state]
    if problems:
        raise CheckpointError(f"{folder / ADAPTER} does not fit its {adapter.name} adapter on {a['name']}: "
                              f"{', '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}")
    model.load_state_dict(state, strict=False)
    return model, bb, task


def _reconverted(folder: Path, start: dict) -> Path:
    """A named start's converted file, gone with the cache, converted again from the package file
    it came from. Same source file, same tensors: that sha256 is the check, since safetensors writes
    its header keys in no fixed order and the new file's bytes differ from the old one's."""
    from medalign.models import weights as named

    found = named.locate(start["name"])
    if found.record["sha256"] != start["sha256"]:
        raise CheckpointError(f"{folder} was trained on {start['name']} from {start['package']} {start['version']} "
                              f"(sha256 {start['sha256'][:12]}); the installed one is {found.record['version']} "
                              f"(sha256 {found.record['sha256'][:12]})")
    return found.file


def merge(path: str | Path, out: Path, base: str | Path | None = None) -> Path:
    """Plain timm weights with the adapter folded in, written whole into `out` (atomically)."""
    model, _, _ = load(path, base)
    meta = {k: v for k, v in checkpoint.read_meta(_folder(Path(path))).items() if k != "base"}
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} exists; choose a new folder for the merged model")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        checkpoint.save(tmp, tuning.merged(model).state_dict(), {**meta, "merged_from": str(Path(path).resolve())})
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _folder(path: Path) -> Path:
    """The model folder of a finetune output (its model/), or the folder itself."""
    for folder in (path, path / "model"):
        if (folder / checkpoint.META).is_file():
            return folder
    if path.is_file() and path.name in (checkpoint.WEIGHTS, ADAPTER, checkpoint.META):
        return path.parent
    raise CheckpointError(f"{path}: no fine-tuned model here (no model.json in it or in its model/ folder)")


@torch.no_grad()
def probabilities(model: nn.Module, task: Task, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """The task's probabilities for a batch; with `tta`, averaged over the image and its mirror."""
    p = task.probs(model(x).float())
    if tta:
        p = (p + task.probs(model(x.flip(-1)).float())) / 2
    return p
