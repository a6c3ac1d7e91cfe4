"""The HTTP view of jobs (response bodies). Request bodies are the engines' own request classes.

Plain pydantic, no FastAPI import, so the Python client parses responses with these same classes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

JobStatusName = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class Progress(BaseModel):
    step: int = Field(0, description="denoising steps done")
    total: int = Field(
        0,
        description="denoising steps in all (0 until the job starts; a texture job's total grows by the "
        "request's steps for each call that inpaints planned views)",
    )
    stage: str | None = Field(
        None,
        description="texture jobs: the stage running (load, unwrap, render, generate, bake, plan, inpaint, "
        "fill)",
    )
    stage_fraction: float | None = Field(
        None, description="how far into that stage, 0-1 (the UV unwrap reports as it goes)"
    )


class ErrorInfo(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ArtifactOut(BaseModel):
    name: str = Field(..., examples=["views/view_00.png"])
    media_type: str = Field(..., examples=["image/png"])
    url: str
    size_bytes: int | None = None


class WebhookOut(BaseModel):
    """The delivery of a job's webhook_url so far."""

    attempts: int = Field(0, description="requests sent (a refused target is never sent one)")
    last_status: str | None = Field(
        None,
        description='the last outcome: "HTTP 204", a connection error\'s name, or "refused: <why>" for a '
        "target the address policy refuses; null before the first attempt",
        examples=["HTTP 204"],
    )
    delivered_at: datetime | None = Field(None, description="when the receiver answered 2xx")


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str


#: the one description of `estimated_seconds` (202 and GET /v1/jobs/{id}); how it is made: service/eta.py
ESTIMATED_SECONDS = Field(
    None,
    description="seconds until the job ends, as the service estimates it now: the jobs queued or running "
    "ahead of it when it was submitted plus its own denoising steps (views x steps, full and shallow as its "
    "cache_interval implies) at the step costs its workers measure and publish, plus their recent jobs' time "
    "outside denoising (for a texture job: unwrap, render, bake, planned views, fill, as a median). GET keeps "
    "it current from the job's progress; 0 once the job ended; null while no live worker publishes step costs",
    examples=[6.2],
)


class JobAccepted(BaseModel):
    id: str
    kind: Literal["multiview", "texture"]
    status: JobStatusName
    estimated_seconds: float | None = ESTIMATED_SECONDS
    links: JobLinks


class JobOut(BaseModel):
    id: str
    kind: Literal["multiview", "texture"]
    status: JobStatusName
    progress: Progress
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    warnings: list[str] = Field(
        default_factory=list,
        description="texture jobs: what meta.json warns about (e.g. more than half of the surface filled, "
        "not coloured by any view); the job still succeeded",
    )
    error: ErrorInfo | None = None
    artifacts: list[ArtifactOut] = Field(default_factory=list)
    attempts: int = 0
    webhook: WebhookOut | None = Field(None, description="present when the job has a webhook_url")
    estimated_seconds: float | None = ESTIMATED_SECONDS
    links: JobLinks

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def links_for(job_id: str) -> JobLinks:
    base = f"/v1/jobs/{job_id}"
    return JobLinks(self=base, events=f"{base}/events", cancel=base)


def _time(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=UTC) if ts else None


def job_out(record, estimated_seconds: float | None = None) -> JobOut:  # noqa: ANN001 - service.jobs.records.JobRecord (kept out of the client's imports)
    base = f"/v1/jobs/{record.id}"
    return JobOut(
        id=record.id,
        kind=record.kind.value,
        status=record.status.value,
        progress=Progress(
            step=record.progress_step,
            total=record.progress_total,
            stage=record.stage or None,
            stage_fraction=record.stage_fraction if record.stage else None,
        ),
        created_at=_time(record.created_at),
        started_at=_time(record.started_at),
        finished_at=_time(record.finished_at),
        timings=record.timings,
        warnings=list(getattr(record, "warnings", None) or []),
        error=ErrorInfo(code=record.error.code, message=record.error.message) if record.error else None,
        artifacts=[
            ArtifactOut(
                name=a.name,
                media_type=a.media_type,
                url=f"{base}/artifacts/{quote(a.name)}",
                size_bytes=a.size_bytes,
            )
            for a in record.artifacts
        ],
        attempts=record.attempts,
        webhook=WebhookOut(
            attempts=record.webhook_attempts,
            last_status=record.webhook_status or None,
            delivered_at=_time(record.webhook_delivered_at),
        )
        if record.webhook_url
        else None,
        estimated_seconds=0.0 if record.status.terminal else estimated_seconds,
        links=links_for(record.id),
    )


def job_accepted(record, estimated_seconds: float | None = None) -> JobAccepted:  # noqa: ANN001
    return JobAccepted(
        id=record.id,
        kind=record.kind.value,
        status=record.status.value,
        estimated_seconds=estimated_seconds,
        links=links_for(record.id),
    )
