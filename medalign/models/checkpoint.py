"""The checkpoint format: weights in safetensors (timm key layout) beside a model.json.

model.json holds what is needed to rebuild the model without the config that trained it: timm
name and kwargs, in_chans, img_size, normalisation, classes, adapter, SSL method, data fingerprint,
config hash and library versions. Files we did not write are read with safetensors or
`torch.load(weights_only=True)`, never unpickled.
"""
from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medalign.errors import CheckpointError, writing

WEIGHTS = "model.safetensors"
META = "model.json"
ADAPTER = "adapter.safetensors"  # a fine-tuned adapter over its base (models/classifier.py)
# Wrappers other tools put around a model's keys: DDP, torch.compile.
_WRAPPERS = ("module.", "_orig_mod.")
# Where SSL training code keeps the backbone beside its heads and teacher (DINOv2's "backbone.",
# lightly's "student_backbone."): when present, only these keys are the backbone.
_BACKBONES = ("backbone.", "student_backbone.")
# MAE's decoder sits at the top level beside the encoder it trained; the encoder is the backbone.
_DECODER = "decoder_"
# A stage writes its checkpoint after training, in its in-progress folder: a failure there leaves
# earlier outputs alone, and the rerun trains that stage again (its resume state is gone by then).
THEN = "earlier results are intact; free some space and run the same command again to redo this stage"


def save(directory: Path, state_dict: dict[str, torch.Tensor], meta: dict) -> Path:
    with writing(directory, THEN):
        directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or strided storage; contiguous clones are always accepted
    with writing(directory / WEIGHTS, THEN):
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(directory / WEIGHTS))
    with writing(directory / META, THEN):
        (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def metadata(arch: dict, img_size: int, normalization: dict, **extra) -> dict:
    import lightly
    import timm

    from medalign import __version__
    versions = {"medalign": __version__, "torch": torch.__version__, "timm": timm.__version__,
                "lightly": lightly.__version__}
    return {"format": "medalign-checkpoint/1", "architecture": arch, "img_size": img_size,
            "normalization": normalization, **extra, "versions": versions}


def locate(path: str | Path) -> tuple[Path, dict | None]:
    """A weights file and its model.json, from a checkpoint folder, a stage output or a file."""
    p = Path(path)
    if p.is_dir():
        for folder in (p, p / "checkpoint", p / "model"):
            if (folder / WEIGHTS).is_file():
                return folder / WEIGHTS, read_meta(folder)
            if (folder / ADAPTER).is_file():
                raise CheckpointError(f"{folder} holds an adapter over its base weights, not a whole model; "
                                      f"merge it first (medalign export merge {p} OUT) and start from OUT")
        raise CheckpointError(f"no {WEIGHTS} in {p} (nor in its checkpoint/ or model/ folder)")
    if p.is_file():
        return p, read_meta(p.parent) if p.name == WEIGHTS else None
    raise CheckpointError(f"checkpoint not found: {p}")


def read_meta(folder: Path) -> dict | None:
    f = folder / META
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    arch = meta.get("architecture") if isinstance(meta, dict) else None
    if not isinstance(arch, dict) or not {"name", "kwargs", "in_chans"} <= set(arch):
        raise CheckpointError(f"{f}: not a medalign model.json (no architecture name, kwargs, in_chans)")
    return meta


def load_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors from a weights file in any layout we know, keys as the file has them
    once wrappers, SSL heads, teachers and MAE's decoder are set aside."""
    try:
        if weights.suffix == ".safetensors":
            state = load_file(str(weights))
        else:
            # MAE's and DeiT's training checkpoints keep their argparse.Namespace of arguments beside
            # the weights; a Namespace only holds attributes, so allowing it runs no code
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        hint = (": a training checkpoint; load its exported weights instead, e.g. LightlyTrain's "
                "exported_models/exported_last.pt") if weights.suffix == ".ckpt" else ""
        raise CheckpointError(f"cannot read weights {weights}: it pickles objects other than tensors, which "
                              f"are never unpickled{hint}") from None
    except Exception as e:  # each format fails in its own way; the user needs the file and the reason
        raise CheckpointError(f"cannot read weights {weights}: {str(e).splitlines()[0]}") from None
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights}: not a state dict of tensors")
    state = {_strip(k, _WRAPPERS): v for k, v in state.items()}
    if any(k.startswith(_BACKBONES) for k in state):
        return {_strip(k, _BACKBONES): v for k, v in state.items() if k.startswith(_BACKBONES)}
    return {k: v for k, v in state.items() if not k.startswith(_DECODER)}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    while key.startswith(prefixes):
        key = key[len(next(p for p in prefixes if key.startswith(p))):]
    return key


def check_fit(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path,
              allowed_missing: tuple[str, ...] = ()) -> None:
    """Refuses a checkpoint that does not fit, naming the keys; only `allowed_missing` may be absent."""
    own = model.state_dict()
    missing = [k for k in own if k not in state
               and not any(k == m or k.startswith(m + ".") for m in allowed_missing)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
        if keys:
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
    if problems:
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise CheckpointError(f"checkpoint {source} does not fit {name}: " + "; ".join(problems))
