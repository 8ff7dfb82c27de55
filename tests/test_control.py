"""Running part of a pipeline, what each run leaves in the history, and collecting the garbage, on the tiny pipeline."""
import json
import os
import shutil
import signal

import pytest
import yaml

from medalign import cli
from medalign.pipeline import history, lock, store
from medalign.stages import demo_data


def medalign(capsys, *args) -> tuple[int, str, str]:
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ran(out: str) -> list[str]:
    return [line.split("]")[0][1:] for line in out.splitlines() if "] running " in line]


def states(capsys, path) -> dict[str, str]:
    code, out, _ = medalign(capsys, "status", path, "--json")
    assert code == 0
    return {row["step"]: row["state"] for row in json.loads(out)}


@pytest.fixture
def work(tiny_pipeline):
    return tiny_pipeline, tiny_pipeline.parent / "work"


def test_dry_run_until_only_force_and_the_history_they_leave(work, capsys, one_thread):
    path, workdir = work
    code, out, _ = medalign(capsys, "run", path, "--dry-run")
    assert code == 0 and not workdir.exists()  # nothing ran, nothing was made
    assert [line.split()[:3] for line in out.splitlines()] == [[s, "run", "stale"] for s in
                                                               ("data", "pretrain", "finetune", "evaluate")]

    code, out, _ = medalign(capsys, "run", path, "--until", "pretrain")
    assert code == 0 and ran(out) == ["data", "pretrain"]
    assert states(capsys, path) == {"data": "cached", "pretrain": "cached", "finetune": "stale", "evaluate": "stale"}

    code, _, err = medalign(capsys, "run", path, "--only", "evaluate")
    assert code == 2 and err.count("\n") == 1 and "step 'evaluate' needs 'finetune', which has no output" in err

    code, out, _ = medalign(capsys, "run", path, "--only", "finetune")
    assert code == 0 and ran(out) == ["finetune"]
    code, out, _ = medalign(capsys, "run", path, "--dry-run", "--force", "pretrain")
    assert {line.split()[0]: line.split()[1] for line in out.splitlines()} == {
        "data": "keep", "pretrain": "run", "finetune": "keep", "evaluate": "run"}

    code, out, err = medalign(capsys, "run", path, "--force", "pretrain", "--json")
    assert code == 0 and ran(err) == ["pretrain", "evaluate"]  # progress on stderr, JSON alone on stdout
    record = json.loads(out)
    assert [(s["step"], s["outcome"]) for s in record["steps"]] == [
        ("data", "cached"), ("pretrain", "ran"), ("finetune", "cached"), ("evaluate", "ran")]
    assert record["exit_code"] == 0 and record["status"] == "done" and record["pid"] == os.getpid()

    code, _, _ = medalign(capsys, "run", path, "--force", "nope")
    assert code == 2

    records = history.read(workdir)
    assert [r["exit_code"] for r in records] == [0, 2, 0, 0, 2]  # a dry run is no run
    assert [len(r["steps"]) for r in records] == [2, 0, 1, 4, 0]
    assert all(s["key"] in s["out"] and s["seconds"] >= 0 for r in records for s in r["steps"])
    code, out, _ = medalign(capsys, "history", path, "--json")
    assert json.loads(out) == records
    code, out, _ = medalign(capsys, "history", path, "-n", "2")
    lines = out.splitlines()
    assert len(lines) == 2 and "1 cached, 1 ran" not in lines[0] and "2 cached, 2 ran" in lines[0]
    assert "bad input" in lines[1]


