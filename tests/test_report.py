"""evaluate end to end: metrics with intervals and subgroups, and a report that renders offline."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from medalign import config
from medalign.report import build

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, _demo_master):
    root = tmp_path_factory.mktemp("report")
    demo_set = _demo_master / "manifest.csv"
    ft = config.STAGES["finetune"]
    cfg = config.load(ft.config, None, ["runtime.device=cpu", f"data.manifest={demo_set}", "backbone.name=test_resnet",
                                        "backbone.img_size=32", "adapter.name=full", "optim.epochs=2"])
    (root / "ft").mkdir()
    ft.run(cfg, root / "ft")
    ev = config.STAGES["evaluate"]
    cfg = config.load(ev.config, None, ["runtime.device=cpu", f"model={root / 'ft'}", f"data.manifest={demo_set}",
                                        "subgroups=[site]", "min_cases=1", "bootstrap.resamples=100"])
    (root / "ev").mkdir()
    metrics = ev.run(cfg, root / "ev")
    (root / "ev" / "metrics.json").write_text(json.dumps(metrics))
    (root / "ev" / "config.yaml").write_text(config.dump(cfg))
    return root, metrics, demo_set


def test_evaluate_reports_intervals_an_operating_point_and_subgroups(evaluated):
    _, m, _ = evaluated
    assert m["n"] == 6 and set(m["intervals"]) >= {"accuracy", "brier", "ece"}
    assert m["bootstrap"]["unit"] in ("patient_id", "image") and m["bootstrap"]["resamples"] == 100
    assert m["operating_point"]["chosen_on"] == "val" and "sensitivity" in m["at_threshold"]
    assert set(m["subgroups"]["site"]["values"]) <= {"scanner_a", "scanner_b"}
    assert m["report"] == "report.html"


def test_the_report_is_self_contained_and_names_no_patient(evaluated):
    root, _, demo_set = evaluated
    page = (root / "ev" / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing fetched when it opens
    assert page.count("data:image/png;base64,") >= 5  # ROC, PR, confusion, reliability, maps
    rows = list(csv.DictReader(demo_set.open()))
    for r in rows:
        assert r["path"] not in page and f">{r['patient_id']}<" not in page
    for section in ("Metrics", "Subgroups", "Model card", "Where the model looked"):
        assert section in page


def test_report_rebuilds_one_run_and_compares_two(evaluated, tmp_path):
    root, _, _ = evaluated
    one = build.rebuild([root / "ev"], tmp_path / "again.html")
    assert one.is_file() and "Model card" in one.read_text()
    assert (root / "ev" / "report.html").is_file()  # a copy elsewhere leaves the run's own page
    both = build.rebuild([root / "ev", root / "ev"], tmp_path / "cmp.html").read_text()
    assert "Paired differences" in both and "+0.000" in both  # a run against itself differs by nothing


@pytest.mark.skipif(BROWSER is None, reason="no chromium: apt-get install chromium")
def test_the_report_renders_in_headless_chromium(evaluated, tmp_path):
    from PIL import Image
    root, _, _ = evaluated
    shot = tmp_path / "report.png"
    r = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1200,3200", f"--screenshot={shot}", (root / "ev" / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    assert not re.search(r"Uncaught|ERR_FILE_NOT_FOUND|Failed to load", r.stderr)  # console and load errors
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colourful = (px.max(2) - px.min(2)) > 60  # plot lines, heat maps, the confusion matrix's blues
    bands = np.flatnonzero(colourful.sum(1) > 5)
    assert len(bands) > 400, "the figures did not render"  # several hundred rows of coloured pixels
