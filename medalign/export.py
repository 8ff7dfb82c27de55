"""export onnx: a fine-tuned model as one ONNX file that outputs class probabilities.

torch.onnx traces the model as loaded (adapter and all) behind the task's own probability function,
with a dynamic batch axis. What a deployment needs to preprocess an image as training did (size,
channels, intensity handling, normalisation) and to read the output (class names, task) goes into
the file's metadata under `medalign`, as JSON. The export is refused unless onnxruntime, run on real
images through the model's evaluation transform, reproduces torch's probabilities within `atol`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medalign import config
from medalign.data.datasets import ImageDataset, load_rows
from medalign.errors import MedalignError
from medalign.models import classifier
from medalign.stages import _common as common
from medalign.tasks import Task

ATOL = 1e-4


class Probabilities(nn.Module):
    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task.probs(self.model(x))


def to_onnx(model_path: str | Path, out: Path, manifest: str | Path, *, base: str | Path | None = None,
            images: int = 16, opset: int = 18, atol: float = ATOL) -> dict:
    """Writes `out` (atomically) and returns the parity check's numbers."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise MedalignError("export onnx needs onnx and onnxruntime: pip install 'medalign[export]'") from None
    model, bb, task = classifier.load(model_path, base)
    wrapped = Probabilities(model, task).eval()
    x = _real_inputs(bb, manifest, images)
    tmp = out.with_name(f".{out.name}.partial")
    with torch.no_grad():
        expected = wrapped(x).numpy()
        torch.onnx.export(wrapped, (x[:1],), str(tmp), input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    graph = onnx.load(str(tmp))
    meta = {"classes": task.classes, "task": task.as_meta(), "img_size": bb.img_size, "in_chans": bb.in_chans,
            "mean": list(bb.mean), "std": list(bb.std), "intensity": bb.meta.get("intensity", {}),
            "architecture": bb.name, "input": "float32 (batch, in_chans, img_size, img_size), [0, 1] scaled "
                                              "by the intensity handling, then (x - mean) / std"}
    graph.metadata_props.add(key="medalign", value=json.dumps(meta))
    onnx.save(graph, str(tmp))
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        tmp.unlink()
        raise MedalignError(f"export onnx: onnxruntime's probabilities differ from torch's by {diff:.2e} "
                            f"(> {atol:g}) on {len(x)} images of {manifest}; nothing written")
    os.replace(tmp, out)
    return {"onnx": str(out), "max_abs_diff": diff, "images": len(x), "opset": opset, "classes": task.classes}


def _real_inputs(bb, manifest: str | Path, n: int) -> torch.Tensor:
    """The first `n` readable images of the manifest, as evaluation would see them."""
    m, rows, _ = load_rows(manifest, None, "skip")
    if not rows:
        raise MedalignError(f"export onnx: no readable image in {manifest} to check the export on")
    intensity = config.Intensity(**bb.meta.get("intensity", {}))
    ds = ImageDataset(m, rows[:n], common.eval_transform(bb, intensity), bb.in_chans, reader=intensity.reader_args())
    return torch.stack([ds[i][0] for i in range(len(ds))]).float()
