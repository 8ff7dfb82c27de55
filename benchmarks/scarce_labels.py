"""The headline benchmark: does domain alignment beat what a user would do anyway, with scarce labels?

    .venv/bin/pip install -e '.[weights]'
    .venv/bin/python benchmarks/scarce_labels.py [--seeds 0 1 2] [--litemedsam] [--datasets chest breast]

Data (../shared/data): the pediatric chest X-rays with the official PneumoniaMNIST train/val/test
(pneumoniamnist_split.csv; the 624 test JPEGs are the official test set), and BreastMNIST (28 px
breast ultrasound, official split). `medalign manifest split --keep-split --few-shot` marks
class-stratified subsets of the training labels (chest: 1% and 10%; breast: 10%, and 100% as no
subset), one per seed; every training image, its label withheld, is the pretraining pool.

Each dataset is one pipeline, written to the work folder as `{dataset}.yaml` (rerun it with
`medalign run`). Its steps are the starting points' continued pretraining (once per start), then
sweeps over the (label subset, seed) runs (a `matrix` list): `estimate` on the subset (k-NN on
frozen features of each start), and for each arm a `finetune` (epoch chosen on val) and an
`evaluate` on test. Arm 5 then adds FixMatch to the medalign arm with the best mean
*val* AUROC at 10% labels (FixMatch's setting, and the headline), so test is touched once per
model and never used to choose. The tables and the plot
are regenerated from the pipelines' outputs; rerunning after a crash recomputes only what is missing.
Writes one section of benchmarks/RESULTS.md per dataset ("## Scarce labels (...): {dataset}"), so a leg
reruns alone, and its plot benchmarks/scarce_labels_{dataset}.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from results import machine, update_section

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CHEST, BREAST = SHARED / "chest_xray", SHARED / "medmnist" / "breastmnist.npz"
HEADING = "## Scarce labels (`benchmarks/scarce_labels.py`)"
READING = "## Scarce labels: reading the results"  # by hand, below every generated section
PLOT = Path(__file__).resolve().parent / "scarce_labels.png"


@dataclass(frozen=True)
class Start:
    """A starting point: named weights or random init, optionally continued by SimCLR on the pool."""
    backbone: dict
    pretrain: dict | None = None  # overrides of configs/pretrain/simclr_resnet18.yaml
    label: str = ""


@dataclass(frozen=True)
class Arm:
    group: int  # the arms: 1 scratch, 2 plain transfer, 3 medalign, 4 medalign from scratch, 5 FixMatch
    start: str
    preset: str  # configs/finetune/{preset}.yaml
    overrides: dict = field(default_factory=dict)


RESNET = {"name": "resnet18", "in_chans": 1}
LITE0 = {"weights": "imagenet-efficientnet-lite0", "in_chans": 1}
LITEMEDSAM = {"weights": "litemedsam-encoder", "in_chans": 1}
STARTS = {
    "random": Start(RESNET, label="ResNet-18, random init"),
    "imagenet": Start(LITE0, label="ImageNet EfficientNet-Lite0"),
    "litemedsam": Start(LITEMEDSAM, label="LiteMedSAM encoder"),
    # continued pretraining from ImageNet: a gentle learning rate keeps what ImageNet taught
    "imagenet+simclr": Start(LITE0, {"optim": {"lr": 5e-4}}, "Lite0 + SimCLR on the pool"),
    # parameter-efficient: only biases and norms move, so they take a larger step
    "imagenet+simclr-bitfit": Start(LITE0, {"tuning": {"name": "bitfit"}, "optim": {"lr": 2e-3}},
                                    "Lite0 + SimCLR (BitFit) on the pool"),
    "random+simclr": Start(RESNET, {"optim": {"lr": 2e-3}}, "ResNet-18 + SimCLR on the pool, from scratch"),
}
ARMS = {
    "scratch, full": Arm(1, "random", "full"),
    "ImageNet, linear": Arm(2, "imagenet", "linear"),
    "ImageNet, full": Arm(2, "imagenet", "full"),
    "LiteMedSAM, linear": Arm(2, "litemedsam", "linear"),
    "ImageNet+SSL, linear": Arm(3, "imagenet+simclr", "linear"),
    "ImageNet+SSL, LoRA": Arm(3, "imagenet+simclr", "lora"),
    "ImageNet+SSL, full": Arm(3, "imagenet+simclr", "full"),
    "ImageNet+SSL(BitFit), BitFit": Arm(3, "imagenet+simclr-bitfit", "bitfit"),
    "scratch+SSL, linear": Arm(4, "random+simclr", "linear"),
    "scratch+SSL, full": Arm(4, "random+simclr", "full"),
}
# the pool: the training images outside the labeled subset, their labels withheld
FIXMATCH = {"semi": {"name": "fixmatch", "splits": ["train"], "mu": 1, "threshold": 0.95}}
FIXMATCH_AT = 0.1


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    fractions: tuple[float, ...]  # 1.0: every training label (no subset)
    pretrain_epochs: int  # continued pretraining of a pretrained start
    # from random init SSL has everything to learn: chest 1% scored 0.922 after 3 epochs, 0.938-0.941 after 10
    scratch_epochs: int
    published: str
    # ../shared is provisioned afresh now and then, which resets every image's mtime: chest's images
    # live there, so its cache keys follow their bytes; breast's PNGs are ours, written once
    fingerprint: str = "stat"


DATASETS = {
    # 3 epochs of SimCLR from ImageNet only disturbed its features (10% linear probe 0.927 -> 0.886);
    # 12 adapted them: 1% full 0.895 -> 0.932, 10% linear 0.886 -> 0.960
    "chest": Dataset("chest", "Chest X-ray (PneumoniaMNIST split)", (0.01, 0.1), 12, 10,
                     "MedMNIST v2 Table 3, all labels, AUC / ACC: ResNet-18 28 px 0.944 / 0.854, 224 px 0.956 / "
                     "0.864; ResNet-50 224 px 0.962 / 0.884. MedMNIST+: DINO ViT-B/16 linear probe 224 px AUC 0.989.",
                     fingerprint="content"),
    # 546 pool images make an epoch a few seconds: 100 epochs of SimCLR lifted the 10% arms from
    # 0.71-0.75 (10 epochs) to 0.80-0.83, past scratch with every label (0.81)
    "breast": Dataset("breast", "Breast ultrasound (BreastMNIST)", (0.1, 1.0), 100, 100,
                      "MedMNIST v2 Table 3, all labels: ResNet-18 28 px AUC 0.901 / ACC 0.863."),
}


def subset_name(fraction: float, seed: int) -> str | None:
    return None if fraction >= 1 else f"fewshot_p{round(fraction * 100)}_s{seed}"


def medalign(*args: str, log: Path | None = None) -> None:
    with (log.open("a") if log else open(os.devnull, "w")) as out:
        r = subprocess.run([sys.executable, "-m", "medalign", *map(str, args)], cwd=ROOT, stdout=out,
                           stderr=subprocess.PIPE, text=True)
    if r.returncode:
        sys.exit(f"failed: medalign {' '.join(map(str, args))}\n{r.stderr[-3000:]}")


# -- manifests -------------------------------------------------------------------------------

def chest_manifest(work: Path, seeds: list[int]) -> Path:
    """One row per JPEG with its official split, then the few-shot columns."""
    split_of: dict[str, str] = {}
    for r in csv.DictReader((CHEST / "pneumoniamnist_split.csv").open()):
        # the mapping puts a few JPEGs in both train and val: they are held out (val), never trained on
        if r["split"] != "test" and split_of.get(r["file"]) != "val":
            split_of[r["file"]] = r["split"]
    official = work / "chest_official.csv"
    with official.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for name, split in sorted(split_of.items()):
            w.writerow([CHEST / name, Path(name).parent.name.lower(), split])
        for path in sorted((CHEST / "test").glob("*/*.jpeg")):  # the official test set itself
            w.writerow([path, path.parent.name.lower(), "test"])
    return few_shot(official, work / "chest.csv", DATASETS["chest"].fractions, seeds)


def breast_manifest(work: Path, seeds: list[int]) -> Path:
    medalign("manifest", "build", "npz", BREAST, work / "breast")
    return few_shot(work / "breast" / "manifest.csv", work / "breast.csv", DATASETS["breast"].fractions, seeds)


def few_shot(official: Path, out: Path, fractions, seeds: list[int]) -> Path:
    shots = ",".join(str(f) for f in fractions if f < 1)
    medalign("manifest", "split", official, out, "--keep-split", "--few-shot", shots,
             "--few-shot-seeds", ",".join(map(str, seeds)))
    return out


# -- pipelines -------------------------------------------------------------------------------

def schedule(n_labeled: int) -> dict:
    """Epochs and patience by the number of labels: a few dozen images give a few steps per epoch."""
    return {"epochs": 25, "patience": 6} if n_labeled < 200 else {"epochs": 12, "patience": 4}


def pipeline(ds: Dataset, manifest: Path, runs: dict[tuple[float, int], int], arms: dict[str, Arm], size: int,
             work: Path, fixmatch: str | None = None, quick: bool = False, pretrain_epochs: int | None = None) -> Path:
    """The dataset's pipeline: the used starts' pretraining, then `estimate` and per arm a finetune and
    an evaluate, each a sweep over the (label fraction, seed) runs. The sweep is a matrix list: a
    label subset belongs to its seed, and the epochs to its size, so they pair rather than cross."""
    data = {"manifest": str(manifest), "cache": True, "fingerprint": ds.fingerprint}
    steps: dict[str, dict] = {}
    used = sorted({a.start for a in arms.values()}, key=list(STARTS).index)
    for name in used:
        start = STARTS[name]
        if start.pretrain:
            epochs = ds.pretrain_epochs if "weights" in start.backbone else ds.scratch_epochs
            cfg = {"backbone": {**start.backbone, "img_size": size}, "data": {**data, "splits": ["train"]},
                   "optim": {"epochs": 1 if quick else pretrain_epochs or epochs}}
            steps[step_of(name)] = {"stage": "pretrain", "base": str(ROOT / "configs/pretrain/simclr_resnet18.yaml"),
                                    "config": merge(cfg, start.pretrain)}
    subsets = [{"seed": seed, "data.subset": subset_name(fraction, seed)} for fraction, seed in runs]
    # a linear probe trains on features computed once: its preset's 50 epochs cost next to nothing
    scheduled = [{**c, **{f"optim.{k}": v for k, v in schedule(n).items()}} for c, n in zip(subsets, runs.values())]
    steps["estimate"] = {"matrix": subsets, "config": {
        "scores": ["knn", "linear"], "data": {**data, "train_split": "train", "eval_split": "val"}, "knn": {"k": 20},
        "candidates": [{"name": n, "backbone": backbone(n, size)} for n in used]}}
    arms = dict(arms)
    if fixmatch:
        arms[f"{fixmatch} + FixMatch"] = Arm(5, arms[fixmatch].start, arms[fixmatch].preset,
                                             merge(dict(arms[fixmatch].overrides), FIXMATCH))
    for arm_name, arm in arms.items():
        ft = slug(arm_name)
        matrix = subsets if quick or arm.preset == "linear" else scheduled
        if arm.group == 5:  # FixMatch: the label fraction it was chosen at
            matrix = [c for c, (fraction, _) in zip(matrix, runs) if fraction == FIXMATCH_AT]
        cfg = {"backbone": backbone(arm.start, size), "data": data, "optim": {"epochs": 1} if quick else {}}
        steps[f"ft-{ft}"] = {"stage": "finetune", "base": str(ROOT / f"configs/finetune/{arm.preset}.yaml"),
                             "matrix": matrix, "config": merge(cfg, arm.overrides)}
        steps[f"test-{ft}"] = {"stage": "evaluate", "config": {"model": f"${{ft-{ft}}}",
                                                               "data": {"manifest": str(manifest), "split": "test",
                                                                        "fingerprint": ds.fingerprint}}}
    path = work / f"{ds.name}.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(work / "runs"), "steps": steps}, sort_keys=False))
    return path


def backbone(start: str, size: int) -> dict:
    s = STARTS[start]
    return {"checkpoint": f"${{{step_of(start)}}}", "img_size": size} if s.pretrain else {**s.backbone, "img_size": size}


def step_of(start: str) -> str:
    return "pretrain-" + slug(start)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def outputs(path: Path, runs) -> dict[tuple[float, int], dict[str, dict]]:
    """(fraction, seed) -> step -> metrics.json, found through the pipeline's own plan (the cache keys);
    the pretraining steps, shared by every run, appear under each."""
    from medalign.pipeline import runner, spec
    run_of = {(subset_name(fraction, seed), seed): (fraction, seed) for fraction, seed in runs}
    out: dict[tuple[float, int], dict[str, dict]] = {k: {} for k in runs}
    for p in runner.plan(spec.load(path)):
        if (p.out / "metrics.json").is_file():
            metrics = json.loads((p.out / "metrics.json").read_text())
            c = p.step.combo
            for k in [run_of[(c["data.subset"], c["seed"])]] if c else out:
                out[k][p.step.group] = metrics
    return out


# -- the benchmark ----------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--size", type=int, default=64, help="pixels (224 and --litemedsam want a GPU)")
    ap.add_argument("--litemedsam", action="store_true", help="add the LiteMedSAM linear probe (0.2 s per image "
                                                              "forward at 64 px on 2 CPU cores)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), help="a subset of the arms (default: all)")
    ap.add_argument("--fractions", type=float, nargs="+", help="a subset of the label fractions (default: all)")
    per_dataset = ", ".join(f"{d.name} {d.pretrain_epochs} from ImageNet and {d.scratch_epochs} from scratch"
                            for d in DATASETS.values())
    ap.add_argument("--pretrain-epochs", type=int, help=f"every start's pretraining epochs (default: {per_dataset})")
    ap.add_argument("--no-fixmatch", action="store_true", help="leave out arm 5")
    ap.add_argument("--quick", action="store_true", help="one epoch per step, RESULTS.md left alone: checks "
                                                         "that the benchmark runs, its numbers mean nothing")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "scarce_labels",
                    help="kept between runs: a rerun reuses every finished step")
    args = ap.parse_args()
    from medalign.pipeline import history
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: this benchmark needs ../shared/data")
    arms = {k: a for k, a in ARMS.items() if (args.litemedsam or a.start != "litemedsam")
            and (not args.arms or k in args.arms)}
    work = args.work / f"{args.size}px{'-quick' if args.quick else ''}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "medalign.log"
    total = 0.0
    for name in args.datasets:
        ds = DATASETS[name]
        runs_before = len(history.read(work / "runs"))
        began = time.perf_counter()
        manifest = (chest_manifest if name == "chest" else breast_manifest)(work, args.seeds)
        rows = list(csv.DictReader(manifest.open()))
        fractions = [f for f in ds.fractions if not args.fractions or f in args.fractions]
        runs = {}  # (fraction, seed) -> labeled training images
        for fraction in fractions:
            for seed in args.seeds:
                subset = subset_name(fraction, seed)
                runs[(fraction, seed)] = sum(r["split"] == "train" and (subset is None or r[subset] == "1")
                                             for r in rows)
        path = pipeline(ds, manifest, runs, arms, args.size, work, quick=args.quick,
                        pretrain_epochs=args.pretrain_epochs)
        print(f"{path.name}: " + ", ".join(f"{f:.0%} seed {s}: {n} labeled" for (f, s), n in runs.items()), flush=True)
        medalign("run", path, log=log)
        # arm 5: FixMatch on the medalign arm with the best mean val AUROC at 10% labels
        measured = outputs(path, runs)
        ours = [a for a, arm in arms.items() if arm.group in (3, 4)]
        best = max(ours, key=lambda a: statistics.mean(
            measured[(FIXMATCH_AT, s)][f"ft-{slug(a)}"]["val"]["auroc"] for s in args.seeds)) \
            if ours and FIXMATCH_AT in fractions and not args.no_fixmatch else None
        if best:
            path = pipeline(ds, manifest, runs, arms, args.size, work, fixmatch=best, quick=args.quick,
                            pretrain_epochs=args.pretrain_epochs)
            print(f"{path.name}: FixMatch on {best}", flush=True)
            medalign("run", path, log=log)
            measured = outputs(path, runs)
        # the FixMatch pass finds the first pass's steps cached: a step (an output) counts once, as
        # computed if either pass computed it
        computed: dict[str, bool] = {}
        for record in history.read(work / "runs")[runs_before:]:
            for s in record["steps"]:
                computed[s["out"]] = computed.get(s["out"], False) or s["outcome"] in ("ran", "resumed")
        cached = (sum(computed.values()), len(computed) - sum(computed.values()))
        seconds = time.perf_counter() - began
        total += seconds
        last = name == args.datasets[-1] and args.datasets == list(DATASETS)
        write(ds, {"measured": measured, "labeled": runs, "fixmatch": best, "fractions": fractions}, arms, args,
              seconds, cached, total if last else None)


def write(ds: Dataset, r: dict, arms: dict[str, Arm], args, seconds: float, cached: tuple[int, int],
          total: float | None) -> None:
    """One dataset's section of RESULTS.md, so that a leg can be rerun alone (`--datasets breast`)."""
    from scipy.stats import spearmanr

    # the default section: every arm and fraction and seed of the dataset
    default = (args.seeds == [0, 1, 2] and not (args.arms or args.fractions or args.litemedsam or
                                                 args.pretrain_epochs or args.no_fixmatch) and args.size == 64)
    flags = shlex.join(sys.argv[1:])  # quoted: arm names hold spaces and commas
    # another setting gets its own section, so the default's stays whole
    heading = f"{HEADING}: {ds.title}" if default else f"## Scarce labels at {args.size} px, `{flags}`: {ds.title}"
    plot = PLOT.with_name(f"{PLOT.stem}_{ds.name}.png")
    measured = r["measured"]
    parts = [heading, "",
             f"Machine: {machine()}; "
             f"{time.strftime('%Y-%m-%d')}. `python benchmarks/scarce_labels.py {flags}` at {args.size} px, "
             f"1 channel. This leg: {seconds / 60:.0f} minutes; it computed {cached[0]} steps and took "
             f"{cached[1]} from the cache. "
             "Test AUROC: mean +- standard deviation over seeds, then per seed; Δ: the difference to arm 1 "
             "(scratch) on the same label subset, per seed; val AUROC: the selected epoch's, mean over seeds. "
             "Trainable parameters and fine-tuning seconds and peak memory (the process's resident set on the "
             "CPU) are the fine-tuning run's; a start's pretraining is shared by its arms and reported once below. "
             "k-NN: `estimate`'s k-NN AUROC (k 20, val) of the arm's frozen starting point on the same labeled "
             "subset, before any fine-tuning.", "", f"Published, same test set: {ds.published}", ""]
    verdicts, curves = [], {}
    names = [*arms, *([f"{r['fixmatch']} + FixMatch"] if r["fixmatch"] else [])]
    for fraction in r["fractions"]:
        n = r["labeled"][(fraction, args.seeds[0])]
        parts += [f"**{fraction:.0%} of the training labels** ({n} images at seed {args.seeds[0]}):", "",
                  "| arm | start | test AUROC | per seed | Δ vs arm 1 per seed | val AUROC | accuracy | "
                  "trainable | seconds | peak MiB | k-NN of start |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        knn, final = [], []
        base = [measured[(fraction, s)].get("test-scratch-full", {}).get("auroc") for s in args.seeds]
        for arm_name in names:
            ft, te = f"ft-{slug(arm_name)}", f"test-{slug(arm_name)}"
            got = [measured[(fraction, s)] for s in args.seeds if te in measured[(fraction, s)]]
            if not got:
                continue
            arm = arms.get(arm_name) or arms[r["fixmatch"]]
            au = [m[te]["auroc"] for m in got]
            k = statistics.mean(_knn(m["estimate"], arm.start) for m in got)
            if len(got) == len(args.seeds):
                knn.append(k)
                final.append(statistics.mean(au))
                curves.setdefault(arm_name, {})[fraction] = au
            f = got[0][ft]
            delta = ", ".join(f"{a - b:+.3f}" for a, b in zip(au, base)) if None not in base else ""
            parts.append(
                f"| {'5' if arm_name not in arms else arm.group}. {arm_name} | {STARTS[arm.start].label} | "
                f"{statistics.mean(au):.3f} +- {statistics.pstdev(au):.3f} | {', '.join(f'{a:.3f}' for a in au)} | "
                f"{delta if arm.group != 1 else ''} | {statistics.mean(m[ft]['val']['auroc'] for m in got):.3f} | "
                f"{statistics.mean(m[te]['accuracy'] for m in got):.3f} | "
                f"{f['trainable_params']:,} ({f['trainable_fraction']:.1%}) | "
                f"{statistics.mean(m[ft]['seconds'] for m in got):.0f} | "
                f"{max(m[ft]['peak_memory_mib'] for m in got):.0f} | {k:.3f} |")
        rho = spearmanr(knn, final).statistic if len(knn) > 2 else float("nan")
        parts += ["", f"Rank correlation (Spearman) between the start's k-NN AUROC and the arm's test AUROC "
                      f"over the {len(knn)} arms: {rho:+.2f}.", ""]
        verdicts += _verdicts(ds.name, fraction, measured, names, arms, args.seeds)
    pre = {k: v for k, v in measured[(r["fractions"][0], args.seeds[0])].items() if k.startswith("pretrain-")}
    if pre:
        parts += ["Continued pretraining (SimCLR, the pool's images, once per start): " + "; ".join(
            f"{k[len('pretrain-'):]} {m['seconds'] / 60:.1f} min, {m['img_per_s']:.0f} img/s, "
            f"peak {m['peak_memory_mib']:.0f} MiB" for k, m in pre.items()) + ".", ""]
    if default and total is not None:
        verdicts.append(f"The whole default benchmark on {os.cpu_count()} CPU cores in <= 90 minutes: "
                        f"{'met' if total <= 90 * 60 else f'missed by {total / 60 - 90:.0f} minutes'} "
                        f"({total / 60:.0f} minutes for both legs in this invocation).")
    if verdicts:
        parts += ["**Targets:**", "", *[f"- {v}" for v in verdicts], ""]
    if default:
        parts += [f"![AUROC against label fraction]({plot.name})", ""]
    section = "\n".join(parts)
    print(section)
    if not args.quick:
        if default:
            _plot(curves, ds.title, plot)
        update_section(heading, section, before=READING)


def _knn(estimate: dict, start: str) -> float:
    return next(c["knn_auroc"] for c in estimate["candidates"] if c["name"] == start)


def _verdicts(name: str, fraction: float, measured: dict, names: list[str], arms: dict[str, Arm], seeds) -> list[str]:
    """The issue's targets, each met or missed by how much."""
    def aurocs(arm_name):
        return [measured[(fraction, s)].get(f"test-{slug(arm_name)}", {}).get("auroc") for s in seeds]
    ours = {a: aurocs(a) for a in names if (arms.get(a) is None or arms[a].group >= 3) and None not in aurocs(a)}
    if not ours:
        return []
    best = max(ours, key=lambda a: statistics.mean(ours[a]))
    mean = statistics.mean(ours[best])
    rivals = [a for a in names if a in arms and arms[a].group in (1, 2) and None not in aurocs(a)]
    beaten = all(all(o > v for o, v in zip(ours[best], aurocs(a))) for a in rivals)
    goal = {("chest", 0.1): 0.98, ("chest", 0.01): 0.95}.get((name, fraction))
    out = []
    if goal is not None:
        out.append(f"{name} {fraction:.0%}: best medalign arm ({best}) mean {mean:.3f}, target >= {goal}: "
                   f"{'met' if mean >= goal else f'missed by {goal - mean:.3f}'}; above arms 1 and 2 on every seed: "
                   f"{'yes' if beaten else 'no'}.")
    if name == "breast" and fraction < 1 and all((1.0, s) in measured for s in seeds):
        full = statistics.mean(measured[(1.0, s)]["test-scratch-full"]["auroc"] for s in seeds)
        out.append(f"breast: best medalign arm at {fraction:.0%} labels ({best}) {mean:.3f} vs arm 1 with 100% "
                   f"{full:.3f}: {'met' if mean >= full else f'missed by {full - mean:.3f}'}.")
    return out


def _plot(curves: dict[str, dict[float, list[float]]], title: str, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for arm, points in curves.items():
        xs = sorted(points)
        ax.errorbar([100 * x for x in xs], [statistics.mean(points[x]) for x in xs],
                    yerr=[statistics.pstdev(points[x]) for x in xs], marker="o", capsize=3, label=arm)
    ax.set(xscale="log", xlabel="training labels (%)", ylabel="test AUROC", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)


if __name__ == "__main__":
    main()
