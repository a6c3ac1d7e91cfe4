"""The `realiz3d` console script: one argparse entry point, a module per group of subcommands.

User mistakes (bad flag values, unreadable files, a missing backend) print one line and exit 2; the
traceback is kept for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pydantic import ValidationError

# Modules that each expose `register(subparsers)`; a module whose optional dependencies are missing is
# skipped so a gateway-only install still gets `serve`.
COMMAND_MODULES = (
    "service.commands.generate",
    "service.commands.texturing",
    "service.commands.serving",
    "service.commands.runtime",
    "service.commands.engines",
    "service.commands.loadtest",
    "service.commands.training",
    "service.commands.importing",
    "service.commands.sample",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realiz3d",
        description="Realiz3D Serve: photorealistic, 3D-consistent multi-view generation and texturing.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("service.commands"):
                continue  # that group of commands is not part of this build
            raise
        module.register(sub)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every flag's help says its default (unless it already does), in every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _show_defaults(sub)
            continue
        default = action.default
        if (
            not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
            or action.help == argparse.SUPPRESS
        ):
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        help_text = action.help or ""
        if "default" in help_text.lower():
            continue
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        action.help = (help_text + " " if help_text else "") + f"(default: {shown.replace('%', '%%')})"


def user_error(message: str) -> int:
    print(f"realiz3d: error: {message}", file=sys.stderr)
    return 2


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _is_user_error(e: BaseException) -> bool:
    try:
        from engines.errors import UserInputError
    except ImportError:  # gateway-only install: no engines
        return isinstance(e, FileNotFoundError)
    return isinstance(e, UserInputError | FileNotFoundError)


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser `args` went through, e.g. `realiz3d bench unet`'s."""
    for action in parser._actions:
        if (
            isinstance(action, argparse._SubParsersAction)
            and getattr(args, action.dest, None) in action.choices
        ):
            return chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # refused by the subcommand that did not take them, with its usage (exit 2)
        chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        rc = args.handler(args)
    except ValidationError as e:
        return user_error(format_validation_error(e))
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as e:
        # User mistakes (engines.errors.UserInputError is a ValueError) become one line; bugs keep
        # their traceback. Only errors the engines raise on purpose are shown as a one-line message.
        if _is_user_error(e):
            return user_error(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
