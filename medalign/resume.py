"""Resume state inside a stage's in-progress folder: weights apart from loop state, as torchtune does.

    resume/weights.safetensors   the objective's state_dict (backbone, heads, EMA teacher, buffers)
    resume/recipe_state.pt       optimizer, step, loader positions, epoch history, RNG states,
                                 the objective's own extra state (finetune's best epoch so far)
    resume/progress.json         step and total, torch-free, for `medalign status`

Everything in recipe_state.pt loads with `torch.load(weights_only=True)`: RNG states are tensors or
JSON strings, never numpy objects. A new state is written beside the old one and swapped in by
renames, so a kill at any moment leaves one complete state behind; a failed write (full disk)
removes the new one and leaves the old one as it was.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medalign.errors import writing

WEIGHTS, STATE, PROGRESS = "weights.safetensors", "recipe_state.pt", "progress.json"


def save(folder: Path, weights: dict[str, torch.Tensor], state: dict, progress: dict) -> None:
    new, old = folder.with_name(folder.name + ".new"), folder.with_name(folder.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    then = f"the previous checkpoint in {folder} is intact; free some space and run the same command again to resume"
    try:
        with writing(new, then):
            new.mkdir(parents=True)
        with writing(new / WEIGHTS, then):
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(new / WEIGHTS))
        # through a Python file: torch.save to a path hides ENOSPC behind "unexpected pos" errors
        with writing(new / STATE, then), open(new / STATE, "wb") as f:
            torch.save(state, f)
        with writing(new / PROGRESS, then):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            (new / PROGRESS).write_text(json.dumps({**progress, "saved_at": stamp}) + "\n")
    except BaseException:
        # the half-written state goes (load never reads .new, and on a full disk its space is wanted);
        # `folder` was not touched yet, so the previous state is still the one load() finds
        shutil.rmtree(new, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load(folder: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The newest complete state: `folder`, or the old one a kill left between the two renames."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / PROGRESS).is_file():  # written last: the folder is complete
            state = torch.load(candidate / STATE, map_location="cpu", weights_only=True)
            return load_file(str(candidate / WEIGHTS)), state
    return None


def discard(folder: Path) -> None:
    for f in (folder, folder.with_name(folder.name + ".new"), folder.with_name(folder.name + ".old")):
        shutil.rmtree(f, ignore_errors=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(),
             "numpy": json.dumps(_jsonable(np.random.get_state())),
             "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value
