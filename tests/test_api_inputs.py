"""What the job routes take besides the canonical JSON: the CLI's schedule syntax (string, bare number,
object, one parser: engines.types.schedule_from_value), a body sent without the JSON content type (415
naming the header), and /v1/texture's parameters as plain form fields besides the `params` JSON part.

An in-memory app without a worker (admission=queue: jobs are accepted and wait); no model is loaded.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.service_helpers import box_glb


@pytest.fixture(scope="module")
def app_ctx(tmp_path_factory):
    from service.api.app import create_app
    from service.api.auth import ApiKeys
    from service.api.context import ServiceContext
    from service.jobs.memory_store import MemoryJobStore
    from service.jobs.queue import InProcessJobQueue
    from service.settings import Settings
    from service.storage import make_artifact_store

    settings = Settings(
        artifact_dir=tmp_path_factory.mktemp("artifacts"), webhook_secret="x", admission="queue"
    )
    ctx = ServiceContext(
        settings=settings,
        store=MemoryJobStore(),
        queue=InProcessJobQueue(),
        artifacts=make_artifact_store(settings),
        keys=ApiKeys(""),
        mode="embedded",
    )
    with TestClient(create_app(ctx)) as client:
        yield client, ctx


@pytest.fixture(scope="module")
def glb() -> bytes:
    return box_glb()


def params_of(ctx, response) -> dict:
    assert response.status_code == 202, response.text
    return ctx.store.get(response.json()["id"]).params


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("0.4,blocks=6", {"split": 0.4, "blocks": 6}),
        ("real", {"domain": "real"}),
        ("synthetic", {"domain": "synthetic"}),
        ("0.4,up=0", {"split": 0.4, "groups": {"up": 0.0}}),
        (0.4, {"split": 0.4}),
        (1, {"split": 1.0}),
        ({"split": 0.4, "blocks": 6}, {"split": 0.4, "blocks": 6}),
    ],
)
def test_multiview_takes_the_cli_schedule_forms(app_ctx, schedule, expected):
    client, ctx = app_ctx
    params = params_of(ctx, client.post("/v1/multiview", json={"prompt": "a red cube", "schedule": schedule}))
    assert params["schedule"].items() >= expected.items(), params["schedule"]


def test_the_three_forms_are_one_schedule():
    from engines.requests import MultiviewRequest
    from service.commands.schedule_arg import parse_schedule

    forms = ["0.4,blocks=6", {"split": 0.4, "blocks": 6}]
    parsed = {MultiviewRequest(prompt="a", schedule=f).schedule for f in forms}
    assert parsed == {parse_schedule("0.4,blocks=6")}  # the CLI's parser: the same object
    dumps = [MultiviewRequest(prompt="a", schedule=f).model_dump(exclude_unset=True) for f in forms]
    assert dumps[0] == dumps[1]  # what the job records: the same, whichever form was sent
    assert MultiviewRequest(prompt="a", schedule=0.4).schedule == parse_schedule("0.4")


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        ("bad", "expected 'real', 'synthetic', a split in [0,1]"),
        ("0.4,blocks=-1", "blocks must be a whole number >= 0"),
        ("0.4,real", "give either 'split' or 'domain'"),
        (1.5, "schedule 1.5: split: Input should be less than or equal to 1"),
        (True, "not true/false"),
        ({"split": 2}, "schedule.split: Input should be less than or equal to 1"),
        ({"split": 0.4, "blocks": -2}, "schedule.blocks: Input should be greater than or equal to 0"),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_problem(app_ctx, schedule, says):
    client, _ = app_ctx
    r = client.post("/v1/multiview", json={"prompt": "a red cube", "schedule": schedule})
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert says in message and "\n" not in message, message


def test_openapi_shows_the_three_schedule_forms(app_ctx):
    client, _ = app_ctx
    spec = client.get("/openapi.json").json()
    body_ref = spec["paths"]["/v1/multiview"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][body_ref["$ref"].rsplit("/", 1)[1]]
    forms = schema["properties"]["schedule"]["anyOf"]
    assert {f.get("type") for f in forms} >= {"string", "number", "null"}
    assert any(f.get("$ref", "").endswith("/DomainSchedule") for f in forms)
    text = next(f for f in forms if f.get("type") == "string")
    assert "0.4,blocks=6" in text["examples"] and "blocks=K" in text["description"]


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_body_without_the_json_content_type_is_told_so(app_ctx, content_type):
    client, _ = app_ctx
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/multiview", content=b'{"prompt": "a red cube"}', headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in r.json()["error"]["message"]


def test_texture_takes_plain_form_fields(app_ctx, glb):
    client, ctx = app_ctx
    r = client.post(
        "/v1/texture",
        files={"mesh": ("box.glb", glb)},
        data={"prompt": "a red box", "steps": "4", "num_views": "2", "schedule": "0.4,blocks=6", "seed": "7"},
    )
    params = params_of(ctx, r)
    assert params["prompt"] == "a red box" and params["steps"] == 4 and params["num_views"] == 2
    assert params["seed"] == 7 and params["schedule"]["blocks"] == 6
    # JSON text for a list (cameras) and for a schedule object
    camera = {"camera_to_world": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.2], [0, 0, 0, 1]]}
    r = client.post(
        "/v1/texture",
        files={"mesh": ("box.glb", glb)},
        data={"prompt": "a box", "cameras": json.dumps([camera]), "schedule": '{"split": 0.5}'},
    )
    params = params_of(ctx, r)
    assert params["num_views"] == 1 and params["schedule"]["split"] == 0.5
    # the params part and form fields together
    r = client.post(
        "/v1/texture",
        files={"mesh": ("box.glb", glb)},
        data={"params": json.dumps({"prompt": "a box", "steps": 3}), "atlas_size": "256"},
    )
    params = params_of(ctx, r)
    assert params["steps"] == 3 and params["atlas_size"] == 256


@pytest.mark.parametrize(
    ("data", "status", "says"),
    [
        ({}, 422, "send them as form fields (-F prompt="),
        ({"steps": "4"}, 422, "prompt: Field required"),
        ({"prompt": "a box", "steps": "many"}, 422, "steps: Input should be a valid integer"),
        ({"prompt": "a box", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        (
            {"params": '{"prompt": "a"}', "prompt": "b"},
            422,
            "prompt: given both in params and as a form field",
        ),
        ({"prompt": "a box", "cameras": "[1,"}, 400, "cameras: not valid JSON"),
    ],
)
def test_texture_form_field_mistakes(app_ctx, glb, data, status, says):
    client, _ = app_ctx
    r = client.post("/v1/texture", files={"mesh": ("box.glb", glb)}, data=data)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"], r.json()


def test_openapi_lists_texture_form_fields(app_ctx):
    client, _ = app_ctx
    spec = client.get("/openapi.json").json()
    form = spec["paths"]["/v1/texture"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["mesh"]
    fields = form["properties"]
    assert {"mesh", "params", "prompt", "steps", "num_views", "atlas_size", "schedule", "seed"} <= set(fields)
    assert fields["steps"]["type"] == "integer" and fields["steps"]["default"] == 30
    assert fields["schedule"]["type"] == "string" and "0.4,blocks=6" in fields["schedule"]["description"]
