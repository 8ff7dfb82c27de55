"""ONNX export: onnxruntime reproduces torch's probabilities, and the file says how to preprocess."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime  # noqa: E402

from medalign import config  # noqa: E402
from medalign.export import to_onnx  # noqa: E402
from medalign.predict import predict  # noqa: E402

MODELS = {
    "vit_lora": ["backbone.name=test_vit", "backbone.kwargs.patch_size=8", "adapter.name=lora"],
    "cnn_full": ["backbone.name=test_resnet", "adapter.name=full"],
    "cnn_ordinal": ["backbone.name=test_resnet", "adapter.name=full", "task.type=ordinal",
                    "task.grades=[normal, lesion]"],
}


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_reproduces_the_models_probabilities(tmp_path, demo_set, name):
    stage = config.STAGES["finetune"]
    cfg = config.load(stage.config, None, ["runtime.device=cpu", "data.batch_size=4", f"data.manifest={demo_set}",
                                           "backbone.img_size=32", "optim.epochs=1", *MODELS[name]])
    (tmp_path / "ft").mkdir()
    stage.run(cfg, tmp_path / "ft")
    report = to_onnx(tmp_path / "ft", tmp_path / "model.onnx", demo_set, images=8)
    assert report["max_abs_diff"] <= 1e-4 and report["images"] == 8
    meta = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}["medalign"])
    assert meta["img_size"] == 32 and meta["in_chans"] == 1 and meta["classes"] == report["classes"]
    # another batch size than the traced one, against medalign's own predictions on those rows
    predict(tmp_path / "ft", demo_set, tmp_path / "p.csv", device="cpu")
    import csv
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))[:8]
    expected = np.array([[float(r[f"p_{c}"]) for c in meta["classes"]] for r in rows])
    from medalign.export import _real_inputs
    from medalign.models import classifier
    _, bb, _ = classifier.load(tmp_path / "ft")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": _real_inputs(bb, demo_set, 8).numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4
