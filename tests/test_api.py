"""The Python API is the CLI's own path: the same keys, the same cached outputs, errors as exceptions."""
from pathlib import Path

import pytest

import medalign
from medalign import cli
from medalign.errors import ConfigError, DataError

QUICKSTART = Path(__file__).resolve().parents[1] / "pipelines" / "quickstart.yaml"
# the quickstart's steps, shrunk to CI size; the pipeline file itself is the one `make demo` runs
SMALL = ["data.n_unlabeled=16", "data.n_train=12", "data.n_val=8", "data.n_test=12", "data.img_size=32",
         "pretrain.backbone.name=test_resnet", "pretrain.backbone.img_size=32", "pretrain.data.batch_size=8",
         "pretrain.optim.epochs=1", "finetune.optim.epochs=1", "evaluate.bootstrap.resamples=10",
         "evaluate.report.cases=0"]


def test_quickstart_through_the_api_finds_the_clis_outputs(tmp_path, capsys, one_thread):
    cli.main(["run", str(QUICKSTART), "--workdir", str(tmp_path), *SMALL])
    assert "] done " in capsys.readouterr().out

    steps = medalign.run(QUICKSTART, SMALL, workdir=tmp_path)
    assert list(steps) == ["data", "pretrain", "finetune", "evaluate"]
    assert {s.outcome for s in steps.values()} == {"cached"}
    for name, s in steps.items():
        assert [d for d in (tmp_path / name).iterdir() if not d.name.startswith(".")] == [s.path]  # no second key
    assert 0 <= steps["evaluate"].metrics["auroc"] <= 1 and (steps["evaluate"].path / "report.html").is_file()


def test_a_stage_from_a_dict_lands_where_the_cli_put_it(demo_set, tmp_path, capsys, one_thread):
    cfg = {"backbone": {"name": "test_resnet", "img_size": 32}, "method": {"name": "simclr"},
           "data": {"manifest": str(demo_set), "batch_size": 4}, "optim": {"epochs": 1}}
    first = medalign.pretrain(cfg, workdir=tmp_path)
    assert first.outcome == "ran" and first.path.parent == tmp_path / "pretrain"
    assert (first.path / "checkpoint" / "model.safetensors").is_file() and first.metrics["epochs"] == 1

    cli.main(["pretrain", "--workdir", str(tmp_path), "backbone.name=test_resnet", "backbone.img_size=32",
              "method.name=simclr", f"data.manifest={demo_set}", "data.batch_size=4", "optim.epochs=1"])
    assert f"[pretrain] cached  {first.path}" in capsys.readouterr().out
    again = medalign.pretrain(cfg, workdir=tmp_path, overrides=["runtime.num_workers=0"])  # a cosmetic key
    assert (again.path, again.outcome) == (first.path, "cached")


def test_errors_are_exceptions_not_exits(demo_set, tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        medalign.finetune({"data": {"manifest": str(demo_set)}}, overrides=["optim.lrr=1"], workdir=tmp_path)
    with pytest.raises(DataError, match="manifest"):
        medalign.pretrain({"data": {"manifest": str(tmp_path / "none.csv")}}, workdir=tmp_path)
