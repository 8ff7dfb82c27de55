"""Fine-tuning's outputs and tasks: adapters saved over a shared base, merged export, predict,
ordinal grades (CORAL), multi-label, class weights, focal loss and early stopping."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from medalign import cli, config
from medalign.config import BackboneConfig
from medalign.errors import CheckpointError
from medalign.models import adapters, backbones, checkpoint, classifier
from medalign.tasks import Task

pytestmark = pytest.mark.usefixtures("one_thread")
VIT = ["backbone.name=test_vit", "backbone.kwargs.patch_size=8", "backbone.img_size=32"]


def _run(out: Path, *overrides: str) -> dict:
    stage = config.STAGES["finetune"]
    cfg = config.load(stage.config, None, ["runtime.device=cpu", "data.batch_size=4", *overrides])
    out.mkdir(parents=True)
    return stage.run(cfg, out)


def _base(tmp_path: Path, name: str = "test_vit", kwargs: dict | None = None) -> Path:
    """A backbone file as pretraining writes it, its weights moved off their initialisation."""
    kwargs = {"patch_size": 8} if kwargs is None else kwargs
    cfg = BackboneConfig(name=name, kwargs=kwargs, img_size=32)
    model = backbones.create(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    bb = backbones.resolve(cfg)
    return checkpoint.save(tmp_path / "base", model.state_dict(), checkpoint.metadata(bb.arch, 32, bb.normalization))


def _graded_set(root: Path, n_per_grade: int = 16) -> Path:
    """Four grades whose brightness rises with the grade: an ordinal task a tiny model can learn."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for grade in range(4):
        for i in range(n_per_grade):
            level = 40 + 55 * grade + rng.normal(0, 6, (32, 32))
            Image.fromarray(np.clip(level, 0, 255).astype(np.uint8)).save(root / "img" / f"g{grade}_{i}.png")
            split = "train" if i < n_per_grade // 2 else ("val" if i < 3 * n_per_grade // 4 else "test")
            rows.append({"path": f"img/g{grade}_{i}.png", "label": str(grade), "split": split})
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


# -- saved adapters over a shared base -------------------------------------------------------------

def test_a_lora_adapter_is_a_few_percent_of_the_checkpoint_and_names_its_base(tmp_path):
    base = _base(tmp_path, "vit_small_patch16_224", {})
    bb = backbones.resolve(BackboneConfig(checkpoint=str(base), img_size=32))
    task = Task("classification", ["a", "b"])
    model = adapters.apply(classifier.build(bb, task, config.HeadConfig()), config.LoraAdapter(r=8))
    meta = checkpoint.metadata(bb.arch, 32, bb.normalization, classes=task.classes, task=task.as_meta(),
                               adapter=config.LoraAdapter(r=8).model_dump())
    assert classifier.save(tmp_path / "task", model, bb, config.LoraAdapter(r=8), meta) == classifier.ADAPTER
    size = (tmp_path / "task" / classifier.ADAPTER).stat().st_size
    assert size < 0.05 * (base / checkpoint.WEIGHTS).stat().st_size
    saved = json.loads((tmp_path / "task" / "model.json").read_text())["base"]
    assert saved["file"] == str((base / checkpoint.WEIGHTS).resolve()) and len(saved["sha256"]) == 64
    assert (tmp_path / "task" / "peft" / "adapter_config.json").is_file()  # peft's own layout too


@pytest.fixture
def lora_run(demo_set, tmp_path) -> Path:
    out = tmp_path / "ft"
    _run(out, f"data.manifest={demo_set}", f"backbone.checkpoint={_base(tmp_path)}", *VIT[2:],
         "adapter.name=lora", "adapter.r=4", "optim.epochs=2", "optim.lr=0.01")
    return out


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(5))


def test_a_merged_export_predicts_as_the_adapter_does_and_loads_in_plain_timm(lora_run, tmp_path):
    model, bb, _ = classifier.load(lora_run)
    assert any(".lora_" in k for k in load_file(str(lora_run / "model" / classifier.ADAPTER)))
    cli.main(["export", "merge", str(lora_run), str(tmp_path / "merged")])
    plain = timm.create_model("test_vit", patch_size=8, img_size=32, in_chans=1, num_classes=2,
                              checkpoint_path=str(tmp_path / "merged" / checkpoint.WEIGHTS))
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(_x()), model.eval()(_x()), rtol=1e-5, atol=1e-5)
    again, _, _ = classifier.load(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(_x()), model(_x()), rtol=1e-5, atol=1e-5)


