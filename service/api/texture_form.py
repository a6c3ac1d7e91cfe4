"""`POST /v1/texture`'s parameters as plain form fields (`-F prompt=... -F steps=20`), besides (or instead
of) the `params` JSON part, and the multipart request body its OpenAPI shows.

Form fields are text: numbers arrive as "20" and are read as numbers by the same validation as JSON
(`TextureJob`); a field whose text starts with `[` or `{` (`cameras`, a `schedule` object) is read as JSON.
A field given both in `params` and as its own form field is refused, naming it.
"""

from __future__ import annotations

import json
from typing import Any

from service.api.errors import ApiError

#: the parts that are not job parameters
FILE_PARTS = ("mesh", "files")
PARAMS_PART = "params"

MISSING_PARAMS = (
    "the job's parameters are missing: send them as form fields (-F prompt='a red sphere' -F steps=20) "
    'or as one JSON part (-F \'params={"prompt": "a red sphere"}\')'
)


def merged_params(params_json: str | None, fields: dict[str, str]) -> str:
    """The job's parameters as one JSON object text: the `params` part's object plus the form fields."""
    if params_json is None and not fields:
        raise ApiError(422, "invalid_request", MISSING_PARAMS)
    if not fields:
        return params_json or "{}"
    base: dict[str, Any] = {}
    if params_json is not None and params_json.strip():
        try:
            base = json.loads(params_json)
        except ValueError as e:
            raise ApiError(400, "invalid_json", f"params: not valid JSON ({e})") from e
        if not isinstance(base, dict):
            raise ApiError(422, "invalid_request", "params: must be a JSON object")
    both = sorted(set(base) & set(fields))
    if both:
        raise ApiError(
            422,
            "invalid_request",
            f"{', '.join(both)}: given both in params and as a form field; give it once",
        )
    for name, text in fields.items():
        base[name] = _field_value(name, text)
    return json.dumps(base)


def _field_value(name: str, text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except ValueError as e:
            raise ApiError(400, "invalid_json", f"{name}: not valid JSON ({e})") from e
    return text


def texture_request_body() -> dict:
    """The OpenAPI `requestBody` of POST /v1/texture: the files, the `params` part, and every parameter as
    an optional form field (from TextureJob's own schema, so it cannot drift from what is validated)."""
    from service.api.job_requests import TextureJob

    schema = TextureJob.model_json_schema()
    properties: dict[str, Any] = {
        "mesh": {
            "type": "string",
            "format": "binary",
            "description": "GLB, glTF (its files as `files` parts, or zipped), OBJ, PLY, or a .zip of one",
        },
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "a .gltf's buffers and images, each named by its URI in the .gltf",
        },
        PARAMS_PART: {
            "type": "string",
            "description": "the parameters below as one JSON object (TextureRequest, plus an optional "
            "webhook_url); alternatively send each as its own form field",
            "example": json.dumps({"prompt": "a rusty metal barrel", "num_views": 6, "atlas_size": 1024}),
        },
    }
    for name, prop in schema["properties"].items():
        properties[name] = _form_field_schema(name, prop)
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["mesh"], "properties": properties},
                "encoding": {"mesh": {"contentType": "application/octet-stream"}},
            }
        },
    }


def _form_field_schema(name: str, prop: dict) -> dict:
    """A TextureJob property as a form field: its own type where that is a plain one, else text (JSON for
    lists and objects, or the schedule's string form)."""
    description = prop.get("description", "")
    kinds = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    plain = [k for k in kinds if k.get("type") in ("string", "integer", "number") and "$ref" not in k]
    if len(kinds) == 1 and plain:
        field = {k: v for k, v in plain[0].items() if k in ("type", "enum", "minimum", "maximum", "format")}
    else:
        field = {"type": "string"}
        if name == "schedule":
            description += (
                "; as a form field: the string form ('0.4,blocks=6'), a number, or the object as JSON"
            )
        elif any(k.get("type") in ("array", "object") or "$ref" in k for k in kinds):
            description += "; as a form field: JSON text"
    if name == "prompt":
        description = "required (here or in params)"
    if "default" in prop and prop["default"] is not None:
        field["default"] = prop["default"]
    if description:
        field["description"] = description
    return field
