"""`--schedule` as the CLI commands take it (generate, texture, build-engines)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.errors import UserInputError

if TYPE_CHECKING:
    from engines.types import DomainSchedule


def parse_schedule(text: str | None) -> DomainSchedule | None:
    """The schedule a user typed (None: the model's default); a bad one is a one-line input error."""
    if text is None:
        return None
    from engines.types import DomainSchedule  # lazy: the CLI starts without torch

    try:
        return DomainSchedule.parse(text)
    except ValueError as e:
        raise UserInputError(str(e).splitlines()[0]) from None
