"""The service's settings: one pydantic-settings class, env vars `REALIZ3D_*`.

Every tunable of the gateway and the worker lives here (the model's own tunables live in the model
folder's `realiz3d.json`). The Helm chart, docker-compose and this class agree on names and ports; a test
checks that.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.runtime.backend_names import BACKENDS, PRECISION_NAMES, default_precision

#: the named choices a setting takes (validated where settings are read: env or CLI flags)
_ALLOWED_NAMES = {"backend": BACKENDS, "precision": PRECISION_NAMES, "adapters": ("fused", "unfused")}

API_PORT = 8000
WORKER_METRICS_PORT = 9100


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REALIZ3D_", extra="ignore")

    # Gateway
    host: str = "127.0.0.1"
    port: int = Field(API_PORT, ge=1, le=65535)
    broker_url: str | None = Field(None, description="Redis URL; unset = embedded mode (in-process queue)")
    api_keys: str = Field("", description="comma-separated API keys; empty = no auth")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_queue_depth: int = Field(64, ge=1, description="jobs waiting per queue before 429")
    rate_limit_per_minute: int = Field(0, ge=0, description="submissions per client per minute; 0 = off")
    job_ttl_seconds: int = Field(24 * 3600, ge=60, description="jobs and artifacts expire after this")
    sse_poll_seconds: float = Field(
        30.0, gt=0, description="an event stream re-reads its job this often when no change was pushed"
    )
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After sent with 429 and 503")
    admission: Literal["require-worker", "queue"] = Field(
        "require-worker",
        description="require-worker: 503 no_worker while no live worker serves the kind; queue: accept "
        "and wait up to worker_wait_seconds for one (scale from zero)",
    )
    worker_wait_seconds: int = Field(
        600, ge=1, description="admission=queue: a job still waiting for a worker after this fails no_worker"
    )
    body_timeout_seconds: float = Field(60.0, gt=0, description="a request body must arrive within this")
    metrics_token: str = Field("", description="bearer token /metrics requires; empty = open")
    public_docs: bool = Field(True, description="serve /docs and /openapi.json without an API key")
    access_log: bool | None = Field(
        None,
        description="one line per HTTP request (method, path, status, milliseconds) on the realiz3d.access "
        "logger; unset = on in embedded mode, off in gateway mode (its load balancer logs requests)",
    )
    api_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="gateway processes (uvicorn workers) sharing the port; about one per CPU core. "
        "Embedded mode always runs one",
    )

    # Webhooks (a job's optional webhook_url)
    webhook_secret: str = Field(
        "",
        description="HMAC-SHA256 key of the Realiz3D-Signature header; empty = one is generated and kept "
        "in the job store (Redis key realiz3d:webhook-secret, shared by every gateway on it)",
    )
    webhook_key_secrets: dict[str, str] = Field(
        default_factory=dict,
        description='per-client signing keys, JSON {"sha256:<hex of the API key>": "secret", ...}; a job '
        "submitted with that API key is signed with its secret instead of webhook_secret",
    )
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_seconds: float = Field(1.0, gt=0, description="first retry delay; doubles each time")
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_allowlist: str = Field(
        "",
        description="comma-separated CIDRs and host names (*.domain for a whole domain) webhooks may reach "
        "although internal (loopback, private, link-local, ...); empty = public addresses only",
    )
    webhook_sweep_seconds: float = Field(
        5.0,
        gt=0,
        description="how often a gateway looks in the job store for ended jobs whose webhook is due",
    )

    # Cost bound of one request (checked at submission, and again by the worker)
    max_step_pixels: int = Field(
        8 * 512 * 512, ge=1, description="views x pixels of one denoising step of one job"
    )
    max_pixel_steps: int = Field(8 * 256 * 256 * 50, ge=1, description="views x pixels x steps of one job")
    max_atlas_size: int = Field(2048, ge=64, le=4096, description="largest texture atlas side (pixels)")

    # Storage
    artifact_store: Literal["local", "s3"] = "local"
    artifact_dir: Path = Path("./realiz3d-artifacts")
    staging_dir: Path | None = Field(None, description="runs' local scratch; default: a temp dir (s3)")
    artifact_download: Literal["gateway", "presigned"] = Field(
        "gateway", description="gateway: the API streams artifacts; presigned: 307 to a presigned URL (s3)"
    )
    presigned_url_seconds: int = Field(900, ge=1, le=7 * 24 * 3600)
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str | None = Field(None, description="e.g. http://minio:9000; unset = AWS")
    s3_public_endpoint_url: str | None = Field(None, description="endpoint presigned URLs are signed for")
    s3_region: str = "us-east-1"

    # Worker
    model_dir: Path | None = Field(None, description="model folder; unset = embedded default model")
    backend: str = Field("torch", description="UNet runtime: " + ", ".join(BACKENDS))
    adapters: str = Field(
        "fused", description="Domain Shifter: fused (precomputed per domain) or unfused (computed per call)"
    )
    precision: str | None = Field(
        None,
        description="UNet precision (fp32, fp16, bf16); unset = the backend's default: fp16 for tensorrt "
        "and torch-tensorrt, fp32 otherwise (engines.runtime.backend_names.DEFAULT_PRECISION)",
    )
    device: str = Field("auto", description="auto (CUDA when there is one, else CPU), cpu, cuda, cuda:N")
    engine_cache_dir: Path | None = Field(
        None,
        description="compiled-engine cache (ONNX graphs, TensorRT engines); unset = $REALIZ3D_HOME/engines, "
        "else ~/.cache/realiz3d/engines: the one rule of every entry point (engine_cache.cache_root)",
    )
    cuda_graphs: bool | None = Field(
        None,
        description="CUDA graphs for the UNet: unset = the backend's default (compile on CUDA: on; "
        "tensorrt: off); true/false forces them for compile and tensorrt (true with another backend fails)",
    )
    engine_memory_budget_mb: int | None = Field(
        None, ge=1, description="TensorRT: loaded engines kept within this many MB, least recently used out"
    )
    queues: str = "multiview,texture"
    worker_metrics_port: int = Field(WORKER_METRICS_PORT, ge=0, le=65535)
    worker_probe_host: str = Field(
        "127.0.0.1", description="bind address of the worker's probe port (0.0.0.0 in containers)"
    )
    heartbeat_seconds: float = Field(2.0, gt=0)
    heartbeat_ttl_seconds: float = Field(10.0, gt=0)
    job_soft_time_limit: int = Field(1800, ge=1)
    job_time_limit: int = Field(1900, ge=1)
    visibility_timeout: int = Field(7200, ge=60, description="longer than the longest job")
    redis_retry_seconds: float = Field(
        30.0,
        ge=0,
        description="a worker's job-store writes (start, phase, leases, heartbeats, the terminal status) "
        "retry through a Redis restart (connection errors, LOADING) for up to this long; progress writes "
        "are dropped instead of waiting. 0 = no retry",
    )
    batch_max_jobs: int = Field(8, ge=1, description="jobs whose UNet calls are batched per step; 1 = off")
    batch_max_wait_ms: float = Field(5.0, ge=0)
    batch_max_images: int = Field(
        64,
        ge=1,
        description="images (at the model's native resolution; pixels count) one UNet call or VAE decode "
        "takes; bigger steps are split into several calls of whole objects",
    )
    progress_interval_ms: float = Field(
        250.0,
        ge=0,
        description="least time between two progress writes of one job (its first and last steps are "
        "always written); 0 = every step",
    )
    job_max_attempts: int = Field(3, ge=1, description="runs of a job (after lost workers) before it fails")
    worker_name: str | None = Field(None, description="worker id in heartbeats; default host:pid")
    pipeline_factory: str | None = Field(
        None, description="'module:callable' returning a pipeline; unset = engines.pipelines (tests, benches)"
    )

    # Texturing limits (`mesh_limits()`): the CLI, the gateway and the worker all apply them.
    max_mesh_faces: int = Field(500_000, ge=1)
    max_mesh_vertices: int = Field(
        1_500_000,
        ge=3,
        description="vertices a mesh's scene draws (every instance counted), and per accessor",
    )
    max_image_pixels: int = Field(8192 * 8192, ge=1, description="pixels of any image inside a mesh upload")
    mesh_memory_budget_mb: int = Field(
        2048,
        ge=64,
        description="a mesh whose load is estimated to need more memory is refused (invalid_mesh)",
    )
    unwrap_timeout_seconds: float = Field(180.0, gt=0)

    @field_validator("backend", "precision", "adapters")
    @classmethod
    def _known_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        allowed = _ALLOWED_NAMES[info.field_name]
        if v is None and info.field_name == "precision":
            return v  # the backend's default (_default_precision)
        if v not in allowed:
            raise ValueError(f"{info.field_name} must be one of {', '.join(allowed)}")
        return v

    @field_validator("engine_cache_dir", "precision", "cuda_graphs", "access_log", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v  # REALIZ3D_X="" = the default rule

    @field_validator("webhook_allowlist")
    @classmethod
    def _allowlist_parses(cls, v: str) -> str:
        from service.api.webhook_target import AllowList

        AllowList.parse(v)  # a bad CIDR is an error at start, not a silently refused webhook
        return v

    @field_validator("webhook_key_secrets")
    @classmethod
    def _key_refs(cls, v: dict[str, str]) -> dict[str, str]:
        for ref, secret in v.items():
            digest = ref.strip().lower().removeprefix("sha256:")
            if len(digest) < 24 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    f"webhook_key_secrets: {ref!r} is not an API key's SHA-256 ('sha256:<hex>', as in api_keys)"
                )
            if not secret:
                raise ValueError(f"webhook_key_secrets: the secret of {ref!r} is empty")
        return v

    @model_validator(mode="after")
    def _limits_ordered(self) -> Settings:
        if self.job_time_limit <= self.job_soft_time_limit:
            raise ValueError("job_time_limit (hard) must be larger than job_soft_time_limit")
        return self

    @model_validator(mode="after")
    def _default_precision(self) -> Settings:
        if self.precision is None:  # one default per backend, stated once (backend_names)
            self.precision = default_precision(self.backend)
        return self

    def mesh_limits(self):  # noqa: ANN201 - engines' MeshLimits, imported lazily (no engines at import time)
        """The texturing limits every entry point applies: CLI `texture`/`bake`/`render`, gateway, worker."""
        from engines.texturing.mesh_io import MeshLimits

        return MeshLimits(
            max_faces=self.max_mesh_faces,
            max_bytes=self.max_upload_bytes,
            unwrap_timeout_s=self.unwrap_timeout_seconds,
            max_vertices=self.max_mesh_vertices,
            max_image_pixels=self.max_image_pixels,
            max_memory_bytes=self.mesh_memory_budget_mb * 1024 * 1024,
        )

    @property
    def queue_names(self) -> list[str]:
        return [q.strip() for q in self.queues.split(",") if q.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
