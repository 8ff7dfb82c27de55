"""`medalign weights`: the named offline starting points, whether installed, and where they come from.

No torch: the registry is data, and "installed" is whether the package's module can be found.
"""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("weights", help="list the named offline starting points (backbone.weights=NAME)")
    p.add_argument("--json", action="store_true", help="one JSON list instead of text")
    p.set_defaults(func=_list)


def _list(args) -> None:
    from medalign.models.weights import STARTS

    rows = [{"name": name, "installed": src.installed(), "licence": src.licence, "size_mb": src.size_mb,
             "model": src.model, "package": src.package} for name, src in STARTS.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "installed" if r["installed"] else "not installed"
        print(f"{r['name']:<{width}}  {state:<13}  {r['licence']:<10}  {r['size_mb']:>5.1f} MB  "
              f"{r['model']:<22}  pip install {r['package']}")