def test_gc_lists_then_deletes_only_what_no_pipeline_and_no_recent_run_needs(work, capsys, one_thread):
    path, workdir = work
    assert medalign(capsys, "run", path)[0] == 0
    assert medalign(capsys, "run", path, "finetune.optim.lr=0.002")[0] == 0  # a second finetune and evaluate
    tuned = {d.name for d in (workdir / "finetune").iterdir()}
    assert len(tuned) == 2
    partial = workdir / "pretrain" / ".partial-0123456789abcdef"  # a crashed run of an older config
    partial.mkdir()
    (partial / "key.json").write_text("{}")

    code, out, _ = medalign(capsys, "gc", path, "--dry-run")  # the lr run is recent: only the crash goes
    assert code == 0 and out.count("would delete") == 1 and str(partial) in out and partial.exists()

    code, out, _ = medalign(capsys, "gc", path, "--keep-days", "0")  # without --yes: a list
    listed = [line.split()[-1] for line in out.splitlines() if line.startswith("would delete")]
    assert len(listed) == 3 and "rerun with --yes" in out and all(os.path.exists(p) for p in listed)
    assert {os.path.basename(os.path.dirname(p)) for p in listed} == {"finetune", "evaluate", "pretrain"}

    code, out, _ = medalign(capsys, "gc", path, "--keep-days", "0", "--yes")
    assert code == 0 and "deleted 3 folder(s)" in out and not any(os.path.exists(p) for p in listed)
    assert set(states(capsys, path).values()) == {"cached"}  # the pipeline still has every output it needs
    code, out, _ = medalign(capsys, "run", path)
    assert code == 0 and ran(out) == []


def test_gc_never_touches_what_is_not_a_medalign_output(work, capsys, one_thread):
    path, workdir = work
    assert medalign(capsys, "run", path, "--until", "data")[0] == 0
    mine = workdir / "data" / "my_notes"
    mine.mkdir()
    shutil.copy(path, mine / "copy.yaml")
    code, out, _ = medalign(capsys, "gc", path, "--keep-days", "0", "--yes")
    assert code == 0 and "nothing to delete" in out and mine.is_dir()
    code, out, _ = medalign(capsys, "gc", "--workdir", workdir, "--keep-days", "0", "--yes")  # no pipeline keeps it
    assert code == 0 and "deleted 1 folder(s)" in out and mine.is_dir() and (mine / "copy.yaml").is_file()


def test_sigusr1_during_a_stage_without_a_training_loop_stops_the_run_between_steps(tmp_path, monkeypatch, capsys):
    tiny = {"n_unlabeled": 0, "n_train": 4, "n_val": 2, "n_test": 2, "img_size": 16}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "w"), "steps": {
        "first": {"stage": "demo-data", "config": tiny},
        "second": {"stage": "demo-data", "config": {**tiny, "seed": 1}}}}))
    real = demo_data.run

    def signalled(cfg, out_dir):  # SLURM's warning arrives while the first step works
        os.kill(os.getpid(), signal.SIGUSR1)
        return real(cfg, out_dir)

    monkeypatch.setattr(demo_data, "run", signalled)
    code, out, err = medalign(capsys, "run", path)
    assert code == 75 and "stopped by SIGUSR1 before step 'second'" in err and "[first] done" in out
    monkeypatch.setattr(demo_data, "run", real)
    code, out, _ = medalign(capsys, "run", path)
    assert code == 0 and ran(out) == ["second"]


def test_gc_leaves_an_interrupted_run_whose_lock_is_held_alone(work, capsys):
    path, workdir = work
    assert medalign(capsys, "run", path, "--until", "data")[0] == 0
    live = workdir / "pretrain" / "fedcba9876543210"  # another process's run of a config no pipeline names
    store.partial_dir(live).mkdir(parents=True)
    with lock.acquire(store.lock_path(live), str(live), 0):
        code, out, _ = medalign(capsys, "gc", path, "--keep-days", "0", "--yes")
        assert code == 0 and "nothing to delete" in out and store.partial_dir(live).is_dir()
    code, out, _ = medalign(capsys, "gc", path, "--keep-days", "0", "--yes")  # its run has ended: it goes
    assert "deleted 1 folder(s)" in out and not store.partial_dir(live).exists()
    assert not store.lock_path(live).exists()
