"""The compiled-engine cache: ONNX graphs and TensorRT engines, one entry per fused weight set and shape.

Layout under the cache root (`REALIZ3D_ENGINE_CACHE_DIR`, `--engine-cache`, else
`~/.cache/realiz3d/engines`):

    <backend>/<label>-<key[:32]>/          one entry: the artifact file(s) + manifest.json
    <backend>/.<label>-<key[:32]>.lock     flock()ed while someone builds that entry
    <backend>/.tmp-*                       an entry being built (never read)

- **Key**: sha256 over everything that changes the artifact: base UNet weights, adapter weights, the UNet
  and Domain Shifter configs, the domain combo, backend, precision, shapes (views, batch profile, size),
  library versions (torch, onnx, onnxruntime, tensorrt), the device name and `CACHE_FORMAT` (bumped when
  the export code changes what it writes).
- **Atomic**: an entry is built in a temp directory under the same root, its manifest (sha256 and size
  of every file) written last, then the directory is renamed into place. Readers never see a half-written
  entry; a crashed build leaves only a `.tmp-*` directory, which later builds sweep.
- **Concurrency**: building takes an exclusive `flock` on the entry's lock file, then looks again: a
  second process that wanted the same entry waits, finds it built, and loads it (a hit).
- **Stale / corrupt**: an entry whose manifest is missing or unreadable, whose key differs, or whose files'
  sizes or sha256 do not match is moved aside and rebuilt, never loaded and never crashed on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Bump when an exporter or builder changes what it writes for the same inputs.
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
_STALE_TMP_SECONDS = 24 * 3600


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "realiz3d" / "engines"


def library_versions() -> dict[str, str]:
    """Versions of every library that shapes an artifact (absent ones recorded as 'absent')."""
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
    unet_cfg = dict(model.unet.unet.config)
    return {
        "base_weights": hash_tensors(model.unet.state_dict()),
        "adapter_weights": hash_tensors(shifter.adapter_state_dict()),
        "unet_config": hashlib.sha256(json.dumps(unet_cfg, sort_keys=True, default=str).encode()).hexdigest(),
        "shifter_config": hashlib.sha256(shifter.config.model_dump_json().encode()).hexdigest(),
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
    payload = json.dumps({"cache_format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class CacheEntry:
    path: Path  # the entry directory
    key: str
    hit: bool  # True: loaded as built earlier; False: built by this call
    build_seconds: float = 0.0

    def file(self, name: str) -> Path:
        return self.path / name


class EngineCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

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
                return "key mismatch"
            for name, meta in files.items():
                f = entry / name
                if not f.is_file():
                    return f"{name} missing"
                if f.stat().st_size != meta["size"]:
                    return f"{name} has the wrong size"
                if _sha256_file(f) != meta["sha256"]:
                    return f"{name} checksum mismatch"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"unreadable manifest ({e})"
        return None

    def lookup(self, backend: str, label: str, key: str) -> CacheEntry | None:
        entry = self.entry_dir(backend, label, key)
        if entry.is_dir() and self.validate(entry, key) is None:
            return CacheEntry(entry, key, hit=True)
        return None

    # ---- build -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, backend: str, label: str, key: str) -> Iterator[None]:
        folder = self.root / backend
        folder.mkdir(parents=True, exist_ok=True)
        lock_path = folder / f".{label}-{key[:32]}.lock"
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def get_or_build(
        self,
        backend: str,
        label: str,
        parts: Mapping[str, Any],
        build: Callable[[Path], None],
    ) -> CacheEntry:
        """The entry for `parts`, building it with `build(tmp_dir)` (which writes the artifact files
        into tmp_dir) when it is missing, stale or corrupt. Safe across threads and processes."""
        key = cache_key(parts)
        hit = self.lookup(backend, label, key)
        if hit is not None:
            return hit
        with self._locked(backend, label, key):
            entry = self.entry_dir(backend, label, key)
            if entry.is_dir():
                problem = self.validate(entry, key)
                if problem is None:  # another process built it while we waited for the lock
                    return CacheEntry(entry, key, hit=True)
                log.warning("engine cache entry %s is unusable (%s); rebuilding", entry, problem)
                self._discard(entry)
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
                manifest = {
                    "key": key,
                    "label": label,
                    "backend": backend,
                    "parts": dict(parts),
                    "files": files,
                    "created": time.time(),
                    "build_seconds": round(time.perf_counter() - t0, 3),
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
                for f in tmp.iterdir():  # data on disk before the rename makes the entry visible
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                os.replace(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return CacheEntry(entry, key, hit=False, build_seconds=time.perf_counter() - t0)

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
