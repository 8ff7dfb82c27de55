"""torchrun with two CPU processes (gloo): DDP trains, data is sharded, only rank 0 writes and prints."""
import json
import os
import subprocess
import sys


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def torchrun(*args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "medalign",
                           *args], capture_output=True, text=True, timeout=300, env=ENV)


def test_torchrun_two_ranks(demo_set, tmp_path):
    out = tmp_path / "out"
    r = torchrun("pretrain", f"data.manifest={demo_set}", "backbone.name=test_resnet", "backbone.img_size=32",
                 "method.name=simclr", "data.batch_size=4", "optim.epochs=1", "runtime.device=cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("[pretrain] done") == 1  # rank 0 alone reports and writes
    steps = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' not in x]
    # 20 images (8 unlabeled + 12 train) over 2 ranks of batch 4: 10 per rank -> 2 full batches each
    assert len(steps) == 2
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no .partial-out, no .lock-out


def test_torchrun_pipeline_runs_each_step_once_in_one_folder(tiny_pipeline):
    # rank 1 reads each upstream output too: it fails unless it waits until rank 0 has renamed it into place
    r = torchrun("run", str(tiny_pipeline))
    assert r.returncode == 0, r.stderr[-2000:]
    steps = ["data", "pretrain", "finetune", "evaluate"]
    assert [line.split("]")[0][1:] for line in r.stdout.splitlines() if "] done " in line] == steps  # rank 0 alone
    workdir = tiny_pipeline.parent / "work"
    for step in steps:
        assert len(os.listdir(workdir / step)) == 1  # both ranks used rank 0's folder; no other folder was made
    again = torchrun("run", str(tiny_pipeline))  # every rank hears from rank 0 that all is cached
    assert again.returncode == 0 and again.stdout.count("] cached ") == 4 and "] done " not in again.stdout



def _criterion():
    import torch

    from medalign.config import SimCLRConfig
    from medalign.ssl.simclr import SimCLR

    class Tiny(torch.nn.Module):
        num_features = 4

    return SimCLR(SimCLRConfig(), Tiny).criterion


def _ntxent_rank(rank: int, init: str, z0, z1, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    half = slice(rank * 4, rank * 4 + 4)
    loss = _criterion()(z0[half], z1[half])
    dist.all_reduce(loss)
    out[rank] = float(loss) / 2
    dist.destroy_process_group()


def test_simclr_negatives_are_gathered_across_ranks(tmp_path):
    """Two ranks with half a batch each score what one process scores on the whole batch."""
    import torch
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    whole = float(_criterion()(z0, z1))
    out = mp.Manager().dict()
    mp.spawn(_ntxent_rank, args=(f"file://{tmp_path / 'rendezvous'}", z0, z1, out), nprocs=2)
    assert out[0] == out[1] and abs(out[0] - whole) < 1e-5
    # each rank with its own negatives only would score another number
    local = sum(float(_criterion()(z0[s], z1[s])) for s in (slice(0, 4), slice(4, 8))) / 2
    assert abs(local - whole) > 1e-3
