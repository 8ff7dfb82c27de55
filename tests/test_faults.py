"""A full disk during a checkpoint or an output: one line naming the path and the free space, the
previous checkpoint and earlier outputs intact, and the next run resumes.

Where the test may mount (root, mount permitted) the disk is a real size-limited tmpfs, filled by a
ballast file at the moment of the write under test; elsewhere the write raises an injected ENOSPC.
"""
import errno
import json
import os
import re
import shutil
import subprocess

import pytest

from medalign import cli, resume
from medalign.errors import WriteFailed, writing
from medalign.models import checkpoint
from medalign.pipeline import store

STEPS = 5  # demo_set: 20 unlabeled+train images, batches of 4, one epoch
PRETRAIN = ["backbone.name=test_resnet", "backbone.img_size=32", "method.name=simclr", "data.batch_size=4",
            "optim.epochs=1", "runtime.checkpoint_every_steps=1"]
ERROR = re.compile(r"medalign: error: cannot write (?P<path>\S+): No space left on device "
                   r"\((?P<free>\d+(\.\d)? (B|KiB|MiB|GiB|TiB)) free there\); .*run the same command again.*")


@pytest.fixture
def disk(tmp_path):
    """A folder on a 32 MiB tmpfs where one can be mounted, else a plain folder; `.real` says which."""
    class Disk:
        path, real = tmp_path / "disk", False

        def fill(self):
            """Occupies every free block (a real disk) or arranges that the next write fails."""
            fd = os.open(self.path / "ballast", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                for chunk in (1 << 20, 4096, 1):
                    with pytest.raises(OSError) as e:
                        while True:
                            os.write(fd, b"\0" * chunk)
                    assert e.value.errno == errno.ENOSPC
            finally:
                os.close(fd)

        def empty(self):
            (self.path / "ballast").unlink(missing_ok=True)

    d = Disk()
    d.path.mkdir()
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(d.path)], capture_output=True)
        d.real = mounted.returncode == 0
    yield d
    if d.real:
        subprocess.run(["umount", "-l", str(d.path)], check=False)


def _fail_once(monkeypatch, disk, module, name, call):
    """Wraps module.name: its `call`-th call runs on a full disk (or raises ENOSPC, injected)."""
    real, calls = getattr(module, name), []

    def wrapper(*a, **k):
        calls.append(1)
        if len(calls) == call:
            if disk.real:
                disk.fill()
            else:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **k)
    monkeypatch.setattr(module, name, wrapper)
    return calls


def _main(argv, capsys):
    """cli.main in-process: (exit code, stdout, stderr)."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> re.Match:
    lines = err.splitlines()
    assert len(lines) == 1, err
    found = ERROR.fullmatch(lines[0])
    assert found, lines[0]
    return found


def test_full_disk_during_a_checkpoint_keeps_the_previous_one_and_the_rerun_resumes(
        demo_set, disk, monkeypatch, capsys, one_thread):
    out = disk.path / "pretrain"
    argv = ["pretrain", f"data.manifest={demo_set}", *PRETRAIN, "--out", str(out)]
    # the 2nd checkpoint (step 2) is written on a full disk, the one of step 1 being in place;
    # injected: the first file of that save raises
    _fail_once(monkeypatch, disk, resume, "save" if disk.real else "save_file", 2)

    code, _, err = _main(argv, capsys)
    assert code == 1
    found = _one_error_line(err)
    partial = store.partial_dir(out)
    assert found["path"].startswith(str(partial / "resume.new") + "/")
    if disk.real:
        assert found["free"].split()[1] in ("B", "KiB")  # the tmpfs is full: under a page or so left
    assert store.progress(partial) == (1, STEPS)  # the step-1 checkpoint survived
    assert not (partial / "resume.new").exists() and not (partial / "resume.old").exists()
    assert not out.exists()

    monkeypatch.undo()
    disk.empty()
    code, stdout, err = _main(argv, capsys)
    assert code == 0, err
    assert f"resuming the run interrupted at step 1/{STEPS}" in stdout
    assert store.is_complete(out) and not partial.exists()
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' not in x]
    assert steps == list(range(1, STEPS + 1))  # the steps after the checkpoint were redone, once each


PIPELINE = """
workdir: {workdir}
steps:
  data:
    stage: demo-data
    config: {{n_unlabeled: 8, n_train: 12, n_val: 4, n_test: 4, img_size: 32, seed: 3}}
  pretrain:
    config:
      backbone: {{name: test_resnet, img_size: 32}}
      method: {{name: simclr}}
      data: {{manifest: "${{data}}/manifest.csv", batch_size: 4}}
      optim: {{epochs: 1}}
      runtime: {{checkpoint_every_steps: 1}}
