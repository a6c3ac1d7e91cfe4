"""Errors the engines raise. `service/` maps them to exit code 2 (CLI) or 4xx (HTTP).

A `UserInputError` is a mistake of the caller (bad value, unreadable file): its message is one line that
names the problem and is shown to the user as is. Anything else is a bug or an infrastructure failure.
"""

from __future__ import annotations


class Realiz3DError(Exception):
    """Base of every error the engines raise on purpose."""

    code = "internal_error"


class UserInputError(Realiz3DError, ValueError):
    """The request, a file or a flag is wrong; the message says which and why."""

    code = "invalid_input"


class ModelFolderError(UserInputError):
    """A model folder is missing a file or holds an inconsistent one; the message names the file."""

    code = "invalid_model"


class MeshError(UserInputError):
    """A mesh is empty, degenerate, unparseable or over the limits."""

    code = "invalid_mesh"


class BackendUnavailable(UserInputError):
    """The requested runtime backend (e.g. TensorRT) is not installed or has no device here."""

    code = "backend_unavailable"


class JobCanceled(Realiz3DError):
    """The caller's cancel check returned True; raised between denoising steps."""

    code = "canceled"


class BatcherDied(Realiz3DError):
    """The step batcher's thread is gone (a bug in it): every job it held fails with this, and the worker
    stops being ready until it is restarted."""

    code = "batcher_died"
