"""The optimizer step: AdamW as PyTorch steps it by default on the CPU (a Python loop over the tensors),
with `foreach`, and `fused` (one kernel, what the engine uses on CPU and CUDA), beside a whole
training step (forward, backward, fused AdamW step) of the same model at the batch its preset trains with.

    .venv/bin/python benchmarks/optimizer_step.py [--repeats 20]

Random-init timm models at 64 px, 1 channel, channels-last as the engine trains them; gradients from
one real backward. Each timing is the median over `repeats` calls after one warm-up.
Writes the section "## Optimizer step (...)" of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from results import machine, update_section

HEADING = "## Optimizer step (`benchmarks/optimizer_step.py`)"
MODELS = {  # timm name, kwargs, batch (the preset's)
    "ResNet-18 (finetune full)": ("resnet18", {}, 16),
    "EfficientNet-Lite0 (finetune full)": ("tf_efficientnet_lite0", {}, 16),
    "ViT-tiny, patch 8 (pretrain DINO)": ("vit_tiny_patch16_224", {"patch_size": 8, "img_size": 64}, 64),
}
VARIANTS = {"for-loop (CPU default)": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for label, (name, kwargs, batch) in MODELS.items():
        model = timm.create_model(name, num_classes=2, in_chans=1, **kwargs).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 1, 64, 64)
        model(x).logsumexp(-1).mean().backward()
        steps = {v: median_ms(torch.optim.AdamW(model.parameters(), lr=1e-4, **kw).step, args.repeats)
                 for v, kw in VARIANTS.items()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def train_step():
            opt.zero_grad()
            model(x).logsumexp(-1).mean().backward()
            opt.step()
        whole = median_ms(train_step, max(3, args.repeats // 4))
        params = sum(p.numel() for p in model.parameters())
        loop, fused = steps["for-loop (CPU default)"], steps["fused"]
        rows.append(f"| {label} | {params:,} | {batch} | " + " | ".join(f"{steps[v]:.1f}" for v in VARIANTS)
                    + f" | {loop / fused:.1f}x | {whole:.0f} | {(loop - fused) / (whole - fused + loop):.1%} |")
        print(rows[-1], flush=True)
    section = "\n".join([
        HEADING, "",
        f"Machine: {machine()}, timm "
        f"{timm.__version__}; {time.strftime('%Y-%m-%d')}. `python benchmarks/optimizer_step.py --repeats "
        f"{args.repeats}`. Milliseconds per AdamW step (median); the whole training step uses fused AdamW; "
        "the last column is the share of a training step with the default optimizer that fused saves.", "",
        "| model | parameters | batch | " + " | ".join(f"{v} ms" for v in VARIANTS)
        + " | fused speed-up | training step ms | step time saved |",
        "|---|---|---|---|---|---|---|---|---|", *rows, ""])
    print(section)
    update_section(HEADING, section)


if __name__ == "__main__":
    main()