def test_a_changed_base_is_refused_naming_both_and_a_moved_one_is_found(lora_run, tmp_path, capsys):
    recorded = Path(json.loads((lora_run / "model" / "model.json").read_text())["base"]["file"])
    moved = tmp_path / "elsewhere.safetensors"
    moved.write_bytes(recorded.read_bytes())
    state = load_file(str(recorded))
    state["cls_token"] = state["cls_token"] + 1  # another base, same architecture
    from safetensors.torch import save_file
    save_file(state, str(recorded))
    with pytest.raises(CheckpointError, match=rf"{recorded.name} \(sha256 \w+\) is not the base .* trained on: "
                                              rf"{recorded} \(sha256 \w+\)"):
        classifier.load(lora_run)
    model, _, _ = classifier.load(lora_run, base=moved)
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", str(lora_run), "nowhere.csv", str(tmp_path / "p.csv")])
    assert e.value.code != 0 and "is not the base" in capsys.readouterr().err


# -- predict -----------------------------------------------------------------------------------

def test_predict_writes_one_row_per_image_without_labels_and_follows_on_error(lora_run, demo_set, tmp_path, capsys):
    rows = list(csv.DictReader(demo_set.open()))
    unlabeled = tmp_path / "new.csv"
    with unlabeled.open("w", newline="") as f:  # no label, no split, an identifying column
        w = csv.writer(f)
        w.writerow(["path", "patient_name"])
        w.writerows([[str(demo_set.parent / r["path"]), "DOE^JANE"] for r in rows[:7]])
    out = tmp_path / "pred.csv"
    cli.main(["predict", str(lora_run), str(unlabeled), str(out), "--tta"])
    got = list(csv.DictReader(out.open()))
    assert [r["path"] for r in got] == [str(demo_set.parent / r["path"]) for r in rows[:7]]
    assert set(got[0]) == {"path", "prediction", "p_lesion", "p_normal"}  # nothing identifying copied
    assert all(abs(float(r["p_lesion"]) + float(r["p_normal"]) - 1) < 1e-5 for r in got)

    Path(got[2]["path"]).write_bytes(b"not a png")
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", str(lora_run), str(unlabeled), str(tmp_path / "fail.csv")])
    assert e.value.code != 0 and got[2]["path"] in capsys.readouterr().err
    assert not (tmp_path / "fail.csv").exists()
    cli.main(["predict", str(lora_run), str(unlabeled), str(tmp_path / "skip.csv"), "--on-error", "skip"])
    kept = [r["path"] for r in csv.DictReader((tmp_path / "skip.csv").open())]
    assert len(kept) == 6 and got[2]["path"] not in kept
    assert got[2]["path"] in (tmp_path / "skip.skipped.csv").read_text()


# -- tasks -------------------------------------------------------------------------------------

def test_ordinal_grades_train_with_coral_select_on_kappa_and_stay_rank_consistent(tmp_path):
    manifest = _graded_set(tmp_path / "graded")
    out = tmp_path / "ordinal"
    metrics = _run(out, f"data.manifest={manifest}", "backbone.name=test_resnet", "backbone.img_size=32",
                   "adapter.name=full", "task.type=ordinal", "optim.epochs=12", "optim.lr=3e-3", "augment.enabled=false")
    assert metrics["task"] == "ordinal" and metrics["classes"] == ["0", "1", "2", "3"]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' in x]
    kappas = [e["val_quadratic_kappa"] for e in log]
    assert metrics["best_epoch"] == int(np.argmax(kappas))  # selected on validation kappa
    assert metrics["val"]["quadratic_kappa"] == max(kappas) and max(kappas) > 0.5

    model, bb, task = classifier.load(out)
    from medalign.stages import _common as common
    from medalign import engine
    data = config.DataSection(manifest=str(manifest))
    m, rows, _ = common.rows(data, "test")
    ds = common.dataset(m, rows, data, config.Intensity(), common.eval_transform(bb, config.Intensity()), bb,
                        targets=task.targets(rows, m))
    rt = engine.Runtime(torch.device("cpu"))
    logits, grades = [], []
    model.eval()
    with torch.no_grad():
        for x, y in common.loader(ds, data, config.EvaluateConfig(model="x", data={"manifest": "x"}), rt, train=False):
            logits.append(model(x))
            grades.append(y)
    cumulative = torch.cat(logits).sigmoid()  # P(grade > k), k = 0..2
    assert (cumulative[:, 1:] <= cumulative[:, :-1] + 1e-6).all()  # rank-consistent for every image
    expected = (task.probs(torch.cat(logits)) * torch.arange(4)).sum(1)
    means = [expected[torch.cat(grades) == g].mean().item() for g in range(4)]
    assert means == sorted(means)  # the predicted grade rises with the true grade


