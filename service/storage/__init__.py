"""The artifact store: where finished jobs' files (and uploaded meshes) live until they expire.

Two implementations of one small interface: `LocalArtifactStore` (a directory; the default for one
machine, or a ReadWriteMany volume) and `S3ArtifactStore` (any S3-compatible object store: AWS S3, MinIO,
GCS's S3 API), chosen by `REALIZ3D_ARTIFACT_STORE`. Artifacts are named by their path relative to the
job, e.g. `grid.png` or `views/view_00.png`.

Every run of a job (attempt) writes its files under its own prefix, `jobs/{id}/runs/{attempt}/`, and the
gateway serves those of the attempt the job record names. So a run only "promotes" its files by winning
`JobStore.finish()`; a run that lost its job (its worker was presumed dead and the job re-ran elsewhere)
never mixes its files into the winner's, and its own are deleted.

Runs write into a local staging directory first, named `{job_id}.{attempt}`; `sweep_staging()` removes
those whose run is over (a worker killed mid-job leaves one behind).
"""

from __future__ import annotations

import logging
import mimetypes
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from service.jobs.records import Artifact
from service.settings import Settings

log = logging.getLogger("realiz3d.storage")

_MEDIA_TYPES = {
    ".png": "image/png",
    ".glb": "model/gltf-binary",
    ".json": "application/json",
    ".obj": "model/obj",
    ".ply": "application/octet-stream",
    ".txt": "text/plain",
}
INPUTS_DIR = "_inputs"  # uploaded files; never listed as artifacts
#: A staging directory younger than this is left alone (a run creates it only after it started, so this
#: is slack for clocks of machines sharing a volume, not a correctness guard).
STAGING_GRACE_SECONDS = 2.0


def media_type_for(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def safe_relative_name(name: str) -> str | None:
    """`name` as a clean relative POSIX path, or None if it could escape the job's folder."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or "\\" in name:
        return None
    return p.as_posix()


def run_files(src_dir: Path) -> Iterator[tuple[str, Path]]:
    """(artifact name, path) of every regular file under `src_dir`, sorted; symlinks are never followed
    nor published (a run writes plain files only)."""
    found = []
    for path in Path(src_dir).rglob("*"):
        if path.is_symlink():
            log.warning("staging %s: skipping symlink %s", src_dir, path.name)
        elif path.is_file() and not any(p.is_symlink() for p in path.relative_to(src_dir).parents if p.parts):
            found.append((path.relative_to(src_dir).as_posix(), path))
    yield from sorted(found)


class ArtifactStore(Protocol):
    def staging_dir(self, job_id: str, attempt: int) -> Path:
        """A fresh empty local directory for one run's files."""
        ...

    def put_run(self, job_id: str, attempt: int, src_dir: Path) -> list[Artifact]:
        """Store every file under `src_dir` as the artifacts of run `attempt`; returns them by name."""
        ...

    def discard_run(self, job_id: str, attempt: int) -> None:
        """Delete the files of a run that did not win the job."""
        ...

    def put_input(self, job_id: str, name: str, data: bytes) -> str: ...

    def fetch_input(self, job_id: str, name: str, workdir: Path) -> Path:
        """A local path of the uploaded input (downloaded into `workdir` when the store is remote)."""
        ...

    def open(self, job_id: str, attempt: int, name: str) -> BinaryIO | None:
        """The artifact's bytes as a file object, or None when it does not exist (or is not a plain file)."""
        ...

    def download_url(self, job_id: str, attempt: int, name: str, expires_seconds: int) -> str | None:
        """A presigned URL clients can download from directly; None when the store has none (local)."""
        ...

    def sweep_staging(self, live: Callable[[str, int], bool]) -> int:
        """Remove staging directories whose run is not live (`live(job_id, attempt)`)."""
        ...

    def delete_expired(self, older_than_seconds: float) -> int: ...


class StagingArea:
    """The local staging directories of runs: `{root}/{job_id}.{attempt}`."""

    def __init__(self, root: Path) -> None:
        self.staging_root = Path(root)
        self.staging_root.mkdir(parents=True, exist_ok=True)

    def staging_dir(self, job_id: str, attempt: int) -> Path:
        path = self.staging_root / f"{job_id}.{attempt}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def sweep_staging(self, live: Callable[[str, int], bool], grace_s: float = STAGING_GRACE_SECONDS) -> int:
        removed = 0
        cutoff = time.time() - grace_s
        for path in self.staging_root.iterdir():
            job_id, _, attempt = path.name.rpartition(".")
            try:
                if path.lstat().st_mtime > cutoff:
                    continue
                if job_id and attempt.isdigit() and live(job_id, int(attempt)):
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
        return removed


def make_artifact_store(settings: Settings) -> ArtifactStore:
    """The store `REALIZ3D_ARTIFACT_STORE` names, configured from the settings."""
    if settings.artifact_store == "s3":
        from service.storage.s3 import S3ArtifactStore

        return S3ArtifactStore.from_settings(settings)
    from service.storage.local import LocalArtifactStore

    return LocalArtifactStore(settings.artifact_dir)


__all__ = [
    "INPUTS_DIR",
    "ArtifactStore",
    "StagingArea",
    "make_artifact_store",
    "media_type_for",
    "run_files",
    "safe_relative_name",
]
