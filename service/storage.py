"""The artifact store: where finished jobs' files (and uploaded meshes) live until they expire.

A small interface with one implementation, a local directory (a shared volume in compose and Helm, so
the gateway serves what workers wrote). An S3-compatible store would implement the same four methods.
Artifacts are named by their path relative to the job, e.g. `grid.png` or `views/view_00.png`.
"""

from __future__ import annotations

import mimetypes
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

from service.jobs.records import Artifact

_MEDIA_TYPES = {
    ".png": "image/png",
    ".glb": "model/gltf-binary",
    ".json": "application/json",
    ".obj": "model/obj",
    ".ply": "application/octet-stream",
    ".txt": "text/plain",
}
INPUTS_DIR = "_inputs"  # uploaded files; never listed as artifacts


def media_type_for(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def safe_relative_name(name: str) -> str | None:
    """`name` as a clean relative POSIX path, or None if it could escape the job's folder."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or "\\" in name:
        return None
    return p.as_posix()


class ArtifactStore(Protocol):
    def put_tree(self, job_id: str, src_dir: Path) -> list[Artifact]:
        """Move every file under `src_dir` into the job's artifacts; returns them, sorted by name."""
        ...

    def put_input(self, job_id: str, name: str, data: bytes) -> str: ...

    def input_path(self, job_id: str, name: str) -> Path: ...

    def open(self, job_id: str, name: str) -> Path | None:
        """A readable local path of the artifact, or None when it does not exist."""
        ...

    def staging_dir(self) -> Path:
        """A fresh empty directory on the store's filesystem (so put_tree is a rename)."""
        ...

    def delete_expired(self, older_than_seconds: float) -> int: ...


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".staging").mkdir(exist_ok=True)

    def _job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def staging_dir(self) -> Path:
        path = self.root / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def put_tree(self, job_id: str, src_dir: Path) -> list[Artifact]:
        dest = self._job_dir(job_id)
        dest.mkdir(parents=True, exist_ok=True)
        artifacts = []
        for src in sorted(p for p in Path(src_dir).rglob("*") if p.is_file()):
            name = src.relative_to(src_dir).as_posix()
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            size = src.stat().st_size
            shutil.move(src, target)
            artifacts.append(Artifact(name=name, media_type=media_type_for(name), size_bytes=size))
        shutil.rmtree(src_dir, ignore_errors=True)
        return artifacts

    def put_input(self, job_id: str, name: str, data: bytes) -> str:
        path = self.input_path(job_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return name

    def input_path(self, job_id: str, name: str) -> Path:
        return self._job_dir(job_id) / INPUTS_DIR / PurePosixPath(name).name

    def open(self, job_id: str, name: str) -> Path | None:
        clean = safe_relative_name(name)
        if clean is None or clean.split("/")[0] == INPUTS_DIR:
            return None
        path = self._job_dir(job_id) / clean
        return path if path.is_file() else None

    def _dirs(self) -> Iterator[Path]:
        for parent in (self.root / "jobs", self.root / ".staging"):
            if parent.is_dir():
                yield from parent.iterdir()

    def delete_expired(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self._dirs():
            try:
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
