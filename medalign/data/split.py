"""Patient-level train/val/test splits, cross-validation folds and few-shot subsets for a manifest.

`split()` reads a manifest, assigns `split` to its labeled rows so that no group (a patient) is in
two splits, stratified by label as far as grouping allows, and writes a new manifest with the
atomic `build.write_csv`; or, with `keep_split`, keeps the split the manifest has (an official
one) and only adds the columns. Optional extra columns: `fold` (k-fold CV over train+val) and 0/1
`fewshot_*` columns marking subsets of train.

Approximations, on purpose:
- Splits are carved with scikit-learn's StratifiedGroupKFold (shuffle=True, random_state=seed),
  test first from all labeled rows, then val from the rest. A fraction f is approximated as m of n
  folds (m/n), with n the smallest number of folds in 2..20 (and at most the number of groups) for
  which |m/n - f| <= 0.02, else the closest m/n found. E.g. 0.15 -> 1/6 (then val 0.15/0.85 -> 1/6
  of the rest), 0.1 -> 1/10, 0.2 -> 1/5, 0.3 -> 2/7. Sizes are further off by whole groups; the report
  gives what was used (`carving`) and what came out (`rows`, `splits`).
- Few-shot subsets take whole groups (patients) from train in a seeded random order, each group
  only while one of its labels is still below target, until every class reaches its target: k
  per class for an int k, max(1, round(frac * class's training images)) for a fraction. A group
  brings all its images, so a class may end a little above target (never below).
- Rows whose group value is empty (or with no group column at all) are each their own group.

Rows with an empty `label` are not split: a row whose split is already `unlabeled` keeps it; the
others get `unlabeled` when keep_unlabeled, and are dropped (and counted in the report) otherwise.
Same inputs and seed give the same bytes; a different seed gives a different assignment.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from medalign.data.build import rebase, write_csv
from medalign.data.manifest import plural, read_manifest
from medalign.errors import DataError

SPLITS = ("train", "val", "test")
MAX_FOLDS = 20  # at most this many folds to approximate a fraction as m/n
FRACTION_TOL = 0.02


def split(manifest_csv: str | Path, out_csv: str | Path, *, fractions=(0.7, 0.15, 0.15), seed: int = 0,
          group: str | None = "patient_id", stratify: str | None = "label", folds: int = 0,
          few_shot=(), few_shot_seeds=(0,), keep_unlabeled: bool = True, keep_split: bool = False) -> dict:
    """Writes `out_csv`: the manifest with `split` (train/val/test/unlabeled) and optional `fold`,
    `split_original` and `fewshot_*` columns. Returns a report dict (see the module docstring).

    `group`: column whose rows must stay in one split (None: every row its own group).
    `stratify`: column to balance across splits and folds (None: no stratification); rows are
    labeled when their `label` is non-empty. `folds=k` (k >= 2) adds `fold` 0..k-1 over train+val.
    `few_shot`: ints k (k images per class) and floats in (0, 1) (fraction of train), each made
    once per seed in `few_shot_seeds`, as columns fewshot_k{k}_s{seed} / fewshot_p{pct}_s{seed}.
    `keep_split`: every labeled row keeps its train/val/test from the manifest (`fractions` unused).
    """
    manifest = read_manifest(manifest_csv)
    out_csv = Path(out_csv)
    where = f"manifest {manifest.path}"
    fr = _check_fractions(fractions)
    if folds and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise DataError(f"folds must be 0 (none) or an integer >= 2, not {folds!r}")
    items = _check_few_shot(few_shot, few_shot_seeds)
    if stratify is not None and stratify not in manifest.columns:
        raise DataError(f"{where}: no column {stratify!r} to stratify by (columns: {list(manifest.columns)})")
    if "label" not in manifest.columns:
        raise DataError(f"{where}: no 'label' column, so no labeled rows to split")

    rows = [dict(r) for r in manifest.rows]
    labeled = [i for i, r in enumerate(rows) if r["label"]]
    if not labeled:
        raise DataError(f"{where}: no labeled rows (every 'label' is empty); nothing to split")
    has_group = group is not None and group in manifest.columns
    gkey = [f"{group}={r[group]}" if has_group and r[group] else f"\0row{i}" for i, r in enumerate(rows)]
    strat = [r[stratify] if stratify is not None else "" for r in rows]

    if keep_split:
        assign, carving = _kept(manifest, rows, labeled, gkey, where), {}
        needed = [s for s in SPLITS if s in assign.values()]
    else:
        assign, carving, needed = _carve(labeled, strat, gkey, fr, seed, where, stratify)

    # rows without a label
    dropped = 0
    out_rows, old_split = [], []
    for i, r in enumerate(rows):
        old = r.get("split", "")
        if i in assign:
            r["split"] = assign[i]
        elif old == "unlabeled" or keep_unlabeled:
            r["split"] = "unlabeled"
        else:
            dropped += 1
            continue
        r["path"] = rebase(r["path"], manifest.path, out_csv)
        r["_i"] = i
        out_rows.append(r)
        old_split.append(old)

    columns = [c for c in manifest.columns]
    if "split" not in columns:
        columns.append("split")
    kept_original = False
    if "split" in manifest.columns and any(o != r["split"] for o, r in zip(old_split, out_rows)):
        if "split_original" not in columns:  # an earlier split_original is the first original: kept
            columns.insert(columns.index("split") + 1, "split_original")
            for o, r in zip(old_split, out_rows):
                r["split_original"] = o
        kept_original = True

    report_folds = None
    if folds:
        pool = [r["_i"] for r in out_rows if r["split"] in ("train", "val")]
        _check_groups_per_value(pool, strat, gkey, folds, f"folds (folds={folds})", where, stratify)
        fold_of = dict(zip(pool, _group_folds(pool, strat, gkey, folds, seed)))
        for r in out_rows:
            r["fold"] = str(fold_of[r["_i"]]) if r["_i"] in fold_of else ""
        if "fold" not in columns:
            columns.append("fold")
        report_folds = {str(k): v for k, v in sorted(Counter(fold_of.values()).items())}

    report_few = {}
    train = [r["_i"] for r in out_rows if r["split"] == "train"]
    train_counts = Counter(rows[i]["label"] for i in train)
    classes = sorted({rows[i]["label"] for i in labeled})
    for item, col_seed, name in items:
        if isinstance(item, int):
            short = {c: train_counts[c] for c in classes if train_counts[c] < item}
            if short:
                c, n = next(iter(short.items()))
                more = plural(len(short) - 1, "more class", "more classes")
                raise DataError(f"{where}: few_shot k={item} needs {item} training images per class, but class "
                                f"{c!r} has only {n} in train" + (f" (and {more} short)" if len(short) > 1 else ""))
            target = {c: item for c in classes}
        else:
            target = {c: max(1, round(item * train_counts[c])) for c in classes if train_counts[c]}
        chosen = _pick_groups(train, [r["label"] for r in rows], gkey, target, col_seed)
        for r in out_rows:
            r[name] = "1" if r["_i"] in chosen else ("0" if r["split"] == "train" else "")
        if name not in columns:
            columns.append(name)
        report_few[name] = dict(sorted(Counter(rows[i]["label"] for i in chosen).items()))

    write_csv(out_csv, columns, out_rows)
    counts: dict[str, Counter] = defaultdict(Counter)
    groups: dict[str, set] = defaultdict(set)
    for r in out_rows:
        counts[r["split"]][r["label"]] += 1
        groups[r["split"]].add(gkey[r["_i"]])
    order = [s for s in (*SPLITS, "unlabeled") if s in counts]
    missing = {s: [c for c in classes if not counts[s][c]] for s in needed}
    report = {
        "manifest": str(out_csv), "rows": len(out_rows),
        "splits": {s: sum(counts[s].values()) for s in order},
        "counts": {s: dict(sorted(counts[s].items())) for s in order},
        "groups": {s: len(groups[s]) for s in order},
        "group_column": group if has_group else None,
        "columns": columns, "carving": carving,
        "dropped_unlabeled": dropped, "split_original": kept_original,
        "labels_missing": {s: v for s, v in missing.items() if v},
    }
    if report_folds is not None:
        report["folds"] = report_folds
    if report_few:
        report["few_shot"] = report_few
    return report


def _carve(labeled, strat, gkey, fr, seed, where, stratify) -> tuple[dict[int, str], dict, list[str]]:
    """train/val/test over the labeled rows: test first, then val from the rest."""
    needed = [s for s, f in zip(SPLITS, fr) if f > 0]
    _check_groups_per_value(labeled, strat, gkey, len(needed), f"splits ({'/'.join(needed)})", where, stratify)
    assign = {i: "train" for i in labeled}
    carving = {}
    remaining = list(labeled)
    for name, f in (("test", fr[2]), ("val", fr[1] / (1.0 - fr[2]) if fr[2] < 1 else 0.0)):
        if f <= 0:
            continue
        n_groups = len({gkey[i] for i in remaining})
        m, n = _as_folds(f, n_groups, where)
        fold_of = _group_folds(remaining, strat, gkey, n, seed)
        carving[name] = {"fraction_of_rest": round(f, 4), "folds_taken": m, "n_splits": n}
        for i, k in zip(remaining, fold_of):
            if k < m:
                assign[i] = name
        remaining = [i for i in remaining if assign[i] == "train"]
    return assign, carving, needed


def _kept(manifest, rows, labeled, gkey, where) -> dict[int, str]:
    """The manifest's own split of every labeled row, refused where a group spans two splits."""
    if "split" not in manifest.columns:
        raise DataError(f"{where}: keep_split needs a 'split' column")
    assign, seen = {}, {}
    for i in labeled:
        value = rows[i].get("split", "")
        if value not in SPLITS:
            raise DataError(f"{where} line {i + 2}: keep_split needs train, val or test on every labeled row, "
                            f"not {value!r}")
        if seen.setdefault(gkey[i], value) != value:
            raise DataError(f"{where} line {i + 2}: {gkey[i]} is in both {seen[gkey[i]]} and {value}")
        assign[i] = value
    return assign


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DataError(f"fractions must be three numbers (train, val, test), not {fractions!r}") from None
    if len(fr) != 3:
        raise DataError(f"fractions must be three numbers (train, val, test), not {len(fr)}: {fractions!r}")
    if any(f < 0 or not math.isfinite(f) for f in fr):
        raise DataError(f"fractions must not be negative: {fractions!r}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"fractions must sum to 1, not {sum(fr):g}: {fractions!r}")
    if fr[0] <= 0:
        raise DataError(f"the train fraction must be > 0: {fractions!r}")
    return fr


def _check_few_shot(few_shot, seeds) -> list[tuple[int | float, int, str]]:
    seeds = list(seeds)
    if few_shot and (not seeds or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds)):
        raise DataError(f"few_shot_seeds must be a non-empty list of integers, not {seeds!r}")
    out, names = [], set()
    for item in few_shot:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise DataError(f"few_shot items are ints (k per class) or fractions in (0, 1), not {item!r}")
        item = int(item) if isinstance(item, numbers.Integral) else float(item)
        if isinstance(item, int):
            if item < 1:
                raise DataError(f"few_shot k must be >= 1, not {item}")
            stem = f"fewshot_k{item}"
        else:
            if not 0 < item < 1:
                raise DataError(f"few_shot fraction must be in (0, 1), not {item}")
            pct = int(round(item * 100, 6))  # int(frac*100), without 0.29*100 = 28.999...
            if pct < 1:
                raise DataError(f"few_shot fraction {item} is below 1%; its column would be named p0")
            stem = f"fewshot_p{pct}"
        for s in map(int, seeds):
            name = f"{stem}_s{s}"
            if name in names:
                raise DataError(f"few_shot: {item!r} gives the column {name} twice")
            names.add(name)
            out.append((item, s, name))
    return out


