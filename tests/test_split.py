"""Tests for medalign.data.split: grouped, stratified splits, folds and few-shot subsets."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from medalign.data import build
from medalign.data.split import split
from medalign.errors import DataError

COLUMNS = ["path", "label", "patient_id", "site"]


def _manifest(path: Path, n_rows: int = 200, classes=("A", "B", "C"), probs=(0.5, 0.3, 0.2), seed: int = 0,
              n_unlabeled: int = 0, split_col: str | None = None) -> Path:
    """~n_rows images; patients own 1-3 images that share the patient's label. Images need not exist."""
    rng = np.random.default_rng(seed)
    rows, p = [], 0
    while len(rows) < n_rows:
        label = classes[rng.choice(len(classes), p=probs)]
        for _ in range(int(rng.integers(1, 4))):
            rows.append({"path": f"img/{len(rows):04d}.png", "label": label, "patient_id": f"P{p:03d}",
                         "site": f"s{p % 3}"})
        p += 1
    for j in range(n_unlabeled):
        rows.append({"path": f"pool/{j:04d}.png", "label": "", "patient_id": f"U{j:03d}", "site": "s0"})
    columns = list(COLUMNS)
    if split_col is not None:
        columns.append("split")
        for r in rows:
            r["split"] = split_col if r["label"] else "unlabeled"
    build.write_csv(path, columns, rows)
    return path


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _splits_of_patients(rows: list[dict], col: str = "split") -> dict[str, set]:
    out = defaultdict(set)
    for r in rows:
        out[r["patient_id"]].add(r[col])
    return out


def test_no_patient_in_two_splits(tmp_path):
    src = _manifest(tmp_path / "m.csv")
    report = split(src, tmp_path / "out.csv", seed=3)
    rows = _read(tmp_path / "out.csv")
    assert len(rows) == 200 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(len(s) == 1 for s in _splits_of_patients(rows).values())
    n_patients = len({r["patient_id"] for r in rows})
    assert sum(report["groups"].values()) == n_patients
    assert report["columns"] == COLUMNS + ["split"]


def test_rows_without_patient_id_are_their_own_group(tmp_path):
    src = _manifest(tmp_path / "m.csv")
    rows = _read(src)
    for r in rows[::2]:
        r["patient_id"] = ""
    build.write_csv(src, COLUMNS, rows)
    report = split(src, tmp_path / "out.csv")
    out = _read(tmp_path / "out.csv")
    named = {k: v for k, v in _splits_of_patients(out).items() if k}
    assert all(len(s) == 1 for s in named.values())
    assert sum(report["groups"].values()) == len(named) + sum(1 for r in out if not r["patient_id"])


@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.8, 0.1, 0.1)])
def test_split_sizes_close_to_fractions(tmp_path, fractions):
    src = _manifest(tmp_path / "m.csv", n_rows=240)
    report = split(src, tmp_path / "out.csv", fractions=fractions, seed=1)
    n = report["rows"]
    for name, f in zip(("train", "val", "test"), fractions):
        assert abs(report["splits"][name] / n - f) <= 0.06, (name, report["splits"], report["carving"])


def test_class_proportions_per_split_close_to_overall(tmp_path):
    src = _manifest(tmp_path / "m.csv", n_rows=300)
    report = split(src, tmp_path / "out.csv", seed=2)
    overall = Counter(r["label"] for r in _read(src))
    total = sum(overall.values())
    for name, counts in report["counts"].items():
        size = sum(counts.values())
        for label, n in overall.items():
            assert abs(counts.get(label, 0) / size - n / total) <= 0.08, (name, label, report["counts"])


def test_deterministic_and_seed_sensitive(tmp_path):
    src = _manifest(tmp_path / "m.csv")
    kwargs = dict(folds=3, few_shot=[2, 0.25], few_shot_seeds=[0, 1])
    split(src, tmp_path / "a.csv", seed=7, **kwargs)
    split(src, tmp_path / "b.csv", seed=7, **kwargs)
    split(src, tmp_path / "c.csv", seed=8, **kwargs)
    a, b, c = ((tmp_path / f"{x}.csv").read_bytes() for x in "abc")
    assert a == b
    assert [r["split"] for r in _read(tmp_path / "a.csv")] != [r["split"] for r in _read(tmp_path / "c.csv")]
    rows = _read(tmp_path / "a.csv")
    assert [r["fewshot_k2_s0"] for r in rows] != [r["fewshot_k2_s1"] for r in rows]