"""


@pytest.mark.parametrize("where", ["checkpoint", "metrics.json"])
def test_full_disk_while_writing_the_final_output_leaves_earlier_results_and_the_rerun_completes(
        where, disk, tmp_path, monkeypatch, capsys, one_thread):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE.format(workdir=disk.path / "work"))
    if where == "checkpoint":  # the stage's own model/ after training
        _fail_once(monkeypatch, disk, checkpoint, "save" if disk.real else "save_file", 1)
    else:  # the runner's metrics.json, written into the in-progress folder before COMPLETE
        real_write = type(pipeline).write_text

        def write_text(self, *a, **k):
            if self.name == "metrics.json" and self.parent.parent.name == "pretrain":
                if disk.real:
                    disk.fill()
                else:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real_write(self, *a, **k)
        monkeypatch.setattr(type(pipeline), "write_text", write_text)

    code, _, err = _main(["run", str(pipeline)], capsys)
    assert code == 1
    found = _one_error_line(err)
    data_out = next((disk.path / "work" / "data").iterdir())
    assert store.is_complete(data_out) and (data_out / "manifest.csv").is_file()  # the earlier step's output
    step_dir = disk.path / "work" / "pretrain"
    partial = next(step_dir.glob(".partial-*"))
    assert found["path"].startswith(str(partial))
    assert found["path"].endswith("model.safetensors" if where == "checkpoint" else "metrics.json")
    assert not (partial / store.COMPLETE).exists() and not (partial / "metrics.json").exists()
    assert [p for p in step_dir.iterdir() if not p.name.startswith(".")] == []  # no output that is not one

    monkeypatch.undo()
    disk.empty()
    data_stamp = (data_out / store.COMPLETE).stat().st_mtime_ns
    code, stdout, err = _main(["run", str(pipeline)], capsys)
    assert code == 0, err
    assert "[data] cached" in stdout and "[pretrain] running pretrain" in stdout
    assert (data_out / store.COMPLETE).stat().st_mtime_ns == data_stamp
    out = next(p for p in step_dir.iterdir() if not p.name.startswith("."))
    assert store.is_complete(out) and (out / "checkpoint" / checkpoint.WEIGHTS).is_file()


def test_a_full_disk_while_filling_the_preprocess_cache_is_one_line_and_leaves_no_temp(
        demo_set, disk, monkeypatch, tmp_path):
    """On a full disk a sparse memmap's page fault is a SIGBUS (the process dies, its temp stays):
    the fill allocates the array's blocks first, so it fails with ENOSPC instead."""
    from medalign.data import preprocess_cache
    from medalign.data.manifest import read_manifest

    m = read_manifest(demo_set)
    root = disk.path / "preprocess"
    cache = preprocess_cache.PreprocessCache(root, m, list(m.rows), 1, 256)  # 32 images: 4 MiB
    root.mkdir()
    if disk.real:
        disk.fill()
        ballast = disk.path / "ballast"
        os.truncate(ballast, ballast.stat().st_size - (1 << 20))  # leave 1 MiB: the array's header fits
    else:
        _fail_once(monkeypatch, disk, preprocess_cache, "_reserve", 1)
    with pytest.raises(WriteFailed) as e:
        cache.fill()
    message = str(e.value)
    assert "\n" not in message and re.search(rf"cannot write {re.escape(str(root))}/\.tmp-{cache.key}-\d+\.npy: "
                                             r"No space left on device \(\S+ \S+ free there\)", message)
    assert list(root.iterdir()) == [] and not cache.ready()
    monkeypatch.undo()
    disk.empty()
    cache.fill()
    assert cache.ready() and cache[0].shape == (256, 256, 1)


def test_writing_finds_the_errno_behind_torch_and_safetensors_errors(tmp_path):
    """torch.save into a file object wraps ENOSPC in a RuntimeError; safetensors only says 'os error 28'."""
    path = tmp_path / "x" / "state.pt"
    cases = [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("Error while serializing: I/O error: "
                                                                            "No space left on device (os error 28)")]
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")
    for e in [*cases, wrapped]:
        with pytest.raises(WriteFailed, match=rf"^cannot write {re.escape(str(path))}: No space left on device "
                                              r"\(\S+ \S+ free there\); the previous checkpoint"):
            with writing(path):
                raise e
    with pytest.raises(WriteFailed, match="named") as e:  # an OSError's own filename is the more exact one
        with writing(path):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "named"))
    assert str(e.value).startswith(f"cannot write {tmp_path / 'named'}: Disk quota")
    with pytest.raises(TypeError):  # not a write failure: a bug keeps its own exception and traceback
        with writing(path):
            raise TypeError("cannot pickle")
