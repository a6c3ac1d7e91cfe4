"""CLI flags derived from the typed models the API validates with, so the two cannot drift (as cog derives a
CLI from one predict signature).

- Request flags (`generate`, `texture`) come from `engines.requests.MultiviewRequest` / `TextureRequest`:
  type, choices (a Literal), bounds, default and help text are the field's own. The argparse default is
  always None ("not given"): a flag left out is left out of the request, and the model's default applies,
  exactly as for an API call that omits the field. Only the flag's *name* is chosen here (`--views` for
  `num_views`); a validation error names the flag and the field.
- Runtime flags (`--model`, `--backend`, `--adapters`, `--device`, `--precision`, `--cuda-graphs`,
  `--engine-cache`) come from `service.settings.Settings`: the same choices and help for `generate`,
  `texture`, `serve` and `worker`.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class Flag:
    field: str
    flag: str
    metavar: str | None = None


#: `realiz3d generate` (MultiviewRequest; the prompt is the positional argument)
MULTIVIEW_FLAGS = (
    Flag("negative_prompt", "--negative-prompt", "TEXT"),
    Flag("num_views", "--views", "N"),
    Flag("steps", "--steps", "N"),
    Flag("guidance_scale", "--guidance", "SCALE"),
    Flag("seed", "--seed", "N"),
    Flag("elevation_deg", "--elevation", "DEG"),
    Flag("azimuths_deg", "--azimuths", "DEG,DEG,..."),
    Flag("radius", "--radius", "DIST"),
    Flag("fov_deg", "--fov", "DEG"),
    Flag("schedule", "--schedule", "SCHEDULE"),
    Flag("scheduler", "--scheduler"),
    Flag("cache_interval", "--cache-interval", "N"),
    Flag("resolution", "--resolution", "PX"),
)

#: `realiz3d texture MESH --prompt P` (TextureRequest)
TEXTURE_FLAGS = (
    Flag("prompt", "--prompt", "TEXT"),
    Flag("negative_prompt", "--negative-prompt", "TEXT"),
    Flag("num_views", "--views", "N"),
    Flag("atlas_size", "--atlas", "TEXELS"),
    Flag("view_resolution", "--resolution", "PX"),
    Flag("steps", "--steps", "N"),
    Flag("guidance_scale", "--guidance", "SCALE"),
    Flag("seed", "--seed", "N"),
    Flag("schedule", "--schedule", "SCHEDULE"),
    Flag("scheduler", "--scheduler"),
    Flag("cache_interval", "--cache-interval", "N"),
    Flag("unwrap", "--unwrap"),
    Flag("bake_resolution", "--bake-resolution", "PX"),
    Flag("coverage_target", "--coverage-target", "SHARE"),
    Flag("max_views", "--max-views", "N"),
    Flag("inpaint_steps", "--inpaint-steps", "N"),
)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _kind(annotation: Any) -> tuple[type | None, tuple | None, bool]:
    """(scalar type for argparse or None = text, Literal choices, is a list)"""
    ann = _unwrap_optional(annotation)
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    if typing.get_origin(ann) is typing.Literal:
        return None, typing.get_args(ann), False
    if typing.get_origin(ann) is list:
        return typing.get_args(ann)[0], None, True
    if ann in (int, float):
        return ann, None, False
    return None, None, False


def _bounds(metadata: list) -> str:
    lo = hi = step = None
    for m in metadata:
        if isinstance(m, annotated_types.Ge | annotated_types.Gt):
            lo = (getattr(m, "ge", None), getattr(m, "gt", None))
        elif isinstance(m, annotated_types.Le | annotated_types.Lt):
            hi = (getattr(m, "le", None), getattr(m, "lt", None))
        elif isinstance(m, annotated_types.MultipleOf):
            step = m.multiple_of
    parts = []
    if lo and hi and lo[0] is not None and hi[0] is not None and hi[0] < 2**31:
        parts.append(f"{lo[0]:g} to {hi[0]:g}")
    else:
        if lo:
            parts.append(f">= {lo[0]:g}" if lo[0] is not None else f"> {lo[1]:g}")
        if hi and (hi[0] is None or hi[0] < 2**31):
            parts.append(f"<= {hi[0]:g}" if hi[0] is not None else f"< {hi[1]:g}")
    if step:
        parts.append(f"a multiple of {step}")
    return ", ".join(parts)


def field_help(model: type[BaseModel], name: str) -> str:
    """The field's description, its bounds and its default, as one help line."""
    info = model.model_fields[name]
    text = info.description or name.replace("_", " ")
    if name == "schedule":
        from service.commands.schedule_arg import SCHEDULE_HELP

        text = SCHEDULE_HELP
    extra = [b] if (b := _bounds(info.metadata)) else []
    default = info.default
    if default is not PydanticUndefined and default is not None and default != "":
        extra.append(f"default {default}")
    elif info.is_required():
        extra.append("required")
    line = text + (f" ({'; '.join(extra)})" if extra else "")
    return line.replace("%", "%%")  # argparse formats help with %