def test_folds_cover_train_val_exactly_once_and_keep_groups(tmp_path):
    src = _manifest(tmp_path / "m.csv", n_unlabeled=5)
    report = split(src, tmp_path / "out.csv", folds=5, seed=4)
    rows = _read(tmp_path / "out.csv")
    pool = [r for r in rows if r["split"] in ("train", "val")]
    assert all(r["fold"] in {"0", "1", "2", "3", "4"} for r in pool)
    assert all(r["fold"] == "" for r in rows if r["split"] in ("test", "unlabeled"))
    assert sum(report["folds"].values()) == len(pool)
    assert all(len(s) == 1 for s in _splits_of_patients(pool, "fold").values())
    sizes = Counter(r["fold"] for r in pool)
    assert max(sizes.values()) - min(sizes.values()) <= 0.1 * len(pool)
    for fold in sizes:  # stratified: every class in every fold
        assert {r["label"] for r in pool if r["fold"] == fold} == {"A", "B", "C"}


def test_few_shot_k_per_class(tmp_path):
    src = _manifest(tmp_path / "m.csv", n_unlabeled=4)
    report = split(src, tmp_path / "out.csv", few_shot=[1, 5], few_shot_seeds=[0, 1])
    split(src, tmp_path / "again.csv", few_shot=[1, 5], few_shot_seeds=[0, 1])
    rows = _read(tmp_path / "out.csv")
    assert rows == _read(tmp_path / "again.csv")
    for k in (1, 5):
        for s in (0, 1):
            col = f"fewshot_k{k}_s{s}"
            picked = [r for r in rows if r[col] == "1"]
            assert all(r["split"] == "train" for r in picked)
            assert all(r[col] in ("0", "1") for r in rows if r["split"] == "train")
            assert all(r[col] == "" for r in rows if r["split"] != "train")
            counts = Counter(r["label"] for r in picked)
            assert all(counts[c] >= k for c in "ABC"), (col, counts)
            assert all(counts[c] <= k + 2 for c in "ABC"), (col, counts)  # a patient has at most 3 images
            assert report["few_shot"][col] == dict(sorted(counts.items()))
            picked_patients = {r["patient_id"] for r in picked}  # whole patients
            assert all(r[col] == "1" for r in rows if r["patient_id"] in picked_patients)


def test_few_shot_fraction(tmp_path):
    src = _manifest(tmp_path / "m.csv", n_rows=300)
    split(src, tmp_path / "out.csv", few_shot=[0.2, 0.29], seed=1)
    rows = _read(tmp_path / "out.csv")
    train = [r for r in rows if r["split"] == "train"]
    for frac, col in ((0.2, "fewshot_p20_s0"), (0.29, "fewshot_p29_s0")):
        picked = [r for r in train if r[col] == "1"]
        assert abs(len(picked) / len(train) - frac) <= 0.05
        all_c, pick_c = Counter(r["label"] for r in train), Counter(r["label"] for r in picked)
        for c in "ABC":
            assert abs(pick_c[c] / all_c[c] - frac) <= 0.1, (col, c, pick_c, all_c)


def test_few_shot_too_few_per_class_is_an_error(tmp_path):
    src = _manifest(tmp_path / "m.csv")
    report = split(src, tmp_path / "probe.csv")
    smallest = min(report["counts"]["train"].items(), key=lambda kv: kv[1])
    with pytest.raises(DataError, match=rf"class '{smallest[0]}' has only {smallest[1]} in train") as e:
        split(src, tmp_path / "out.csv", few_shot=[smallest[1] + 1])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.csv").exists()


def test_unlabeled_rows_preserved_or_dropped(tmp_path):
    src = _manifest(tmp_path / "m.csv", n_unlabeled=10)
    rows = _read(src)
    rows[0]["label"] = ""
    rows[0]["split"] = "test"  # an unlabeled row with another split: becomes unlabeled
    build.write_csv(src, COLUMNS + ["split"], [r | {"split": r.get("split", "unlabeled")} for r in rows])
    report = split(src, tmp_path / "keep.csv")
    out = _read(tmp_path / "keep.csv")
    assert len(out) == len(rows)
    assert all(r["split"] == "unlabeled" for r in out if not r["label"])
    assert report["splits"]["unlabeled"] == 11 and report["dropped_unlabeled"] == 0
    assert all(a["path"] == b["path"] for a, b in zip(out, rows))  # order kept

    report = split(src, tmp_path / "drop.csv", keep_unlabeled=False)
    out = _read(tmp_path / "drop.csv")
    assert report["dropped_unlabeled"] == 1  # rows already 'unlabeled' keep their split
    assert sum(r["split"] == "unlabeled" for r in out) == 10


def test_existing_split_kept_as_split_original_when_it_differs(tmp_path):
    src = _manifest(tmp_path / "m.csv", n_unlabeled=3, split_col="train")
    report = split(src, tmp_path / "out.csv")
    rows = _read(tmp_path / "out.csv")
    assert report["split_original"] and report["columns"][:6] == COLUMNS + ["split", "split_original"]
    assert all(r["split_original"] == ("train" if r["label"] else "unlabeled") for r in rows)
    assert {r["split"] for r in rows} == {"train", "val", "test", "unlabeled"}
    # splitting its own output again with the same seed changes nothing: the first original is kept
    again = split(tmp_path / "out.csv", tmp_path / "again.csv")
    assert not again["split_original"] and again["columns"] == report["columns"]
    assert _read(tmp_path / "again.csv") == rows