def test_multilabel_labels_train_one_sigmoid_per_class(tmp_path, demo_set):
    rows = list(csv.DictReader(demo_set.open()))
    for i, r in enumerate(rows):
        r["label"] = {0: "lesion", 1: "lesion;artifact", 2: "normal"}[i % 3] if r["split"] != "unlabeled" else ""
    multi = demo_set.with_name("multi.csv")
    with multi.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    metrics = _run(tmp_path / "ml", f"data.manifest={multi}", *VIT, "adapter.name=full", "task.type=multilabel",
                   "optim.epochs=1")
    assert metrics["classes"] == ["artifact", "lesion", "normal"]
    assert set(metrics["val"]["auroc_per_class"]) == {"artifact", "lesion", "normal"}
    model, _, task = classifier.load(tmp_path / "ml")
    p = task.probs(model.eval()(_x()))
    assert p.shape == (3, 3) and not torch.allclose(p.sum(1), torch.ones(3))  # independent sigmoids


@pytest.mark.parametrize("loss", [["loss.name=focal", "loss.gamma=2"], ["loss.class_weights=true", "loss.label_smoothing=0.1"]])
def test_imbalance_losses_train(tmp_path, demo_set, loss):
    metrics = _run(tmp_path / "ft", f"data.manifest={demo_set}", *VIT, "adapter.name=full", "optim.epochs=1", *loss)
    assert np.isfinite(metrics["val"]["accuracy"])


def test_early_stopping_ends_after_patience_epochs_without_a_better_score(tmp_path, demo_set):
    metrics = _run(tmp_path / "ft", f"data.manifest={demo_set}", *VIT, "adapter.name=linear", "optim.lr=1e-12",
                   "optim.epochs=10", "optim.patience=2", "augment.enabled=false")
    assert metrics["best_epoch"] == 0 and metrics["epochs_run"] == 3


def test_a_loss_that_does_not_fit_the_task_is_a_config_error(demo_set):
    with pytest.raises(Exception, match="loss.name=focal and loss.label_smoothing are for task.type=classification"):
        config.load(config.FinetuneConfig, None, [f"data.manifest={demo_set}", "task.type=ordinal", "loss.name=focal"])


# -- the unlabeled pool ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["fixmatch", "pseudo_label"])
def test_semi_supervised_fine_tuning_uses_the_unlabeled_pool(tmp_path, demo_set, method):
    out = tmp_path / "semi"
    metrics = _run(out, f"data.manifest={demo_set}", *VIT, "adapter.name=full", "optim.epochs=2",
                   f"semi.name={method}", "semi.threshold=0.5", "semi.mu=2")
    steps = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' not in x]
    assert all({"supervised_loss", "unlabeled_loss", "confident_fraction"} <= set(s) for s in steps)
    assert any(s["confident_fraction"] > 0 for s in steps)  # the pool did contribute targets
    assert metrics["val"]["n"] == 6


def test_the_train_rows_outside_the_labeled_subset_can_be_the_pool(tmp_path, demo_set):
    from medalign.data.split import split
    few = split(demo_set, tmp_path / "few.csv", keep_split=True, few_shot=[2])
    common = [f"data.manifest={tmp_path / 'few.csv'}", *VIT, "adapter.name=full", "optim.epochs=1",
              "semi.name=fixmatch", "semi.splits=[unlabeled, train]"]
    with pytest.raises(Exception, match=r"semi.splits names the train split 'train': .* so it needs data.subset"):
        config.load(config.FinetuneConfig, None, common)
    metrics = _run(tmp_path / "semi", *common, "data.subset=fewshot_k2_s0")
    labeled = sum(r["fewshot_k2_s0"] == "1" for r in csv.DictReader((tmp_path / "few.csv").open()))
    assert metrics["train_images"] == labeled < few["splits"]["train"]
    assert metrics["unlabeled_images"] == few["splits"]["unlabeled"] + few["splits"]["train"] - labeled


def test_semi_refuses_held_out_rows_as_unlabeled(demo_set, tmp_path):
    with pytest.raises(Exception, match=r"semi.splits \['val'\]: unlabeled rows never come from val or test"):
        config.load(config.FinetuneConfig, None, [f"data.manifest={demo_set}", "semi.name=fixmatch",
                                                  "semi.splits=[unlabeled, val]"])
    rows = list(csv.DictReader(demo_set.open()))
    test_row = next(r for r in rows if r["split"] == "test")
    rows.append({**test_row, "split": "unlabeled", "label": ""})  # a test image copied into the pool
    leaky = demo_set.with_name("leaky.csv")
    with leaky.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from medalign.errors import DataError
    with pytest.raises(DataError, match=rf"1 unlabeled row\(s\) are also train, val or test images, e.g. {test_row['path']}"):
        _run(tmp_path / "leak", f"data.manifest={leaky}", *VIT, "adapter.name=full", "optim.epochs=1",
             "semi.name=fixmatch")
