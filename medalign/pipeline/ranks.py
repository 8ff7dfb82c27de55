"""torchrun's ranks as the store sees them: rank 0 locks, creates and renames folders; every rank runs.

torch is imported only under torchrun (WORLD_SIZE > 1): a single-process `status` or fully cached
`run` stays torch-free. The process group started here is the one the engine then trains in.
"""
from __future__ import annotations

import atexit
import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def share(word):
    """Rank 0's `word` on every rank. No other rank returns before rank 0 has called it: a barrier."""
    if world() == 1:
        return word
    box = [word]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world() > 1:
        _group().barrier()


def _group():
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        # objects and barriers go over gloo (they live in CPU memory), the engine's DDP on CUDA over
        # NCCL; without a GPU NCCL refuses to start at all
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        # torn down by the interpreter's exit instead, gloo's threads can abort the process
        # ("terminate called without an active exception") after all its work is done
        atexit.register(dist.destroy_process_group)
    return dist
