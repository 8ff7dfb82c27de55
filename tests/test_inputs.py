"""A growing archive: new images make pretraining and what follows it stale, nothing before, and status says how many.

The pool is a folder of uncompressed PNGs (fixed size per image), rebuilt into its manifest with
`medalign manifest build flat` as a nightly job would; the labeled set is the demo set.
"""
import os

import numpy as np
import pytest
from PIL import Image

from medalign import cli
from medalign.data import manifest
from medalign.pipeline import cache, runner, spec

PIPELINE = """
workdir: {work}
steps:
  baseline:
    stage: finetune
    config:
      backbone: {{name: test_resnet, img_size: 32}}
      data: {{manifest: {labeled}, batch_size: 8}}
      optim: {{epochs: 1, warmup_epochs: 0}}
  pretrain:
    config:
      backbone: {{name: test_resnet, img_size: 32}}
      method: {{name: simclr}}
      data: {{manifest: {pool}, batch_size: 4}}
      optim: {{epochs: 1, warmup_epochs: 0}}
  finetune:
    config:
      backbone: {{checkpoint: "${{pretrain}}"}}
      data: {{manifest: {labeled}, batch_size: 8}}
      optim: {{epochs: 1, warmup_epochs: 0}}
  evaluate:
    config:
      model: "${{finetune}}"
      data: {{manifest: {labeled}}}
      bootstrap: {{resamples: 10}}
"""


def write_images(folder, names, seed):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        # compress_level=0: the file's size depends on the image's shape alone, so an edit can keep it
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / name, compress_level=0)


def rebuild(pool_dir, pool_csv):
    cli.main(["manifest", "build", "flat", str(pool_dir), str(pool_csv)])


def status(path, *overrides):
    return {p.step.name: runner.state(p) for p in runner.plan(spec.load(path, list(overrides)))}


@pytest.fixture
def archive(tmp_path, demo_set, monkeypatch, one_thread):
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "cache"))
    pool_dir, pool_csv = tmp_path / "pool", tmp_path / "pool.csv"
    write_images(pool_dir, [f"night1_{i:02d}.png" for i in range(12)], seed=0)
    rebuild(pool_dir, pool_csv)
    path = tmp_path / "nightly.yaml"
    path.write_text(PIPELINE.format(work=tmp_path / "work", labeled=demo_set, pool=pool_csv))
    return path, pool_dir, pool_csv


def test_new_images_make_pretrain_and_after_stale_and_nothing_before(archive, capsys):
    path, pool_dir, pool_csv = archive
    runner.run(spec.load(path), echo=lambda line: None)
    assert {s for s, _ in status(path).values()} == {"cached"}

    write_images(pool_dir, [f"night2_{i:02d}.png" for i in range(3)], seed=1)
    rebuild(pool_dir, pool_csv)
    now = status(path)
    assert now["baseline"][0] == "cached"
    assert now["pretrain"] == ("stale", "input data.manifest: 3 images added")
    assert now["finetune"] == ("stale", "upstream pretrain changed")
    assert now["evaluate"] == ("stale", "upstream finetune changed")

    (pool_dir / "night1_00.png").unlink()
    (pool_dir / "night1_01.png").unlink()
    rebuild(pool_dir, pool_csv)
    assert status(path)["pretrain"] == ("stale", "input data.manifest: 3 images added, 2 removed")

    cli.main(["status", str(path)])  # the command prints the same reasons
    out = capsys.readouterr().out
    assert "input data.manifest: 3 images added, 2 removed" in out and "upstream pretrain changed" in out


def test_content_fingerprint_sees_an_edit_that_keeps_size_and_mtime(archive, tmp_path):
    path, pool_dir, pool_csv = archive
    content = "pretrain.data.fingerprint=content"
    runner.run(spec.load(path, [content]), echo=lambda line: None)
    assert status(path, content)["pretrain"][0] == "cached"

    victim = pool_dir / "night1_05.png"
    before = victim.stat()
    by_stat = cache.fingerprint(str(pool_csv))
    write_images(pool_dir, [victim.name], seed=99)  # other pixels, same shape: same size
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert victim.stat().st_size == before.st_size and victim.stat().st_mtime_ns == before.st_mtime_ns

    assert cache.fingerprint(str(pool_csv)) == by_stat  # size and mtime cannot see it ...
    now = status(path, content)  # ... content hashes do
    assert now["pretrain"] == ("stale", "input data.manifest: 1 image changed")
    assert now["baseline"][0] == "cached" and now["finetune"][0] == "stale"


def test_content_hashes_are_read_once_and_survive_a_copy_that_resets_mtimes(archive, monkeypatch):
    _, pool_dir, pool_csv = archive
    first = cache.fingerprint(str(pool_csv), content=True)
    reads = []
    real = manifest.file_sha256
    monkeypatch.setattr("medalign.data.hashes.file_sha256", lambda p: reads.append(p) or real(p))
    assert cache.fingerprint(str(pool_csv), content=True) == first and reads == []  # a second pass reads nothing

    stat_before = cache.fingerprint(str(pool_csv))
    for f in pool_dir.iterdir():  # what a copy to new storage does to mtimes
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert cache.fingerprint(str(pool_csv)) != stat_before  # by stat: everything reruns
    assert cache.fingerprint(str(pool_csv), content=True) == first and len(reads) == 12  # by content: nothing


def test_the_fingerprint_mode_keeps_the_keys_of_outputs_made_before_it(archive):
    path, _, pool_csv = archive
    by_stat, by_content = (runner.plan(spec.load(path, o))[1] for o in ([], ["pretrain.data.fingerprint=content"]))
    assert "fingerprint" not in by_stat.record["config"]["data"]  # a new default must not move every key
    assert by_stat.record["inputs"]["data.manifest"] == manifest.fingerprint(pool_csv)
    assert by_content.record["inputs"]["data.manifest"].startswith("content:") and by_content.key != by_stat.key
