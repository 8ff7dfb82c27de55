"""The command line: help, and bad input answered with one line and a non-zero exit."""
import os
import re
import socket
import subprocess
import sys

import pytest

from medalign import cli
from medalign.config import STAGES
from medalign.errors import Preempted
from medalign.pipeline import lock, store


def medalign(*args, **kw):
    return subprocess.run([sys.executable, "-m", "medalign", *args], capture_output=True, text=True, **kw)


def test_help_lists_stages_and_each_stage_its_keys():
    out = medalign("--help").stdout
    commands = re.findall(r"^ {4}(\S+)", out.split("commands:")[1], re.M)  # one entry per subcommand
    assert sorted(commands) == sorted([*STAGES, "run", "status", "history", "gc", "cache", "manifest", "weights",
                                       "predict", "export", "report", "gap", "drift"])
    finetune = medalign("finetune", "--help").stdout
    assert "--config" in finetune and "optim.lr" in finetune and "adapter.name" in finetune
    for command in ("finetune", "run"):
        text = medalign(command, "--help").stdout
        assert "--force" in text and "--lock-timeout SECONDS" in text


def test_unknown_yaml_key_exits_2_with_one_line(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {manifest: m.csv}\noptim: {lrr: 0.1}\n")
    r = medalign("finetune", "-c", str(cfg))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "optim.lrr" in r.stderr and str(cfg) in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_images_are_all_listed_without_traceback(demo_set, tmp_path):
    gone = ["images/img_00009.png", "images/img_00011.png", "images/img_00013.png"]
    for g in gone:
        (demo_set.parent / g).unlink()
    r = medalign("pretrain", f"data.manifest={demo_set}", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "3 of" in line and all(g in line for g in gone)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".lock-out").exists()


def fails(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(list(args))
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("medalign: error:")
    return err


def test_empty_manifest(capsys, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label,split\n")
    assert "has no rows" in fails(capsys, "pretrain", f"data.manifest={m}", "--workdir", str(tmp_path))


def test_manifest_without_path_column(capsys, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,label\na.png,x\n")
    assert "no 'path' column" in fails(capsys, "pretrain", f"data.manifest={m}", "--workdir", str(tmp_path))


def test_non_image_and_truncated_files_are_named(capsys, demo_set, tmp_path):
    text = demo_set.parent / "images" / "img_00010.png"
    text.write_text("this is a text file, not a PNG\n")
    cut = demo_set.parent / "images" / "img_00012.png"
    cut.write_bytes(cut.read_bytes()[:60])
    err = fails(capsys, "finetune", f"data.manifest={demo_set}", "--workdir", str(tmp_path))
    assert "img_00010.png" in err and "img_00012.png" in err and "2 unreadable" in err


def test_split_that_is_absent(capsys, demo_set, tmp_path):
    err = fails(capsys, "finetune", f"data.manifest={demo_set}", "data.val_split=holdout", "--workdir", str(tmp_path))
    assert "no rows in split holdout" in err


def test_mismatched_checkpoint(capsys, demo_set, tmp_path):
    from safetensors.torch import save_file
    import torch

    bogus = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(bogus))
    err = fails(capsys, "finetune", f"data.manifest={demo_set}", f"backbone.checkpoint={bogus}",
                "backbone.name=test_vit", "--workdir", str(tmp_path))
    assert str(bogus) in err and "does not fit test_vit" in err


def test_demo_data_command_writes_a_manifest(capsys, tmp_path):
    cli.main(["demo-data", str(tmp_path / "d"), "n_unlabeled=2", "n_train=4", "n_val=2", "n_test=2", "img_size=32"])
    assert (tmp_path / "d" / "manifest.csv").read_text().count("\n") == 11
    assert "images" in capsys.readouterr().out


def test_explicit_out_reruns_when_the_config_changes_and_never_clobbers_foreign_folders(capsys, tmp_path):
    out = tmp_path / "d"
    cli.main(["demo-data", str(out), "n_unlabeled=2", "n_train=4", "n_val=2", "n_test=2", "img_size=32"])
    cli.main(["demo-data", str(out), "n_unlabeled=2", "n_train=4", "n_val=2", "n_test=2", "img_size=32"])
    assert "cached" in capsys.readouterr().out
    cli.main(["demo-data", str(out), "n_unlabeled=3", "n_train=4", "n_val=2", "n_test=2", "img_size=32"])
    assert "done" in capsys.readouterr().out
    assert (out / "manifest.csv").read_text().count("\n") == 12

    mine = tmp_path / "my_scans"
    mine.mkdir()
    (mine / "precious.dcm").write_text("x")
    assert "not a medalign output" in fails(capsys, "demo-data", str(mine))
    assert (mine / "precious.dcm").exists()


def test_manifest_build_then_validate_finds_a_leak(capsys, tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(
                    tmp_path / "data" / split / label / f"{i}.png")
    leaked = tmp_path / "data" / "test" / "b" / "copy.png"
    leaked.write_bytes((tmp_path / "data" / "train" / "a" / "0.png").read_bytes())
    m = tmp_path / "m.csv"
    cli.main(["manifest", "build", "folder", str(tmp_path / "data"), str(m)])
    assert "wrote 13 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["manifest", "validate", str(m)])
    out = capsys.readouterr().out
    assert e.value.code == 2 and "copy.png" in out and "0.png" in out and "error(s)" in out


def test_on_error_skip_lists_bad_rows_and_counts_them(capsys, demo_set, tmp_path):
    import json

    (demo_set.parent / "images" / "img_00009.png").unlink()
    (demo_set.parent / "images" / "img_00010.png").write_text("not an image")
    out = tmp_path / "out"
    cli.main(["pretrain", f"data.manifest={demo_set}", "data.on_error=skip", "backbone.name=test_resnet",
              "backbone.img_size=32", "method.name=simclr", "data.batch_size=4", "optim.epochs=1", "--out", str(out)])
    skipped = (out / "skipped.csv").read_text().splitlines()
    assert skipped[0] == "path,index,reason" and len(skipped) == 3
    assert "img_00009.png" in skipped[1] + skipped[2] and "img_00010.png" in skipped[1] + skipped[2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_rows"] == 2 and metrics["images"] == 18


def test_finetune_refuses_a_patient_in_two_labeled_splits(capsys, demo_set, tmp_path):
    import csv

    with demo_set.open() as f:
        rows = list(csv.DictReader(f))
    test_patient = next(r["patient_id"] for r in rows if r["split"] == "test")
    next(r for r in rows if r["split"] == "train")["patient_id"] = test_patient
    with demo_set.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    err = fails(capsys, "finetune", f"data.manifest={demo_set}", "--workdir", str(tmp_path))
    assert "1 patient(s) in two labeled splits" in err and f"{test_patient} (test/train)" in err


DEMO = ["n_unlabeled=2", "n_train=4", "n_val=2", "n_test=2", "img_size=32"]


def test_lock_timeout_exits_3_naming_the_holder(tmp_path):
    out = tmp_path / "d"
    with lock.acquire(store.lock_path(out), str(out)):
        r = medalign("demo-data", str(out), *DEMO, "--lock-timeout", "1")
    assert r.returncode == 3 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert f"{out}: locked by pid {os.getpid()} on host {socket.gethostname()} since " in r.stderr
    assert r.stderr.rstrip().endswith("gave up after 1 s (--lock-timeout)")
    assert r.stdout.startswith(f"[demo-data] waiting for pid {os.getpid()} on host {socket.gethostname()} (since ")
    assert r.stdout.count("\n") == 1 and not out.exists()


def test_preempted_stage_exits_75_keeps_its_folder_and_releases_the_lock(capsys, tmp_path, monkeypatch):
    from medalign.stages import demo_data

    def preempted(cfg, out_dir):
        (out_dir / "resume").mkdir()
        (out_dir / "resume" / "progress.json").write_text('{"step": 2, "total_steps": 5}')
        raise Preempted("SIGTERM at step 2/5; resume state written, rerun to continue")

    monkeypatch.setattr(demo_data, "run", preempted)
    out = tmp_path / "d"
    with pytest.raises(SystemExit) as e:
        cli.main(["demo-data", str(out), *DEMO])
    assert e.value.code == 75 and "rerun to continue" in capsys.readouterr().err
    assert (store.partial_dir(out) / "resume" / "progress.json").is_file() and not out.exists()
    assert not store.lock_path(out).exists()
    monkeypatch.undo()
    cli.main(["demo-data", str(out), *DEMO])
    assert "resuming the run interrupted at step 2/5" in capsys.readouterr().out
    assert store.is_complete(out) and not store.partial_dir(out).exists()


def test_manifest_split_keep_split_over_an_official_split(capsys, demo_set, tmp_path):
    out = tmp_path / "few.csv"
    cli.main(["manifest", "split", str(demo_set), str(out), "--keep-split", "--few-shot", "0.5",
              "--few-shot-seeds", "0,1"])
    assert "columns: fewshot_p50_s0, fewshot_p50_s1" in capsys.readouterr().out
    import csv
    before, after = list(csv.DictReader(demo_set.open())), list(csv.DictReader(out.open()))
    assert [r["split"] for r in after] == [r["split"] for r in before]
    rows = list(before)
    i = next(i for i, r in enumerate(rows) if r["label"])
    rows[i]["split"] = "holdout"
    broken = tmp_path / "broken.csv"
    with broken.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    err = fails(capsys, "manifest", "split", str(broken), str(tmp_path / "x.csv"), "--keep-split")
    assert f"line {i + 2}: keep_split needs train, val or test on every labeled row, not 'holdout'" in err
