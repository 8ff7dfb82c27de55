"""torchrun with two CPU processes (gloo): DDP trains, data is sharded, only rank 0 writes."""
import json
import os
import subprocess
import sys


def test_torchrun_two_ranks(demo_set, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "medalign",
           "pretrain", f"data.manifest={demo_set}", "backbone.name=test_resnet", "backbone.img_size=32",
           "method.name=simclr", "data.batch_size=4", "optim.epochs=1", "runtime.device=cpu", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("[pretrain] done") == 1  # rank 0 alone reports and writes
    steps = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' not in x]
    # 20 images (8 unlabeled + 12 train) over 2 ranks of batch 4: 10 per rank -> 2 full batches each
    assert len(steps) == 2
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