def _check_groups_per_value(idx, strat, gkey, n_needed, needing, where, stratify) -> None:
    if stratify is None or n_needed < 2:
        groups_of: dict[str, set] = {"": {gkey[i] for i in idx}}
    else:
        groups_of = defaultdict(set)
        for i in idx:
            groups_of[strat[i]].add(gkey[i])
    short = {v: len(g) for v, g in sorted(groups_of.items()) if len(g) < n_needed}
    if short:
        v, n = next(iter(short.items()))
        subject = "the rows have" if stratify is None else f"{stratify} {v!r} has"
        raise DataError(f"{where}: {subject} only {plural(n, 'group (patient)', 'groups (patients)')} but the "
                        f"{n_needed} {needing} each need one"
                        + (f"; {plural(len(short) - 1, 'more value')} too" if len(short) > 1 else "")
                        + "; merge or drop it, or ask for fewer")


def _as_folds(f: float, n_groups: int, where: str) -> tuple[int, int]:
    """f as m of n folds (see the module docstring)."""
    if n_groups < 2:
        raise DataError(f"{where}: only {plural(n_groups, 'group')} left to carve a split from")
    best = None
    for n in range(2, min(MAX_FOLDS, n_groups) + 1):
        m = min(max(1, round(f * n)), n - 1)
        err = abs(m / n - f)
        if err <= FRACTION_TOL:
            return m, n
        if best is None or err < best[0] - 1e-12:
            best = (err, m, n)
    return best[1], best[2]


