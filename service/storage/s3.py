"""`S3ArtifactStore`: artifacts and uploads in an S3-compatible bucket (AWS S3, MinIO, ...), via boto3.

Keys: `{prefix}jobs/{id}/runs/{attempt}/{name}` and `{prefix}jobs/{id}/_inputs/{name}`. Workers write
each run's files into a local staging directory, then upload them; the gateway streams them back or,
with `REALIZ3D_ARTIFACT_DOWNLOAD=presigned`, redirects the client to a presigned GET URL (signed for
`REALIZ3D_S3_PUBLIC_ENDPOINT_URL` when clients reach the store by another address than the pods do).
Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a role, ...).
Expiry: `delete_expired` removes objects older than the job TTL; a bucket lifecycle rule does the same
job without a sweeper and is the better choice where the store supports one.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from service.jobs.records import Artifact
from service.settings import Settings
from service.storage import INPUTS_DIR, StagingArea, media_type_for, run_files, safe_relative_name


def _client(endpoint_url: str | None, region: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"},  # MinIO and most self-hosted stores
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


class S3ArtifactStore(StagingArea):
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        staging_root: Path | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("REALIZ3D_S3_BUCKET is required with REALIZ3D_ARTIFACT_STORE=s3")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = _client(endpoint_url, region)
        self.presigner = (
            _client(public_endpoint_url, region)
            if public_endpoint_url and public_endpoint_url != endpoint_url
            else self.client
        )
        super().__init__(staging_root or Path(tempfile.gettempdir()) / "realiz3d-staging")

    @classmethod
    def from_settings(cls, s: Settings) -> S3ArtifactStore:
        return cls(
            s.s3_bucket,
            prefix=s.s3_prefix,
            endpoint_url=s.s3_endpoint_url,
            public_endpoint_url=s.s3_public_endpoint_url,
            region=s.s3_region,
            staging_root=s.staging_dir,
        )

    def _job_prefix(self, job_id: str) -> str:
        return f"{self.prefix}jobs/{job_id}/"

    def _run_prefix(self, job_id: str, attempt: int) -> str:
        return f"{self._job_prefix(job_id)}runs/{int(attempt)}/"

    def _key(self, job_id: str, attempt: int, name: str) -> str | None:
        clean = safe_relative_name(name)
        if clean is None or safe_relative_name(job_id) is None or "/" in job_id:
            return None
        return self._run_prefix(job_id, attempt) + clean

    def put_run(self, job_id: str, attempt: int, src_dir: Path) -> list[Artifact]:
        import shutil

        artifacts = []
        for name, path in run_files(src_dir):
            media_type = media_type_for(name)
            key = self._run_prefix(job_id, attempt) + name
            self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": media_type})
            artifacts.append(Artifact(name=name, media_type=media_type, size_bytes=path.stat().st_size))
        shutil.rmtree(src_dir, ignore_errors=True)
        return artifacts

    def _delete_keys(self, keys: list[str]) -> int:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def _objects(self, prefix: str) -> Iterator[dict]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def discard_run(self, job_id: str, attempt: int) -> None:
        self._delete_keys([o["Key"] for o in self._objects(self._run_prefix(job_id, attempt))])

    def put_input(self, job_id: str, name: str, data: bytes) -> str:
        key = f"{self._job_prefix(job_id)}{INPUTS_DIR}/{PurePosixPath(name).name}"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return name

    def fetch_input(self, job_id: str, name: str, workdir: Path) -> Path:
        name = PurePosixPath(name).name
        dest = Path(workdir) / INPUTS_DIR / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, f"{self._job_prefix(job_id)}{INPUTS_DIR}/{name}", str(dest))
        return dest

    def open(self, job_id: str, attempt: int, name: str) -> BinaryIO | None:
        from botocore.exceptions import ClientError

        key = self._key(job_id, attempt, name)
        if key is None:
            return None
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def download_url(self, job_id: str, attempt: int, name: str, expires_seconds: int) -> str | None:
        key = self._key(job_id, attempt, name)
        if key is None:
            return None
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ResponseContentDisposition": f'attachment; filename="{PurePosixPath(name).name}"',
        }
        return self.presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds)

    def delete_expired(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        old = [
            o["Key"] for o in self._objects(self.prefix + "jobs/") if o["LastModified"].timestamp() < cutoff
        ]
        return self._delete_keys(old)
