"""`--cameras cameras.json` for `generate`, `texture`, `render` and `bake`: explicit cameras from a file."""

from __future__ import annotations

from pathlib import Path


def load_cameras_arg(path: Path):  # noqa: ANN201 - (list[Camera], resolution | None)
    """Cameras of a `cameras.json` (orbit or explicit entries); a bad file is a one-line user error."""
    from engines.errors import UserInputError
    from engines.sampling.cameras import load_cameras

    try:
        return load_cameras(path)
    except ValueError as e:
        raise UserInputError(str(e)) from None


def explicit_camera_args(cameras: Path | None, views: int | None, default_views: int) -> dict:
    """Request fields for `--cameras FILE` (explicit cameras; --views, if given, must agree) or `--views N`."""
    if cameras is None:
        return {"num_views": views if views is not None else default_views}
    from engines.requests import CameraSpec

    loaded, _ = load_cameras_arg(cameras)
    fields: dict = {"cameras": [CameraSpec.from_camera(c) for c in loaded]}
    if views is not None:
        fields["num_views"] = views
    return fields
