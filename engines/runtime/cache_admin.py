"""Operating the engine cache: what is in it (`realiz3d engines list`) and dropping what is not needed
(`realiz3d engines prune`).

- An **entry** is a `<backend>/<label>-<key[:32]>/` folder with its manifest (`engine_cache.py`): its
  model, shape, step kind (`full`, or `shallow`: step caching's second graph; `-` for entries written
  before step kinds), precision and the library versions it was built with come from the manifest; its size
  is the bytes of its files; its last use is the folder's mtime (every hit touches it).
- **Stale**: an entry this install can never load (its key holds other versions of torch, onnx,
  onnxruntime or tensorrt, or another `CACHE_FORMAT`), or a folder with no readable manifest; a TensorRT
  timing cache of another TensorRT version. "This install" is the process running the command: run
  `engines prune --stale` where the worker runs (its image), or a gateway-only image would call every
  entry stale.
- **Prune** drops, in this order: stale entries (`--stale`), entries unused for longer than
  `--older-than`, then the least recently used until the cache fits `--max-size`. An entry being built
  right now (its lock held) is skipped. Build temp folders older than a day are swept too. Lock files
  stay (empty; deleting one under a waiting builder would let two processes build the same entry).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.runtime.engine_cache import (
    _STALE_TMP_SECONDS,
    EngineCache,
    cache_root,
    library_versions,
    read_manifest,
    stale_reason,
)

TIMING_CACHE = re.compile(r"^timing-trt(?P<version>[^-]+)-[0-9a-f]+\.cache$")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATIONS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: ONNX graph keys name their dtype (`float32`), TensorRT engine keys the precision (`fp16`)
_PRECISION_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass
class CacheItem:
    path: Path
    backend: str  # the cache folder: onnx | tensorrt
    kind: str  # entry | timing-cache
    label: str
    size: int
    last_used: float
    model: str | None = None
    shape: dict[str, int] | None = None
    precision: str | None = None
    weight_set: str | None = None
    step_kind: str | None = None  # full | shallow (step caching's two graphs per shape)
    versions: dict[str, str] = field(default_factory=dict)
    stale: str | None = None  # why this install can never load it; None: loadable

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def scan(root: str | Path | None = None, versions: dict[str, str] | None = None) -> list[CacheItem]:
    """Every entry and timing cache under the cache root, most recently used first."""
    root = cache_root(root)
    ours = versions if versions is not None else library_versions()
    items: list[CacheItem] = []
    if not root.is_dir():
        return items
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue  # locks and build temp folders
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue  # pruned by someone else meanwhile
            timing = TIMING_CACHE.match(path.name)
            if path.is_file():
                if timing is None:
                    continue
                version = timing.group("version")
                items.append(
                    CacheItem(
                        path,
                        folder.name,
                        "timing-cache",
                        "timing cache",
                        path.stat().st_size,
                        mtime,
                        versions={"tensorrt": version},
                        stale=None
                        if version == ours.get("tensorrt")
                        else f"TensorRT {version} (now {ours.get('tensorrt')})",
                    )
                )
                continue
            if not path.is_dir():
                continue
            manifest = read_manifest(path)
            label = path.name.rpartition("-")[0] or path.name
            if manifest is None:
                items.append(
                    CacheItem(
                        path,
                        folder.name,
                        "entry",
                        label,
                        _tree_size(path),
                        mtime,
                        stale="no readable manifest",
                    )
                )
                continue
            parts = manifest.get("parts") or {}
            info = manifest.get("info") or {}
            items.append(
                CacheItem(
                    path,
                    folder.name,
                    "entry",
                    manifest.get("label", label),
                    _tree_size(path),
                    mtime,
                    model=info.get("model"),
                    shape=parts.get("shape"),
                    precision=parts.get("precision"),
                    weight_set=parts.get("weight_set"),
                    step_kind=parts.get("step_kind"),
                    versions=dict(parts.get("versions") or {}),
                    stale=stale_reason(manifest, ours),
                )
            )
    items.sort(key=lambda i: -i.last_used)
    return items


def parse_size(text: str) -> int:
    """`20G`, `500M`, `1.5T`, `1024` (bytes; binary units)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if m is None:
        raise ValueError(f"not a size: {text!r} (e.g. 20G, 500M)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `2w`, `90m`, `3600` (seconds)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text.lower())
    if m is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 30d, 12h)")
    return float(m.group(1)) * _DURATIONS[m.group(2) or "s"]


def prune(
    root: str | Path | None = None,
    *,
    stale: bool = False,
    older_than_s: float | None = None,
    max_bytes: int | None = None,
    dry_run: bool = False,
    now: float | None = None,
    versions: dict[str, str] | None = None,
) -> tuple[list[tuple[CacheItem, str]], list[CacheItem]]:
    """Drop entries (see the module doc). Returns ([(removed item, why)], [items skipped: being built])."""
    root = cache_root(root)
    now = time.time() if now is None else now
    cache = EngineCache(root)
    items = scan(root, versions)
    removed: list[tuple[CacheItem, str]] = []
    busy: list[CacheItem] = []

    def drop(item: CacheItem, why: str) -> bool:
        if not dry_run:
            if item.kind == "timing-cache":
                with contextlib.suppress(FileNotFoundError):
                    item.path.unlink()
            elif not cache.discard(item.path):
                busy.append(item)
                return False
        removed.append((item, why))
        return True

    keep: list[CacheItem] = []
    for item in items:
        if stale and item.stale is not None:
            drop(item, f"stale: {item.stale}")
        elif older_than_s is not None and now - item.last_used > older_than_s:
            drop(item, f"unused for {_human_age(now - item.last_used)}")
        else:
            keep.append(item)
    if max_bytes is not None:
        total = sum(i.size for i in keep)
        for item in sorted(keep, key=lambda i: i.last_used):  # least recently used first
            if total <= max_bytes:
                break
            if drop(item, f"least recently used, cache over {human_size(max_bytes)}"):
                total -= item.size
    if not dry_run:
        _sweep_build_temps(root, now)
    return removed, busy


def _sweep_build_temps(root: Path, now: float) -> None:
    for folder in (p for p in root.iterdir() if p.is_dir()):
        for tmp in folder.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else os.unlink(tmp)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def describe(item: CacheItem, now: float | None = None) -> dict[str, str]:
    """The `engines list` row of one item."""
    now = time.time() if now is None else now
    shape = item.shape or {}
    short = {"onnxruntime": "ort", "tensorrt": "trt"}
    return {
        "backend": item.backend,
        "entry": item.path.name,
        "model": item.model or "-",
        "shape": f"{shape['num_views']}v {shape['height']}x{shape['width']}" if shape else "-",
        "kind": item.step_kind or "-",
        "precision": _PRECISION_NAMES.get(item.precision or "", item.precision or "-"),
        "versions": " ".join(f"{short.get(k, k)}={v}" for k, v in sorted(item.versions.items())) or "-",
        "size": human_size(item.size),
        "last used": f"{_human_age(max(0.0, now - item.last_used))} ago",
        "state": "ok" if item.stale is None else f"stale: {item.stale}",
    }