def _group_folds(idx: list[int], strat: list[str], gkey: list[str], n: int, seed: int) -> list[int]:
    """Fold number (0..n-1) of each row in idx, from StratifiedGroupKFold."""
    from sklearn.model_selection import StratifiedGroupKFold

    codes: dict[str, int] = {}
    groups = np.array([codes.setdefault(gkey[i], len(codes)) for i in idx])
    y = np.array([strat[i] for i in idx])
    out = np.full(len(idx), -1)
    cv = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # rare classes: checked and reported by us, not warned per call
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for k, (_, test) in enumerate(cv.split(np.zeros(len(idx)), y, groups)):
            out[test] = k
    return out.tolist()


def _pick_groups(train: list[int], labels: list[str], gkey: list[str], target: dict[str, int], seed: int) -> set[int]:
    """Whole train groups, in a seeded random order, while one of their labels is below target."""
    members: dict[str, list[int]] = {}
    for i in train:
        members.setdefault(gkey[i], []).append(i)
    order = list(members)
    perm = np.random.default_rng(seed).permutation(len(order))
    have: Counter = Counter()
    chosen: set[int] = set()
    for p in perm:
        if all(have[c] >= t for c, t in target.items()):
            break
        rows = members[order[p]]
        got = Counter(labels[i] for i in rows)
        if any(have[c] < target.get(c, 0) for c in got):
            chosen.update(rows)
            have.update(got)
    return chosen
