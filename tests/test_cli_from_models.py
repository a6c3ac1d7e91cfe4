"""The CLI's request flags come from the request models the API validates with (service.commands.request_args):
same bounds, defaults and help; nothing is defaulted by the CLI itself, so `realiz3d generate` and
POST /v1/multiview ask the model for the same request; texture and generate share their flags' help and
the runtime flags; serve and worker list the same choices."""

from __future__ import annotations

import argparse

import pytest

from engines.requests import MultiviewRequest, TextureRequest
from service.cli import build_parser, main
from service.commands.request_args import MULTIVIEW_FLAGS, TEXTURE_FLAGS, request_from_args

RUNTIME = ("--model", "--backend", "--adapters", "--device", "--precision", "--cuda-graphs", "--engine-cache")


def actions(command: str) -> dict[str, argparse.Action]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {opt: a for a in sub._actions for opt in a.option_strings}


@pytest.mark.parametrize(
    ("command", "model", "flags"),
    [("generate", MultiviewRequest, MULTIVIEW_FLAGS), ("texture", TextureRequest, TEXTURE_FLAGS)],
)
def test_request_flags_are_the_model_fields(command, model, flags):
    acts = actions(command)
    exposed = {f.field for f in flags}
    # every knob of the request is a flag (prompt: positional for generate; cameras: --cameras FILE)
    assert set(model.model_fields) - exposed <= {"prompt", "cameras"}
    for f in flags:
        action, info = acts[f.flag], model.model_fields[f.field]
        assert action.dest == f.field and action.default is None, f.flag  # the model's default applies
        if info.default not in (None, "") and not info.is_required():
            assert f"default {info.default}" in action.help, (f.flag, action.help)
        assert action.help and "%" not in action.help.replace("%%", ""), f.flag
    for flag in RUNTIME:
        assert flag in acts, flag


def test_generate_and_texture_say_the_same_of_the_same_fields():
    gen, tex = actions("generate"), actions("texture")
    for flag in (
        "--steps",
        "--seed",
        "--guidance",
        "--schedule",
        "--scheduler",
        "--negative-prompt",
        *RUNTIME,
    ):
        assert gen[flag].help == tex[flag].help and gen[flag].choices == tex[flag].choices, flag
    assert "blocks=K" in gen["--schedule"].help and "0.4,blocks=6" in gen["--schedule"].help
    assert tex["--views"].help.endswith("(1 to 8; default 6)") and gen["--views"].help.endswith(
        "(1 to 8; default 4)"
    )


def test_serve_and_worker_list_the_runtime_choices():
    for command in ("serve", "worker"):
        acts = actions(command)
        assert set(acts["--backend"].choices) == set(actions("generate")["--backend"].choices), command
        assert acts["--adapters"].choices == ("fused", "unfused")
        assert all(acts[f].default is None for f in ("--backend", "--adapters", "--device", "--model"))


def test_no_flag_is_an_api_call_without_the_field():
    args = build_parser().parse_args(["generate", "a red cube"])
    cli = request_from_args(MultiviewRequest, args, MULTIVIEW_FLAGS, prompt="a red cube")
    assert cli == MultiviewRequest(prompt="a red cube") and cli.seed is None  # random, as the API
    args = build_parser().parse_args(["texture", "m.glb", "--prompt", "a ball", "--schedule", "0.4,blocks=6"])
    tex = request_from_args(TextureRequest, args, TEXTURE_FLAGS)
    assert tex == TextureRequest(prompt="a ball", schedule={"split": 0.4, "blocks": 6})


def test_a_bad_value_names_the_flag_and_the_field(capsys):
    assert main(["generate", "x", "--views", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "realiz3d: error: --views (num_views): Input should be less than or equal to 8"
    assert main(["texture", "nothing.glb", "--prompt", "x", "--atlas", "9999"]) == 2
    assert "--atlas (atlas_size): Input should be less than or equal to 4096" in capsys.readouterr().err
    assert main(["generate", "x", "--azimuths", "0,ninety"]) == 2
    assert "--azimuths: could not convert" in capsys.readouterr().err


def _parsers(parser: argparse.ArgumentParser, name: str = "realiz3d"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_flag_with_a_default_says_it():
    for name, parser in _parsers(build_parser()):
        parser.format_help()  # renders (no stray % in a help text)
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            assert "default" in (action.help or "").lower(), f"{name} {action.option_strings[0]}"
