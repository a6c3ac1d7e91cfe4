"""The compiled-engine cache: ONNX graphs and TensorRT engines, one entry per fused weight set, shape and
step kind.

Layout under the cache root (`cache_root()`: `--engine-cache`, else `$REALIZ3D_ENGINE_CACHE_DIR`, else
`$REALIZ3D_HOME/engines`, else `~/.cache/realiz3d/engines`; the same rule for every entry point):

    <backend>/<label>-<key[:32]>/          one entry: the artifact file(s) + manifest.json
    <backend>/.<label>-<key[:32]>.lock     flock()ed while someone builds that entry
    <backend>/.tmp-*                       an entry being built (never read)

- **Key**: sha256 over everything that changes the artifact: base UNet weights, adapter weights, the UNet
  and Domain Shifter configs, the domain combo, the step kind (`full` or `shallow`: step caching's two
  graphs, onnx_export.py), backend, precision, shapes (views, batch profile, size),
  library versions (torch, onnx, onnxruntime, tensorrt), the device name and `CACHE_FORMAT` (bumped when
  the export code changes what it writes).
- **Atomic**: an entry is built in a temp directory under the same root, its manifest (sha256 and size
  of every file) written last, then the directory is renamed into place. Readers never see a half-written
  entry; a crashed build leaves only a `.tmp-*` directory, which later builds sweep.
- **Concurrency**: building takes an exclusive `flock` on the entry's lock file, then looks again: a
  second process that wanted the same entry waits, finds it built, and loads it (a hit).
- **Stale / corrupt**: an entry whose manifest is missing or unreadable, whose key differs, or whose files'
  sizes or sha256 do not match is moved aside and rebuilt, never loaded and never crashed on. Entries
  written by other library versions (torch, onnx, onnxruntime, tensorrt) or another `CACHE_FORMAT` have
  other keys, so they are never loaded; a miss that finds such siblings logs them as stale (once per label
  and process) and counts them. `realiz3d engines list|prune` (`cache_admin.py`) shows and removes them.
- **Counted**: every lookup is a hit or a miss, every build's seconds are kept (`STATS`, and listeners:
  the worker feeds them to Prometheus, `service/metrics.py`). A hit marks the entry used (its directory's
  mtime), which `engines prune --older-than` reads.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Bump when an exporter or builder changes what it writes for the same inputs, or how keys are made
#: (2: canonical configs; format-1 keys hashed diffusers' per-process-ordered `_use_default_values`;
#: 3: a step kind per graph and engine, the full graph also outputs the deep feature of step caching).
CACHE_FORMAT = 3
MANIFEST = "manifest.json"
_STALE_TMP_SECONDS = 24 * 3600
#: the cache root's env var (service.settings.Settings.engine_cache_dir reads the same name)
ENGINE_CACHE_ENV = "REALIZ3D_ENGINE_CACHE_DIR"
#: the root of every realiz3d cache (models, datasets, engines)
HOME_ENV = "REALIZ3D_HOME"


def cache_root(explicit: str | Path | None = None) -> Path:
    """The engine cache root, one rule for every entry point (generate, texture, build-engines, serve,
    worker, the benchmarks): `explicit` (`--engine-cache`, or the worker's settings), else
    `$REALIZ3D_ENGINE_CACHE_DIR`, else `$REALIZ3D_HOME/engines`, else `$XDG_CACHE_HOME/realiz3d/engines`
    (`~/.cache/realiz3d/engines`). An absolute path: a relative one is taken from the current directory
    once, here, so a later chdir cannot move it."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(ENGINE_CACHE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    home = os.environ.get(HOME_ENV)
    if home:
        return (Path(home).expanduser() / "engines").absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return (Path(base) / "realiz3d" / "engines").absolute()


def default_cache_dir() -> Path:
    """The root without an explicit folder (`cache_root(None)`)."""
    return cache_root(None)


# ---- canonical form: what a key is hashed from -----------------------------------------------------------
def canonical(value: Any, where: str = "value") -> Any:
    """`value` as plain JSON data that is the same in every process: mappings with sorted string keys and
    no private (`_`-prefixed) fields, tuples and lists as lists, strings, finite numbers, booleans, None;
    paths and enums by their value. Anything else (sets, objects whose repr may carry an address or a
    per-process order) raises TypeError: a key must never hash something unstable."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a finite number")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            if k.startswith("_"):
                continue  # private: diffusers' _use_default_values, _class_name, _diffusers_version, ...
            out[k] = canonical(v, f"{where}.{k}")
        return dict(sorted(out.items()))
    if isinstance(value, list | tuple):
        return [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return canonical(value.value, where)
    raise TypeError(f"{where}: a {type(value).__name__} object has no canonical form")


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_hash(value: Any) -> str:
    """sha256 of `canonical(value)`: the same in every process for the same inputs."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of every library that shapes an artifact (absent ones recorded as 'absent')."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "tensorrt"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "unknown"))
        except Exception:  # noqa: BLE001 - a broken optional install counts as absent
            versions[name] = "absent"
    return versions


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda:{props.name}:sm{props.major}{props.minor}"
    return f"cpu:{platform.machine()}:{platform.processor() or 'unknown'}"


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state dict (order independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        t = t.to("cpu").contiguous()
        # bytes of any dtype (bf16 has no numpy equivalent): view as uint8
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: Any) -> dict[str, str]:
    """Hashes of a `Realiz3DModel`'s base UNet weights, adapter weights and configs.

    Base weights are read with the Domain Shifter deactivated (a fused weight set swapped in would
    otherwise be hashed as the base). Costs one pass over the weights: compute once per runner.
    """
    shifter = model.shifter
    shifter.deactivate()
    return {
        "base_weights": hash_tensors(model.unet.state_dict()),
        "adapter_weights": hash_tensors(shifter.adapter_state_dict()),
        # canonical: diffusers' config holds _use_default_values, ordered by per-process string hashing
        "unet_config": canonical_hash(dict(model.unet.unet.config)),
        "shifter_config": canonical_hash(shifter.config.model_dump(mode="json")),
        "wrapper": f"geometry={model.unet.geometry_channels},patch={model.unet.patch_size},"
        f"multiview={model.config.multiview_attention}",
    }


