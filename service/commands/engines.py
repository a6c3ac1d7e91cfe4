"""`realiz3d engines list|prune`: the compiled-engine cache, operated; and the `--engine-cache` flag every
command that builds or loads engines shares (one cache root rule)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ENGINE_CACHE_HELP = (
    "compiled-engine cache folder (default: $REALIZ3D_ENGINE_CACHE_DIR, else $REALIZ3D_HOME/engines, "
    "else ~/.cache/realiz3d/engines; the same rule for generate, texture, build-engines, serve, worker "
    "and the benchmarks)"
)


def add_engine_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine-cache", type=Path, default=None, help=ENGINE_CACHE_HELP)


def engine_cache_dir(arg: Path | None) -> Path:
    """The cache root for a command: `--engine-cache`, else the settings' `engine_cache_dir`
    (`REALIZ3D_ENGINE_CACHE_DIR`), else `engine_cache.cache_root`'s defaults. Read fresh, not from the
    process-wide settings cache, so a command sees the environment it runs in."""
    from engines.runtime.engine_cache import cache_root
    from service.settings import Settings

    return cache_root(arg if arg is not None else Settings().engine_cache_dir)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "engines",
        help="the compiled-engine cache: list entries, prune old, oversized or stale ones",
        description="List or prune the engine cache (ONNX graphs, TensorRT engines and timing caches). "
        "Stale = built with other library versions than this install's (never loaded): run where the "
        "worker runs.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = verbs.add_parser(
        "list",
        help="entries: model, shape, step kind (full/shallow), backend, precision, versions, size, last use, state",
        description="Every entry of the engine cache, most recently used first.",
    )
    add_engine_cache_arg(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per entry, one per line")
    ls.set_defaults(handler=run_list)

    pr = verbs.add_parser(
        "prune",
        help="drop stale entries, entries unused for a while, or the least recently used over a size",
        description="Drop entries: --stale (other library versions or cache format, never loaded), "
        "--older-than (unused for longer), --max-size (least recently used first until it fits). At least "
        "one is needed. Entries being built now are skipped.",
    )
    add_engine_cache_arg(pr)
    pr.add_argument(
        "--stale", action="store_true", help="entries of other torch/onnx/onnxruntime/tensorrt versions"
    )
    pr.add_argument(
        "--older-than", default=None, metavar="AGE", help="unused for longer than AGE: 30d, 12h, 90m"
    )
    pr.add_argument("--max-size", default=None, metavar="SIZE", help="keep at most SIZE: 20G, 500M")
    pr.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    pr.set_defaults(handler=run_prune)


def run_list(args: argparse.Namespace) -> int:
    from engines.runtime.cache_admin import describe, human_size, scan

    root = engine_cache_dir(args.engine_cache)
    items = scan(root)
    now = time.time()
    if args.json:
        for item in items:
            print(json.dumps({**item.as_dict(), "last_used_seconds_ago": round(now - item.last_used, 1)}))
        return 0
    rows = [describe(item, now) for item in items]
    if rows:
        cols = list(rows[0])
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
        print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in cols).rstrip())
    stale = sum(i.stale is not None for i in items)
    total = sum(i.size for i in items)
    print(f"{len(items)} entries, {human_size(total)} in {root}" + (f" ({stale} stale)" if stale else ""))
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from engines.errors import UserInputError
    from engines.runtime.cache_admin import human_size, parse_duration, parse_size, prune

    if not (args.stale or args.older_than or args.max_size):
        raise UserInputError("engines prune: give --stale, --older-than AGE and/or --max-size SIZE")
    try:
        older = parse_duration(args.older_than) if args.older_than else None
        size = parse_size(args.max_size) if args.max_size else None
    except ValueError as e:
        raise UserInputError(str(e)) from None
    root = engine_cache_dir(args.engine_cache)
    removed, busy = prune(root, stale=args.stale, older_than_s=older, max_bytes=size, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for item, why in removed:
        print(f"{verb} {item.backend}/{item.path.name} ({human_size(item.size)}): {why}")
    for item in busy:
        print(f"skipped {item.backend}/{item.path.name}: being built now")
    freed = sum(i.size for i, _ in removed)
    print(f"{verb} {len(removed)} entries, {human_size(freed)}, from {root}")
    return 0
