"""`--schedule` as the CLI commands take it (generate, texture, build-engines): the API's parser and syntax."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.errors import UserInputError
from engines.types import SCHEDULE_SYNTAX

if TYPE_CHECKING:
    from engines.types import DomainSchedule

#: `--schedule`'s help: the syntax the API's `schedule` string takes too (engines.types.SCHEDULE_SYNTAX)
SCHEDULE_HELP = f"domain schedule: {SCHEDULE_SYNTAX} (default: the model's)"


def parse_schedule(text: str | None) -> DomainSchedule | None:
    """The schedule a user typed (None: the model's default); a bad one is a one-line input error."""
    if text is None:
        return None
    from engines.types import schedule_from_value  # the API's `schedule` parser

    try:
        return schedule_from_value(text)
    except ValueError as e:
        raise UserInputError(str(e).splitlines()[0]) from None
