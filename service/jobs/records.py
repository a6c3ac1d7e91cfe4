"""The job record: what the gateway shows for a job, and what workers update while they run it.

Storage-neutral plain data; the Redis and in-memory stores both keep exactly these fields. The HTTP
schemas in `service.api.schemas` are a separate view of it (times as ISO strings, URLs added).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobKind(StrEnum):
    multiview = "multiview"
    texture = "texture"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})


def new_job_id() -> str:
    """128 random bits, URL-safe: ids are unguessable, so knowing one is not a way into another's job."""
    return secrets.token_urlsafe(16)


@dataclass
class Artifact:
    name: str  # relative path inside the job, e.g. "views/view_00.png"
    media_type: str
    size_bytes: int


@dataclass
class JobError:
    code: str
    message: str


@dataclass
class JobRecord:
    id: str
    kind: JobKind
    params: dict[str, Any]
    owner: str | None = None
    status: JobStatus = JobStatus.queued
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress_step: int = 0
    progress_total: int = 0
    # Texture jobs: the stage running now (load, unwrap, render, generate, bake, fill; "" before the
    # first) and how far into it (the UV unwrap reports as it goes; the others 0 at their start).
    stage: str = ""
    stage_fraction: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Texture jobs: meta.json's warnings (most of the surface filled, views that coloured nothing); the job
    # still succeeded.
    warnings: list[str] = field(default_factory=list)
    error: JobError | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    input_name: str | None = None  # the uploaded mesh, stored under the job's inputs
    upload_name: str | None = None  # the file name the client sent (meta.json and messages name it)
    webhook_url: str | None = None  # POSTed the final job (signed) when it ends
    # Its delivery so far: requests sent, the last outcome ("HTTP 204", "ConnectError", "refused: <why>"
    # for a target the address policy refuses, never connected to) and when a 2xx answer came.
    webhook_attempts: int = 0
    webhook_status: str | None = None
    webhook_delivered_at: float | None = None
    attempts: int = 0  # runs started so far; a lost worker's run counts
    # How the current run computes: "" (started, not computing yet: waiting for a slot), "batched"
    # (sharing a worker with other jobs) or "solo" (alone on its worker). A lost worker charges only
    # the jobs that ran solo: a batch-mate of the job that killed it is re-queued free of charge.
    phase: str = ""
    lost_runs: int = 0  # runs lost while batched (free); after two the job runs solo
    charged_runs: int = 0  # runs lost while solo; the job fails worker_lost at job_max_attempts
    run_alone: bool = False  # the next run must be solo
    worker: str | None = None
    version: int = 0  # bumped on every change; SSE compares it
    #: jobs queued or running when this one was stored (counted by the store as it stores it): the queue
    #: ahead its estimated_seconds counts (service/eta.py)
    ahead: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values: error and artifacts as dicts, containers copied one level deep
        (`dataclasses.asdict` gave the same for a record's JSON values, at 25x the cost)."""
        d = dict(self.__dict__)
        d["params"] = dict(self.params)
        d["timings"] = dict(self.timings)
        d["warnings"] = list(self.warnings)
        d["error"] = dict(vars(self.error)) if self.error is not None else None
        d["artifacts"] = [dict(vars(a)) for a in self.artifacts]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRecord:
        d = dict(d)
        d["kind"] = JobKind(d["kind"])
        d["status"] = JobStatus(d["status"])
        if d.get("error"):
            d["error"] = JobError(**d["error"])
        d["artifacts"] = [Artifact(**a) for a in d.get("artifacts") or []]
        d["warnings"] = list(d.get("warnings") or [])
        return cls(**d)
