"""`LocalArtifactStore`: artifacts in a directory (one machine, or a volume every pod mounts).

Layout: `jobs/{id}/runs/{attempt}/{name}`, uploads in `jobs/{id}/_inputs/`, staging in `.staging/`
(same filesystem, so storing a run is a rename). It never follows a symlink: not when it stores a run,
not when it serves a file (a link planted in the tree, or swapped in for a directory, answers 404).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from service.jobs.records import Artifact
from service.storage import INPUTS_DIR, StagingArea, media_type_for, run_files, safe_relative_name


class LocalArtifactStore(StagingArea):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        super().__init__(self.root / ".staging")

    def _job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def _run_dir(self, job_id: str, attempt: int) -> Path:
        return self._job_dir(job_id) / "runs" / str(int(attempt))

    def put_run(self, job_id: str, attempt: int, src_dir: Path) -> list[Artifact]:
        dest = self._run_dir(job_id, attempt)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        artifacts = []
        for name, src in run_files(src_dir):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            size = src.stat().st_size
            os.replace(src, target)
            artifacts.append(Artifact(name=name, media_type=media_type_for(name), size_bytes=size))
        shutil.rmtree(src_dir, ignore_errors=True)
        return artifacts

    def discard_run(self, job_id: str, attempt: int) -> None:
        shutil.rmtree(self._run_dir(job_id, attempt), ignore_errors=True)

    def put_input(self, job_id: str, name: str, data: bytes) -> str:
        path = self._job_dir(job_id) / INPUTS_DIR / PurePosixPath(name).name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return name

    def fetch_input(self, job_id: str, name: str, workdir: Path) -> Path:
        return self._job_dir(job_id) / INPUTS_DIR / PurePosixPath(name).name

    def _plain_path(self, job_id: str, attempt: int, name: str) -> Path | None:
        clean = safe_relative_name(name)
        if clean is None or safe_relative_name(job_id) is None:
            return None
        path = self._run_dir(job_id, attempt) / clean
        # resolve() follows links: a link anywhere on the way makes the two differ.
        try:
            if path.resolve(strict=True) != path:
                return None
        except (FileNotFoundError, RuntimeError):
            return None
        return path

    def open(self, job_id: str, attempt: int, name: str) -> BinaryIO | None:
        path = self._plain_path(job_id, attempt, name)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            return None
        return f

    def download_url(self, job_id: str, attempt: int, name: str, expires_seconds: int) -> str | None:
        return None

    def _dirs(self) -> Iterator[Path]:
        parent = self.root / "jobs"
        if parent.is_dir():
            yield from parent.iterdir()

    def delete_expired(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self._dirs():
            try:
                if path.lstat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
