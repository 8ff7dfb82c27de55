"""`medalign cache list|prune`: the preprocessing cache ($MEDALIGN_CACHE/preprocess), which grows
with every new manifest, image size or window. No torch."""
from __future__ import annotations

import time

from medalign.errors import ConfigError, free_space, human


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list or prune the preprocessing cache ($MEDALIGN_CACHE/preprocess, "
                                     "default ~/.cache/medalign/preprocess)")
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    actions.add_parser("list", help="each entry's key, size, images, image size and last use; the total").set_defaults(
        func=_list)
    pr = actions.add_parser("prune", help="remove entries no stage used for DAYS days (and dead fills' temp files)")
    pr.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                    help="remove entries last used more than DAYS days ago (0: every entry but those being filled now)")
    pr.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    pr.set_defaults(func=_prune)


def _list(args) -> None:
    from medalign.data.preprocess_cache import default_root, entries

    root = default_root()
    found = entries(root)
    print(f"preprocessing cache {root}: {len(found)} entr{'y' if len(found) == 1 else 'ies'}")
    if found:
        print(f"  {'key':<16}  {'size':>9}  {'images':>6}  {'image':<11}  {'last used':<30}  state")
    for e in found:
        print(f"  {e['key'][:16]:<16}  {human(e['bytes']):>9}  {e['images'] if e['images'] is not None else '-':>6}  "
              f"{e['image_size'] or '-':<11}  {_when(e['last_used']):<30}  {e['state']}")
    print(f"total {human(sum(e['bytes'] for e in found))}; {free_space(root)} free there")


def _prune(args) -> None:
    from medalign.data.preprocess_cache import default_root, entries, prune

    if args.older_than < 0:
        raise ConfigError(f"--older-than: {args.older_than} is negative")
    root, cutoff = default_root(), time.time() - args.older_than * 86400
    found = entries(root)
    # "filling" entries are kept whatever their age: a run is writing them now
    keep = {e["key"] for e in found if e["last_used"] >= cutoff or e["state"] == "filling"}
    gone = set(prune(root, keep, dry_run=args.dry_run))
    verb = "would remove" if args.dry_run else "removed"
    freed = 0
    for e in found:
        size = sum(n for f, n in e["files"].items() if f in gone)
        if any(f in gone for f in e["files"]):
            freed += size
            print(f"{verb} {e['key'][:16]}  {human(size)}  last used {_when(e['last_used'])}  ({e['state']})")
    print(f"{'would free' if args.dry_run else 'freed'} {human(freed)} in {root}"
          + ("" if gone else f"; nothing last used more than {args.older_than:g} days ago"))


def _when(t: float) -> str:
    days = (time.time() - t) / 86400
    ago = f"{days:.0f} days ago" if days >= 2 else f"{days * 24:.0f} hours ago" if days * 24 >= 1 else "just now"
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(t))} ({ago})"