def add_request_args(p: argparse.ArgumentParser, model: type[BaseModel], flags: tuple[Flag, ...]) -> None:
    for f in flags:
        info = model.model_fields[f.field]
        scalar, choices, is_list = _kind(info.annotation)
        kwargs: dict[str, Any] = {"dest": f.field, "default": None, "help": field_help(model, f.field)}
        if choices:
            kwargs["choices"] = choices
        elif scalar is not None and not is_list:
            kwargs["type"] = scalar
        if f.metavar and not choices:
            kwargs["metavar"] = f.metavar
        if info.is_required():
            kwargs["required"] = True
        p.add_argument(f.flag, **kwargs)


def request_from_args(
    model: type[BaseModel], args: argparse.Namespace, flags: tuple[Flag, ...], **fixed: Any
):  # noqa: ANN201
    """The request the flags describe: only the flags given (the model's defaults for the rest), plus
    `fixed` fields. A mistake is a one-line UserInputError naming the flag."""
    from engines.errors import UserInputError

    by_field = {f.field: f for f in flags}
    values: dict[str, Any] = {}
    for f in flags:
        value = getattr(args, f.field, None)
        if value is None:
            continue
        _, _, is_list = _kind(model.model_fields[f.field].annotation)
        if is_list:
            try:
                value = [float(v) for v in str(value).split(",") if v.strip()]
            except ValueError as e:
                raise UserInputError(f"{f.flag}: {str(e).splitlines()[0]}") from None
        values[f.field] = value
    try:
        return model(**{**values, **fixed})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = [str(p) for p in err["loc"]]
            msg = str(err["msg"]).removeprefix("Value error, ")
            flag = by_field.get(loc[0]).flag if loc and loc[0] in by_field else None
            where = f"{flag} ({'.'.join(loc)})" if flag else ".".join(loc)
            problems.append(f"{where}: {msg}" if where else msg)
        raise UserInputError("; ".join(problems)) from None


# -- runtime flags, from Settings ------------------------------------------------------------------------


def add_runtime_args(
    p: argparse.ArgumentParser, *, from_settings: bool = False, cuda_graphs: bool = True
) -> None:
    """`--model --backend --adapters --device --precision [--cuda-graphs] --engine-cache`, with Settings'
    choices and descriptions. `from_settings` (serve, worker): no flag = the settings (REALIZ3D_* env);
    otherwise (generate, texture) the Settings field's default is the flag's default."""
    from engines.runtime.backend_names import DEFAULT_PRECISION, PRECISION_NAMES
    from service.commands.engines import ENGINE_CACHE_HELP
    from service.settings import _ALLOWED_NAMES, Settings

    fields = Settings.model_fields

    def default(name: str) -> Any:
        return None if from_settings else fields[name].default

    def shown(name: str, env: str) -> str:
        base = f"default {fields[name].default}"
        return f"{base}, or ${env}" if from_settings else base

    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help=(fields["model_dir"].description or "model folder")
        + (", or $REALIZ3D_MODEL_DIR" if from_settings else ""),
    )
    for name in ("backend", "adapters"):
        p.add_argument(
            f"--{name}",
            choices=_ALLOWED_NAMES[name],
            default=default(name),
            help=f"{fields[name].description} ({shown(name, 'REALIZ3D_' + name.upper())})",
        )
    p.add_argument(
        "--device",
        default=default("device"),
        metavar="DEVICE",
        help=f"{fields['device'].description} ({shown('device', 'REALIZ3D_DEVICE')})",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_NAMES,
        default=None,
        help="UNet precision (default: the backend's: "
        + ", ".join(f"{b} {v}" for b, v in DEFAULT_PRECISION.items())
        + ("; or $REALIZ3D_PRECISION" if from_settings else "")
        + ")",
    )
    if cuda_graphs:
        p.add_argument(
            "--cuda-graphs",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="CUDA graphs for compile/tensorrt (default: the backend's: compile on CUDA on, tensorrt off)",
        )
    p.add_argument("--engine-cache", type=Path, default=None, metavar="DIR", help=ENGINE_CACHE_HELP)