def write_atomic(path: Path, data: bytes) -> None:
    """Write `path` so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 of the canonical `parts` and `CACHE_FORMAT`: a pure function of the artifact's inputs."""
    return canonical_hash({"cache_format": CACHE_FORMAT, **parts})


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---- counting: hits, misses, builds, stale entries --------------------------------------------------------
#: listener(event, backend, seconds): event "hit", "miss", "built" (seconds: the build's), "stale"
#: (seconds: 0; one per stale entry found); backend: the cache folder, "onnx" (graphs) or "tensorrt"
CacheListener = Callable[[str, str, float], None]


class CacheStats:
    """Process-wide counts of every `EngineCache` lookup, per backend folder, plus listeners (the worker's
    Prometheus metrics). Thread-safe."""

    EVENTS = ("hits", "misses", "builds", "stale")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}
        self.build_seconds: dict[str, float] = {}
        self._listeners: list[CacheListener] = []

    def add_listener(self, listener: CacheListener) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def remove_listener(self, listener: CacheListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def record(self, event: str, backend: str, seconds: float = 0.0) -> None:
        name = {"hit": "hits", "miss": "misses", "built": "builds", "stale": "stale"}[event]
        with self._lock:
            counts = self._counts.setdefault(backend, dict.fromkeys(self.EVENTS, 0))
            counts[name] += 1
            if event == "built":
                self.build_seconds[backend] = self.build_seconds.get(backend, 0.0) + seconds
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event, backend, seconds)
            except Exception:  # noqa: BLE001 - a metrics hook must never fail a build or a load
                log.exception("engine cache listener failed")

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {b: dict(c) for b, c in self._counts.items()}


STATS = CacheStats()


@dataclass
class CacheEntry:
    path: Path  # the entry directory
    key: str
    hit: bool  # True: loaded as built earlier; False: built by this call
    build_seconds: float = 0.0

    def file(self, name: str) -> Path:
        return self.path / name


def stale_reason(manifest: Mapping[str, Any], versions: Mapping[str, str] | None = None) -> str | None:
    """Why an entry with this manifest can never be a hit in this install (None: it can): written by
    other library versions or another cache format. Such an entry is never loaded (its key differs)."""
    fmt = manifest.get("cache_format", 1)
    if fmt != CACHE_FORMAT:
        return f"cache format {fmt} (this install writes {CACHE_FORMAT})"
    parts = manifest.get("parts") or {}
    theirs = parts.get("versions") or {}
    ours = dict(versions) if versions is not None else library_versions()
    changed = [
        f"{lib} {theirs.get(lib, 'absent')} (now {ours[lib]})" for lib in ours if theirs.get(lib) != ours[lib]
    ]
    changed += [f"{lib} {theirs[lib]} (now absent)" for lib in theirs if lib not in ours]
    return ("built with " + ", ".join(changed)) if changed else None


def read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