def test_same_split_is_not_copied(tmp_path):
    src = _manifest(tmp_path / "m.csv")
    split(src, tmp_path / "first.csv", seed=5)
    report = split(tmp_path / "first.csv", tmp_path / "second.csv", seed=5)
    assert not report["split_original"] and "split_original" not in report["columns"]


def test_paths_rebased_for_another_folder(tmp_path):
    src = _manifest(tmp_path / "m.csv")
    split(src, tmp_path / "sub" / "out.csv")
    assert _read(tmp_path / "sub" / "out.csv")[0]["path"] == "../img/0000.png"


@pytest.mark.parametrize("kwargs, message", [
    (dict(fractions=(0.7, 0.2, 0.2)), "sum to 1"),
    (dict(fractions=(1.2, -0.1, -0.1)), "negative"),
    (dict(fractions=(0.5, 0.5)), "three numbers"),
    (dict(folds=1), "folds"),
    (dict(few_shot=[1.5]), "fraction must be in"),
    (dict(few_shot=[0]), "k must be >= 1"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    src = _manifest(tmp_path / "m.csv", n_rows=40)
    with pytest.raises(DataError, match=message) as e:
        split(src, tmp_path / "out.csv", **kwargs)
    assert "\n" not in str(e.value)


def test_no_labeled_rows(tmp_path):
    src = tmp_path / "m.csv"
    build.write_csv(src, COLUMNS, [{"path": f"{i}.png", "label": "", "patient_id": str(i)} for i in range(5)])
    with pytest.raises(DataError, match="no labeled rows"):
        split(src, tmp_path / "out.csv")


def test_label_with_too_few_patients(tmp_path):
    src = _manifest(tmp_path / "m.csv", n_rows=80, classes=("A", "B"), probs=(0.5, 0.5))
    rows = _read(src)
    rows += [{"path": f"rare/{i}.png", "label": "RARE", "patient_id": f"R{i % 2}"} for i in range(6)]
    build.write_csv(src, COLUMNS, rows)
    with pytest.raises(DataError, match=r"label 'RARE' has only 2 groups \(patients\).*3 splits \(train/val/test\)") as e:
        split(src, tmp_path / "out.csv")
    assert "\n" not in str(e.value)
    # two patients are enough for two splits; then train+val holds one, too few for 3 folds
    report = split(src, tmp_path / "out.csv", fractions=(0.8, 0.0, 0.2))
    assert set(report["splits"]) == {"train", "test"} and "val" not in report["carving"]
    with pytest.raises(DataError, match=r"label 'RARE' has only 1 group \(patient\).*3 folds"):
        split(src, tmp_path / "out.csv", fractions=(0.8, 0.0, 0.2), folds=3)


def test_keep_split_adds_few_shot_over_an_official_split(tmp_path):
    official = split(_manifest(tmp_path / "m.csv", n_rows=300, n_unlabeled=5), tmp_path / "official.csv", seed=3)
    report = split(tmp_path / "official.csv", tmp_path / "out.csv", keep_split=True, few_shot=[0.1],
                   few_shot_seeds=[0, 1], seed=9)
    before, after = _read(tmp_path / "official.csv"), _read(tmp_path / "out.csv")
    assert [r["split"] for r in after] == [r["split"] for r in before]  # seed 9 would carve another split
    assert report["splits"] == official["splits"] and not report["split_original"]
    for col in ("fewshot_p10_s0", "fewshot_p10_s1"):
        assert {r["split"] for r in after if r[col] == "1"} == {"train"}
    assert [r["fewshot_p10_s0"] for r in after] != [r["fewshot_p10_s1"] for r in after]


def test_keep_split_refuses_rows_without_a_split_and_patients_in_two(tmp_path):
    src = _manifest(tmp_path / "m.csv", split_col="train")
    rows = _read(src)
    rows[4]["split"] = ""
    build.write_csv(src, COLUMNS + ["split"], rows)
    with pytest.raises(DataError, match=r"line 6: keep_split needs train, val or test on every labeled row, not ''"):
        split(src, tmp_path / "out.csv", keep_split=True)
    rows[4]["split"] = "train"
    twin = next(i for i in range(1, len(rows)) if rows[i]["patient_id"] == rows[i - 1]["patient_id"])
    rows[twin]["split"] = "test"
    build.write_csv(src, COLUMNS + ["split"], rows)
    with pytest.raises(DataError, match=rf"patient_id={rows[twin]['patient_id']} is in both train and test"):
        split(src, tmp_path / "out.csv", keep_split=True)
    assert not (tmp_path / "out.csv").exists()
