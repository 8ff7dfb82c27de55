"""runner.execute and the store: cached iff complete with the same record; interrupted work is kept and resumed.

A fake stage stands in for a real one, so no torch is needed: it appends a line to work.txt in the
folder it is given (as a stage writes resume state there) and raises when told to.
"""
import json
import pathlib

import pytest

from medalign.config import DemoDataConfig
from medalign.errors import MedalignError, Preempted
from medalign.pipeline import cache, lock, runner, store


class FakeStage:
    name = "demo-data"

    def __init__(self, fail: BaseException | None = None, progress: tuple[int, int] | None = None):
        self.fail, self.progress, self.calls = fail, progress, 0

    def run(self, cfg, out_dir):
        self.calls += 1
        with (out_dir / "work.txt").open("a") as f:
            f.write(f"seed {cfg.seed}\n")
        if self.progress:
            (out_dir / "resume").mkdir(exist_ok=True)
            step, total = self.progress
            (out_dir / "resume" / "progress.json").write_text(json.dumps({"step": step, "total_steps": total}))
        if self.fail:
            fail, self.fail = self.fail, None
            raise fail
        return {"lines": len((out_dir / "work.txt").read_text().splitlines())}


def execute(stage, out, seed=0, **kw):
    cfg = DemoDataConfig(seed=seed)
    lines = []
    metrics, outcome = runner.execute(stage, cfg, out, *cache.record("demo-data", cfg, {}), label="step",
                                         echo=lines.append, **kw)
    return metrics, outcome, lines


@pytest.fixture
def keyed(tmp_path):
    cfg = DemoDataConfig(seed=0)
    return tmp_path / "work" / "data" / cache.key_of(cache.record("demo-data", cfg, {})[0])


def test_second_run_is_cached_without_running_the_stage(keyed):
    stage = FakeStage()
    assert execute(stage, keyed)[:2] == ({"lines": 1}, "ran")
    metrics, outcome, lines = execute(stage, keyed)
    assert (metrics, outcome, stage.calls) == ({"lines": 1}, "cached", 1)
    assert lines == [f"[step] cached  {keyed}"]
    for name in ("config.yaml", "key.json", "metrics.json", store.COMPLETE):
        assert (keyed / name).is_file()
    assert sorted(p.name for p in keyed.parent.iterdir()) == [keyed.name]  # no .partial-, .lock-, .old- left


@pytest.mark.parametrize("error", [RuntimeError("boom"), Preempted("preempted at step 3"), KeyboardInterrupt()])
def test_failed_run_keeps_its_folder_and_the_next_run_adopts_it(keyed, error):
    with pytest.raises(type(error)):
        execute(FakeStage(fail=error, progress=(3, 10)), keyed)
    partial = store.partial_dir(keyed)
    assert partial.name == f".partial-{keyed.name}" and not keyed.exists()
    assert (partial / "work.txt").read_text() == "seed 0\n" and (partial / "key.json").is_file()
    assert not store.lock_path(keyed).exists()
    lock.acquire(store.lock_path(keyed), str(keyed), timeout=0).release()  # released, not just unlinked

    metrics, outcome, lines = execute(FakeStage(), keyed)
    assert metrics == {"lines": 2} and outcome == "resumed"  # the second line went into the adopted folder
    assert "[step] running demo-data: resuming the run interrupted at step 3/10" in lines
    assert not partial.exists() and (keyed / "work.txt").read_text() == "seed 0\nseed 0\n"


def test_a_folder_without_key_json_is_not_adopted(keyed):
    partial = store.partial_dir(keyed)
    partial.mkdir(parents=True)
    (partial / "work.txt").write_text("from a run that died before its stage began\n")
    assert execute(FakeStage(), keyed)[0] == {"lines": 1}


def test_force_replaces_a_complete_output_that_is_never_half_there(keyed, monkeypatch):
    execute(FakeStage(), keyed, seed=0)
    (keyed / "old.txt").write_text("only in the old output")
    renames, removed = [], []
    real_rename, real_rmtree = pathlib.Path.rename, store.shutil.rmtree

    def rename(self, target):
        renames.append((self.name, pathlib.Path(target).name, store.is_complete(self)))
        return real_rename(self, target)

    def rmtree(path, **kw):
        removed.append(pathlib.Path(path).name)
        return real_rmtree(path, **kw)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    monkeypatch.setattr(store.shutil, "rmtree", rmtree)

    class Checking(FakeStage):
        def run(self, cfg, out_dir):
            assert (keyed / "old.txt").is_file() and store.is_complete(keyed)  # untouched while the new one runs
            return super().run(cfg, out_dir)

    metrics, outcome, lines = execute(Checking(), keyed, force=True)
    assert metrics == {"lines": 1} and outcome == "ran" and "[step] running demo-data: forced" in lines
    # the old output moves aside whole, the complete new one takes its name, then the old one goes
    old = renames[0][1]
    assert renames == [(keyed.name, old, True), (f".partial-{keyed.name}", keyed.name, True)]
    assert old.startswith(".old-") and removed[-1] == old and keyed.name not in removed
    assert store.is_complete(keyed) and not (keyed / "old.txt").exists()
    assert sorted(p.name for p in keyed.parent.iterdir()) == [keyed.name]


def test_explicit_out_refuses_to_resume_a_run_with_another_config(tmp_path):
    out = tmp_path / "runs" / "x"
    with pytest.raises(Preempted):
        execute(FakeStage(fail=Preempted("stop"), progress=(3, 10)), out, seed=0)
    with pytest.raises(MedalignError) as e:
        execute(FakeStage(), out, seed=1)
    assert str(e.value) == (f"cannot resume {out}: the interrupted run had config seed 0 -> 1; "
                            "use --force to start over")
    assert (store.partial_dir(out) / "resume").is_dir() and not store.lock_path(out).exists()

    metrics, _, lines = execute(FakeStage(), out, seed=1, force=True)
    assert metrics == {"lines": 1} and (out / "work.txt").read_text() == "seed 1\n"  # the old run is gone


def test_explicit_out_starts_over_when_the_other_run_left_nothing_to_resume(tmp_path):
    out = tmp_path / "runs" / "x"
    with pytest.raises(RuntimeError):
        execute(FakeStage(fail=RuntimeError("bad data")), out, seed=0)
    metrics, _, lines = execute(FakeStage(), out, seed=1)
    assert metrics == {"lines": 1} and "[step] running demo-data: never run" in lines


def test_explicit_out_with_another_record_is_rerun_and_replaced(tmp_path):
    out = tmp_path / "x"
    execute(FakeStage(), out, seed=0)
    metrics, outcome, lines = execute(FakeStage(), out, seed=1)
    assert outcome == "ran" and "[step] running demo-data: config seed 0 -> 1" in lines
    assert json.loads((out / "key.json").read_text())["config"]["seed"] == 1


def test_a_folder_medalign_did_not_write_is_refused(tmp_path):
    mine = tmp_path / "scans"
    mine.mkdir()
    (mine / "a.dcm").write_text("x")
    with pytest.raises(MedalignError, match="is not a medalign output"):
        execute(FakeStage(), mine)
    assert [p.name for p in tmp_path.iterdir()] == ["scans"]
