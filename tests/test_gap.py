"""gap and drift on the demo data's two synthetic scanners."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medalign import cli, config
from medalign.cli.evidence import DRIFT_EXIT
from medalign.data import build, demo
from medalign.gap import gap


@pytest.fixture(scope="module")
def draws(tmp_path_factory):
    """Two independent demo draws, each as one manifest per scanner."""
    root = tmp_path_factory.mktemp("draws")
    out = {}
    for seed in (1, 2):
        demo.generate(root / f"d{seed}", n_unlabeled=60, n_train=8, n_val=4, n_test=8, img_size=32, seed=seed)
        for site in demo.SITES:
            out[seed, site] = build.select(root / f"d{seed}" / "manifest.csv", root / f"d{seed}_{site}.csv",
                                           "site", site)
    return out


def test_gap_separates_the_scanners_and_not_two_draws_of_one(draws):
    bb = config.BackboneConfig(name="test_resnet", in_chans=1, img_size=32)
    other = gap(draws[1, "scanner_a"], draws[2, "scanner_b"], bb, permutations=200, device="cpu")
    same = gap(draws[1, "scanner_a"], draws[2, "scanner_a"], bb, permutations=200, device="cpu")
    assert other["mmd_p_value"] < 0.01 < same["mmd_p_value"]
    assert other["frechet"] > same["frechet"] and other["mmd2"] > same["mmd2"]
    assert other["images"][0] == same["images"][0] > 30


def test_drift_flags_the_other_scanner(draws, tmp_path, demo_set):
    stage = config.STAGES["finetune"]
    cfg = config.load(stage.config, None, ["runtime.device=cpu", f"data.manifest={demo_set}", "backbone.name=test_resnet",
                                           "backbone.img_size=32", "adapter.name=full", "optim.epochs=1"])
    (tmp_path / "ft").mkdir()
    stage.run(cfg, tmp_path / "ft")

    def medalign_drift(new: Path) -> tuple[int, dict]:  # the command a scheduled job runs, and its exit code
        args = ["drift", str(draws[1, "scanner_a"]), str(new), "--model", str(tmp_path / "ft"), "--permutations",
                "200", "--device", "cpu", "--json", str(tmp_path / "drift.json")]
        try:
            cli.main(args)
            code = 0
        except SystemExit as e:
            code = e.code
        return code, json.loads((tmp_path / "drift.json").read_text())

    code, shifted = medalign_drift(draws[2, "scanner_b"])
    assert code == DRIFT_EXIT == 4 and shifted["drift"]
    code, fresh = medalign_drift(draws[2, "scanner_a"])
    assert code == 0 and not fresh["drift"]
    freq = fresh["predicted_frequencies"]
    assert freq["classes"] == ["lesion", "normal"] and abs(sum(freq["new"]) - 1) < 1e-9