class EngineCache:
    def __init__(self, root: str | Path | None = None, stats: CacheStats | None = None) -> None:
        self.root = cache_root(root)
        self.stats = stats or STATS
        self._stale_reported: set[tuple[str, str]] = set()

    # ---- lookup ------------------------------------------------------------------------------------
    def entry_dir(self, backend: str, label: str, key: str) -> Path:
        return self.root / backend / f"{label}-{key[:32]}"

    def validate(self, entry: Path, key: str) -> str | None:
        """None if `entry` is complete and intact for `key`, else why not."""
        manifest_path = entry / MANIFEST
        if not manifest_path.is_file():
            return "no manifest"
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
            if manifest.get("key") != key:
                stale = stale_reason(manifest)
                return f"stale: {stale}" if stale else "key mismatch"
            for name, meta in files.items():
                f = entry / name
                if not f.is_file():
                    return f"{name} missing"
                if f.stat().st_size != meta["size"]:
                    return f"{name} has the wrong size"
                if _sha256_file(f) != meta["sha256"]:
                    return f"{name} checksum mismatch"
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"unreadable manifest ({e})"
        return None

    def lookup(self, backend: str, label: str, key: str) -> CacheEntry | None:
        """The intact entry for `key`, or None. Not counted (`get_or_build` counts)."""
        entry = self.entry_dir(backend, label, key)
        if entry.is_dir() and self.validate(entry, key) is None:
            return CacheEntry(entry, key, hit=True)
        return None

    def _hit(self, backend: str, entry: CacheEntry) -> CacheEntry:
        # the entry's last use, read by `engines prune --older-than` (a read-only cache keeps none)
        with contextlib.suppress(OSError):
            os.utime(entry.path)
        self.stats.record("hit", backend)
        return entry

    def stale_entries(self, backend: str, label: str) -> list[tuple[Path, str]]:
        """Entries of `label` (same weight set and shape) that this install can never load: written by
        other library versions or another cache format, with why."""
        found = []
        for entry in sorted((self.root / backend).glob(f"{label}-*")):
            rest = entry.name[len(label) + 1 :]
            if not entry.is_dir() or len(rest) != 32 or "-" in rest:
                continue  # another label that merely starts with this one (e.g. "...-fp16-strong")
            manifest = read_manifest(entry)
            reason = "no readable manifest" if manifest is None else stale_reason(manifest)
            if reason is not None:
                found.append((entry, reason))
        return found

    def _report_stale(self, backend: str, label: str) -> None:
        """Said once per label and process: entries of other versions exist and are not loaded."""
        if (backend, label) in self._stale_reported:
            return
        self._stale_reported.add((backend, label))
        for entry, reason in self.stale_entries(backend, label):
            self.stats.record("stale", backend)
            log.warning(
                "engine cache: stale entry %s (%s) is not loaded; `realiz3d engines prune --stale` removes it",
                entry,
                reason,
            )

    # ---- build -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, backend: str, label: str, key: str, wait: bool = True) -> Iterator[bool]:
        """Holds the entry's build lock; yields False (not holding it) when `wait` is False and another
        process holds it."""
        folder = self.root / backend
        folder.mkdir(parents=True, exist_ok=True)
        lock_path = folder / f".{label}-{key[:32]}.lock"
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def get_or_build(
        self,
        backend: str,
        label: str,
        parts: Mapping[str, Any],
        build: Callable[[Path], None],
        info: Mapping[str, Any] | None = None,
    ) -> CacheEntry:
        """The entry for `parts`, building it with `build(tmp_dir)` (which writes the artifact files
        into tmp_dir) when it is missing, stale or corrupt. Safe across threads and processes. Counted in
        `self.stats`: a hit, or a miss (then the build and its seconds). `info`: descriptive fields kept
        in the manifest for `realiz3d engines list` (the model's name), not part of the key."""
        key = cache_key(parts)
        hit = self.lookup(backend, label, key)
        if hit is not None:
            return self._hit(backend, hit)
        with self._locked(backend, label, key):
            entry = self.entry_dir(backend, label, key)
            if entry.is_dir():
                problem = self.validate(entry, key)
                if problem is None:  # another process built it while we waited for the lock
                    return self._hit(backend, CacheEntry(entry, key, hit=True))
                log.warning("engine cache entry %s is unusable (%s); rebuilding", entry, problem)
                self._discard(entry)
            self.stats.record("miss", backend)
            self._report_stale(backend, label)
            self._sweep_tmp(entry.parent)
            t0 = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
            try:
                build(tmp)
                files = {
                    f.name: {"size": f.stat().st_size, "sha256": _sha256_file(f)}
                    for f in sorted(tmp.iterdir())
                    if f.is_file()
                }
                if not files:
                    raise RuntimeError(f"building {label} wrote no file")
                seconds = time.perf_counter() - t0
                manifest = {
                    "key": key,
                    "cache_format": CACHE_FORMAT,
                    "label": label,
                    "backend": backend,
                    "parts": canonical(dict(parts)),
                    "info": canonical(dict(info or {})),
                    "files": files,
                    "created": time.time(),
                    "build_seconds": round(seconds, 3),
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
                for f in tmp.iterdir():  # data on disk before the rename makes the entry visible
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                os.replace(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self.stats.record("built", backend, seconds)
            return CacheEntry(entry, key, hit=False, build_seconds=seconds)

    def discard(self, entry: Path) -> bool:
        """Remove `entry` unless someone is building it now (then False). Readers that already opened
        its files keep them (POSIX); later lookups miss and rebuild."""
        label, _, short = entry.name.rpartition("-")
        with self._locked(entry.parent.name, label, short, wait=False) as held:
            if not held:
                return False
            if entry.exists():
                self._discard(entry)
            return True

    def _discard(self, entry: Path) -> None:
        aside = entry.with_name(f".tmp-stale-{entry.name}-{os.getpid()}")
        os.replace(entry, aside)  # atomic: readers see the old entry or none
        shutil.rmtree(aside, ignore_errors=True)

    def _sweep_tmp(self, folder: Path) -> None:
        now = time.time()
        for p in folder.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(p, ignore_errors=True)
