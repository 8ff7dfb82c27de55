"""One self-contained HTML page per evaluation (and one across several): nothing fetched when it
opens, every figure embedded. It shows counts and metrics, never a patient's values: no paths, no
header fields, only the manifest columns named as subgroups, and images only with `thumbnails`."""
from __future__ import annotations

import csv
import html
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from medalign.report import figures

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.figs img{margin:.3em}
.note{color:#666;font-size:.9em}"""
HEADLINE = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro", "kappa", "mae", "ece", "brier")


def evaluation_page(run: Path, metrics: dict, cfg: dict, out: Path | None = None, *,
                    explanations: list[dict] | None = None, thumbnails: bool = False, card: dict | None = None) -> Path:
    """report.html for one evaluation: its metrics, its config and the run folder's predictions.csv."""
    classes = metrics["classes"]
    targets, probs = _predictions(run / "predictions.csv", classes)
    parts = [f"<h1>Evaluation on {html.escape(metrics['split'])}</h1>",
             f"<p class=note>medalign {html.escape(str((card or {}).get('versions', {}).get('medalign', '')))}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}; model {html.escape(Path(cfg['model']).name)}</p>",
             "<h2>Data</h2>", _data_table(metrics, card), "<h2>Metrics</h2>", _metrics_table(metrics)]
    op = metrics.get("operating_point")
    if op:
        parts.append(_operating_table(metrics))
    single = metrics["task"] != "multilabel"
    figs = []
    if single and targets is not None:
        figs += [figures.roc(targets, probs, classes), figures.precision_recall(targets, probs, classes)]
    if "confusion_matrix" in metrics:
        figs.append(figures.confusion(metrics["confusion_matrix"]["rows_true_cols_pred"], classes))
    if metrics.get("reliability"):
        figs.append(figures.reliability(metrics["reliability"]))
    parts += ["<h2>Curves and calibration</h2><div class=figs>",
              *[f'<img alt="figure" src="{uri}">' for uri in figs], "</div>"]
    if metrics.get("subgroups"):
        parts += ["<h2>Subgroups</h2>", _subgroups(metrics["subgroups"])]
    if explanations:
        how = explanations[0]["method"]
        parts += [f"<h2>Where the model looked ({html.escape(how)})</h2>",
                  "<p class=note>Correct and wrong cases of each class" +
                  ("" if thumbnails else "; maps only, without the images (report.thumbnails=true shows them)") +
                  ".</p>", f'<img alt="explanation maps" src="{figures.maps(explanations)}">']
    if card:
        parts += ["<h2>Model card</h2>", _card(card)]
    return _write(out or run / "report.html", f"Evaluation: {metrics['split']}", parts)


def comparison_page(runs: list[Path], out: Path, paired: dict | None = None) -> Path:
    """One page across evaluations: a row per run; `paired` adds differences with their intervals."""
    rows = []
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        rows.append("<tr><td>" + html.escape(run.parent.name + "/" + run.name) + "</td>" + "".join(
            f"<td>{_value(m, k)}</td>" for k in HEADLINE if k in m) + "</tr>")
    first = json.loads((runs[0] / "metrics.json").read_text())
    head = "<tr><th>run</th>" + "".join(f"<th>{k}</th>" for k in HEADLINE if k in first) + "</tr>"
    parts = ["<h1>Comparison</h1>", f"<table>{head}{''.join(rows)}</table>"]
    if paired:
        parts += ["<h2>Paired differences (same rows, same resampled patients)</h2><table>"
                  "<tr><th>A minus B</th><th>metric</th><th>difference</th><th>95% interval</th></tr>",
                  *[f"<tr><td>{html.escape(p['a'])} - {html.escape(p['b'])}</td><td>{p['metric']}</td>"
                    f"<td>{p['value']:+.3f}</td><td>{_interval(p.get('interval'))}</td></tr>" for p in paired["rows"]],
                  "</table>"]
    return _write(out, "Comparison", parts)


# -- pieces --------------------------------------------------------------------------------------

def _predictions(path: Path, classes: list[str]):
    if not path.is_file():
        return None, None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    if not rows or "label" not in rows[0] or any(r["label"] not in classes for r in rows):
        return None, probs
    return np.array([classes.index(r["label"]) for r in rows]), probs


def _data_table(metrics: dict, card: dict | None) -> str:
    lines = [f"<tr><td>{html.escape(metrics['split'])} images scored</td><td>{metrics['n']}</td></tr>",
             f"<tr><td>rows skipped (unreadable)</td><td>{metrics.get('skipped_rows', 0)}</td></tr>"]
    for c, n in (metrics.get("support") or {}).items():
        lines.append(f"<tr><td>&nbsp;&nbsp;{html.escape(c)}</td><td>{n}</td></tr>")
    data = (card or {}).get("data") or {}
    for split, counts in data.get("counts", {}).items():
        text = ", ".join(f"{html.escape(k or '(no label)')} {v}" for k, v in counts.items())
        lines.append(f"<tr><td>manifest: {html.escape(split)}</td><td>{text}</td></tr>")
    if data.get("fingerprint"):
        lines.append(f"<tr><td>manifest fingerprint</td><td><code>{data['fingerprint'][:16]}</code></td></tr>")
    return "<table>" + "".join(lines) + "</table>"


def _metrics_table(metrics: dict) -> str:
    b = metrics.get("bootstrap") or {}
    note = (f"<p class=note>{int(b.get('level', 0.95) * 100)}% intervals: {b['resamples']} bootstrap resamples of "
            f"{b['groups']} {'patients' if b.get('unit') != 'image' else 'images'} (seed {b['seed']}).</p>"
            if b else "")
    rows = "".join(f"<tr><td>{k}</td><td>{_value(metrics, k)}</td><td>{_interval(metrics.get('intervals', {}).get(k))}"
                   "</td></tr>" for k in HEADLINE if k in metrics)
    return f"<table><tr><th>metric</th><th>value</th><th>interval</th></tr>{rows}</table>{note}"


def _operating_table(metrics: dict) -> str:
    out = []
    for key, title in (("operating_point", "operating point chosen on validation"), ("at_threshold", "given threshold")):
        p = metrics.get(key)
        if not p:
            continue
        how = f"{p.get('rule', 'threshold')} {p.get('target') or ''}".strip()
        iv = p.get("intervals", {})
        out.append(f"<tr><td>{title} ({html.escape(how)}, t = {p['threshold']:.3f})</td>" + "".join(
            f"<td>{_fmt(p.get(k))} {_interval(iv.get(k))}</td>" for k in ("sensitivity", "specificity", "ppv", "npv"))
            + "</tr>")
    return ("<table><tr><th>binary decision</th><th>sensitivity</th><th>specificity</th><th>PPV</th><th>NPV</th></tr>"
            + "".join(out) + "</table>")


def _subgroups(subgroups: dict) -> str:
    parts = []
    for column, s in subgroups.items():
        rows = []
        for value, m in s["values"].items():
            if "too_few" in m:
                rows.append(f"<tr><td>{html.escape(value)}</td><td>{m['n']}</td><td colspan=4>{html.escape(m['too_few'])}"
                            "</td></tr>")
            else:
                rows.append(f"<tr><td>{html.escape(value)}</td><td>{m['n']}</td>" + "".join(
                    f"<td>{_fmt(m.get(k))} {_interval(m.get('intervals', {}).get(k))}</td>"
                    for k in ("auroc", "accuracy", "sensitivity", "specificity")) + "</tr>")
        gaps = "; ".join(f"{k.replace('_', ' ')} {_fmt(g['value'])} {_interval(g.get('interval'))}"
                         for k, g in s.get("gaps", {}).items() if g.get("value") is not None)
        parts.append(f"<h3>{html.escape(column)}</h3><table><tr><th>value</th><th>n</th><th>AUROC</th><th>accuracy</th>"
                     f"<th>sensitivity</th><th>specificity</th></tr>{''.join(rows)}</table>"
                     + (f"<p>Gaps: {gaps}</p>" if gaps else ""))
    return "".join(parts)


def _card(card: dict) -> str:
    start = card.get("starting_point") or {}
    rows = [("Intended use", card.get("intended_use")),
            ("Training data", card.get("training_data")),
            ("Label source", card.get("label_source")),
            ("Starting weights", ", ".join(f"{k} {v}" for k, v in start.items() if k in ("name", "package", "version",
                                                                                         "licence")) or "random init"),
            ("Architecture", card.get("architecture")),
            ("Adapter", card.get("adapter")),
            ("Training config", f"<pre>{html.escape(card.get('training_config', ''))}</pre>"),
            ("Library versions", ", ".join(f"{k} {v}" for k, v in (card.get("versions") or {}).items())),
            ("Known limitations", "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in card.get("limitations", []))
             + "</ul>")]
    return "<table>" + "".join(
        f"<tr><th>{k}</th><td style='text-align:left'>{v if k in ('Training config', 'Known limitations') else html.escape(str(v or '-'))}</td></tr>"
        for k, v in rows) + "</table>"


def _value(m: dict, k: str) -> str:
    return _fmt(m.get(k))


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _interval(iv) -> str:
    return f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else ""


def _write(out: Path, title: str, parts: list[str]) -> Path:
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def counts_by_split(manifest_rows: list[dict]) -> dict:
    counts: dict[str, Counter] = {}
    for r in manifest_rows:
        counts.setdefault(r.get("split", ""), Counter())[r.get("label", "")] += 1
    return {s: dict(sorted(c.items())) for s, c in counts.items()}
