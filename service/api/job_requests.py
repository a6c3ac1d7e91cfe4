"""Request bodies of the job routes: the engines' request classes plus what only the service knows of a
job (where to send its webhook). The worker sees the engines' part alone (`engine_params`)."""

from __future__ import annotations

from typing import Any

from pydantic import AnyHttpUrl, BaseModel, Field

from engines.requests import MultiviewRequest, TextureRequest

SERVICE_FIELDS = {"webhook_url"}


class JobOptions(BaseModel):
    webhook_url: AnyHttpUrl | None = Field(
        None,
        max_length=2000,
        description="POSTed the final job (as GET /v1/jobs/{id} shows it), signed with HMAC-SHA256 in "
        "the Realiz3D-Signature header, when the job ends; retried with backoff",
    )


class MultiviewJob(MultiviewRequest, JobOptions):
    """A text-to-multiview job."""


class TextureJob(TextureRequest, JobOptions):
    """A texturing job (the `params` part of the multipart upload)."""


def engine_params(body: BaseModel, exclude_unset: bool = True) -> dict[str, Any]:
    """The job's parameters as the engines take them (service-only fields removed)."""
    return body.model_dump(mode="json", exclude_unset=exclude_unset, exclude=SERVICE_FIELDS)


def webhook_of(body: JobOptions) -> str | None:
    return str(body.webhook_url) if body.webhook_url else None
