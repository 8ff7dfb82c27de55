import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from medalign.data import demo  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A pipeline small enough for CI: timm's 0.3M-parameter test_vit at 32 px, one epoch per stage.
TINY_PIPELINE = """
workdir: {workdir}
steps:
  data:
    stage: demo-data
    config: {{n_unlabeled: 24, n_train: 16, n_val: 8, n_test: 12, img_size: 32, seed: 1}}
  pretrain:
    config:
      backbone: {{name: test_vit, kwargs: {{patch_size: 8}}, img_size: 32}}
      method: {{name: dino, out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, n_local_crops: 2}}
      data: {{manifest: "${{data}}/manifest.csv", batch_size: 16}}
      optim: {{epochs: 1, warmup_epochs: 0}}
  finetune:
    config:
      backbone: {{checkpoint: "${{pretrain}}"}}
      adapter: {{name: lora, r: 4}}
      data: {{manifest: "${{data}}/manifest.csv", batch_size: 8}}
      optim: {{epochs: 2, warmup_epochs: 0}}
  evaluate:
    config:
      model: "${{finetune}}"
      data: {{manifest: "${{data}}/manifest.csv"}}
"""


def write_tiny_pipeline(root: Path) -> Path:
    path = root / "tiny.yaml"
    path.write_text(TINY_PIPELINE.format(workdir=root / "work"))
    return path


@pytest.fixture
def tiny_pipeline(tmp_path) -> Path:
    return write_tiny_pipeline(tmp_path)


@pytest.fixture(scope="session")
def tiny_pipeline_writer():
    return write_tiny_pipeline


@pytest.fixture(scope="session")
def _demo_master(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo.generate(out, n_unlabeled=8, n_train=12, n_val=6, n_test=6, img_size=32, seed=3)
    return out


@pytest.fixture
def demo_set(_demo_master, tmp_path) -> Path:
    """A private copy of a small demo set (tests may break it); returns its manifest."""
    out = tmp_path / "demo"
    shutil.copytree(_demo_master, out)
    return out / "manifest.csv"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a busy CPU: intra-op threads only add contention (100x slower seen)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
