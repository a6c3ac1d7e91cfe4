"""The web playground (`GET /`) in a real headless Chromium (Debian's `chromium`), driven by Playwright.

Against `realiz3d serve` in embedded mode on a free port, with API keys on (and, for 503, 429 and 413, a
gateway without workers). Nothing downloads a browser: Playwright drives /usr/bin/chromium through
`executable_path`.
Every test records each request the page makes and fails if one leaves the service's origin (offline).
Screenshots go to the test's temp dir; REALIZ3D_PLAYGROUND_SHOTS=docs/samples also writes the docs' one there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from engines.requests import TextureRequest
from tests.service_helpers import box_glb

pytestmark = pytest.mark.timeout(300)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",  # WebGL still works: Chromium falls back to SwiftShader (software)
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOB_TIMEOUT_MS = 120_000
KEYS = ("key-alice", "key-bob")


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        if os.environ.get("CI"):  # CI must test the page in a browser, never skip past it
            pytest.fail("chromium is not installed in CI (.ci/run installs it with apt)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        yield p


@dataclass
class Browser:
    """One page in a fresh Chromium profile, with what it requested and what it logged."""

    page: object
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str = "/") -> None:
        self.page.goto(self.origin + path)
        self.page.wait_for_selector("body[data-ready=true]")

    def check_clean(self) -> None:
        foreign = [u for u in self.requests if not _same_origin(u, self.origin)]
        assert not foreign, f"the page reached outside the service: {foreign}"
        assert not self.errors, f"errors in the page: {self.errors}"
        assert self.page.locator("#page-error").is_hidden(), self.page.locator("#page-error").inner_text()


def _same_origin(url: str, origin: str) -> bool:
    if url.startswith(("blob:", "data:")):
        return url.startswith(f"blob:{origin}") or url.startswith("data:")
    parts, base = urlsplit(url), urlsplit(origin)
    return (parts.scheme, parts.netloc) == (base.scheme, base.netloc)


@pytest.fixture()
def browser_factory(playwright_driver, tmp_path) -> Iterator[object]:
    contexts = []

    def make(origin: str, width: int = 1280, height: int = 900, key: str | None = KEYS[0]) -> Browser:
        profile = tmp_path / f"profile-{len(contexts)}"  # a fresh user-data-dir: no storage carried over
        context = playwright_driver.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.pages[0] if context.pages else context.new_page()
        b = Browser(page, origin)
        context.on("request", lambda r: b.requests.append(r.url))
        page.on("pageerror", lambda e: b.errors.append(f"pageerror: {e}"))

        def console(message) -> None:  # noqa: ANN001
            # The API's own 4xx answers are logged by Chromium as failed loads: those are expected here.
            if message.type == "error" and "Failed to load resource" not in message.text:
                b.errors.append(message.text)

        page.on("console", console)
        if key:  # a returning user: the key is already in this browser's storage when the page loads
            context.add_init_script(f"localStorage.setItem('realiz3d.apiKey', {json.dumps(key)})")
        b.open()
        return b

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def embedded(service_launcher):
    """With auth on, so every test's page sends its key on every call: artifacts, events, the GLB."""
    server = service_launcher.embedded(REALIZ3D_API_KEYS=",".join(KEYS))
    yield server
    server.stop()


def shot(locator, tmp_path: Path, name: str, for_docs: bool = False) -> Image.Image:
    path = tmp_path / f"{name}.png"
    locator.screenshot(path=str(path))
    docs = os.environ.get("REALIZ3D_PLAYGROUND_SHOTS")
    if docs and for_docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(docs) / f"playground_{name}.png")
    return Image.open(path).convert("RGB")


def loaded_images(scope) -> list[int]:
    """naturalWidth of every <img> in `scope` (0 = not loaded or broken)."""
    return scope.locator("img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")


def fill_job(page, form: str, **values: str) -> None:
    for name, value in values.items():
        page.locator(f"#{form} [data-field={name}]").fill(value)


# ---------------------------------------------------------------------------------------------------------


def test_page_is_served_with_its_files_and_a_strict_csp(embedded):
    for path in ("/", "/playground"):
        r = httpx.get(embedded.url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert 'type="importmap"' in r.text
    for path in (
        "/static/js/main.js",
        "/static/vendor/three/build/three.module.js",
        "/static/vendor/three/LICENSE",
    ):
        assert httpx.get(embedded.url + path).status_code == 200, path
    # A raw request line (clients normalise "..") cannot climb out of service/static.
    for target in ("/static/../api/app.py", "/static/%2e%2e/api/app.py", "/static/..%2fapi%2fapp.py"):
        status = raw_get_status(embedded.port, target)
        assert status == 404, (target, status)


def raw_get_status(port: int, target: str) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(64).decode("latin-1")
    return int(head.split()[1])


def test_multiview_from_the_page_grid_jobs_list_and_link_back(embedded, browser_factory, tmp_path):
    b = browser_factory(embedded.url)
    page = b.page
    fill_job(page, "mv-form", prompt="a red cube", num_views="2", steps="4", seed="7")
    page.locator("#mv-form fieldset.schedule").first.locator("[data-mode=split]").click()
    page.locator("#mv-submit").click()
    job = page.locator("#mv-results article.job")
    job.and_(page.locator("[data-ready=true]")).wait_for(timeout=JOB_TIMEOUT_MS)

    assert job.locator("[data-role=status]").inner_text() == "succeeded"
    assert job.locator("[data-role=steps]").inner_text() == "step 4 / 4"
    widths = loaded_images(job.locator(".view-grid"))
    assert len(widths) == 2 and all(w > 0 for w in widths), widths
    assert "seed 7" in job.locator(".result-meta").inner_text()
    downloads = job.locator(".downloads a").evaluate_all("as => as.map(a => a.getAttribute('download'))")
    assert {"grid.png", "cameras.json", "meta.json"} <= set(downloads)
    assert job.locator(".cameras tbody tr").count() == 2
    # A download link hands over the artifact's real bytes.
    png = job.locator(".view-grid a[download]").first.evaluate(
        "async a => Array.from(new Uint8Array(await (await fetch(a.href)).arrayBuffer()).slice(0, 8))"
    )
    assert bytes(png) == b"\x89PNG\r\n\x1a\n"
    shot(page.locator("#multiview"), tmp_path, "multiview")

    # The job is in this browser's list, with its status and timings; it survives a reload.
    job_id = job.get_attribute("data-job-id")
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    assert "succeeded" in row.inner_text() and "run " in row.inner_text()
    b.open()
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    assert "split 0.4" in row.inner_text()
    # Its link opens it again, grid and all.
    row.locator("a").click()
    page.locator(f"#mv-results article.job[data-job-id='{job_id}'][data-ready=true]").wait_for()
    assert all(w > 0 for w in loaded_images(page.locator("#mv-results .view-grid")))
    b.check_clean()


def test_compare_two_schedules_same_seed_at_phone_width(embedded, browser_factory, tmp_path):
    b = browser_factory(embedded.url, width=360, height=800)
    page = b.page
    fill_job(page, "mv-form", prompt="a blue sphere", num_views="1", steps="3")
    page.locator("#mv-compare").check()
    slots = page.locator("#mv-form fieldset.schedule")
    slots.nth(0).locator("[data-mode=synthetic]").click()
    assert slots.nth(1).is_visible()
    slots.nth(1).locator("[data-mode=real]").click()
    page.locator("#mv-submit").click()
    panels = page.locator("#mv-results .compare article.job")
    panels.nth(0).and_(page.locator("[data-ready=true]")).wait_for(timeout=JOB_TIMEOUT_MS)
    panels.nth(1).and_(page.locator("[data-ready=true]")).wait_for(timeout=JOB_TIMEOUT_MS)
    titles = [panels.nth(i).locator("h3").inner_text() for i in range(2)]
    assert titles[0].startswith("all synthetic") and titles[1].startswith("all real"), titles
    seeds = [panels.nth(i).locator(".result-meta").inner_text().split(" · ")[0] for i in range(2)]
    assert seeds[0] == seeds[1] and seeds[0].startswith("seed "), seeds
    assert all(w > 0 for w in loaded_images(page.locator("#mv-results")))
    # Nothing is wider than a 360 px phone, results included.
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    shot(page.locator("#multiview"), tmp_path, "compare_360px")
    b.check_clean()


def test_field_errors_from_the_api_show_next_to_their_field(embedded, browser_factory):
    b = browser_factory(embedded.url)
    page = b.page
    fill_job(page, "mv-form", num_views="9", steps="2")
    page.locator("#mv-submit").click()
    error = page.locator("#mv-form [data-error-for=num_views]")
    error.wait_for()
    assert "num_views" in error.inner_text() and "8" in error.inner_text()
    views = page.locator("#mv-num_views")
    assert views.get_attribute("aria-invalid") == "true"
    assert views.get_attribute("aria-describedby") == error.get_attribute("id")
    assert page.evaluate("document.activeElement.id") == "mv-num_views"
    assert page.locator("#mv-results article.job").count() == 0

    # The texture form without a mesh: the API's message lands next to the file input.
    page.locator("#tx-submit").click()
    mesh_error = page.locator("#tx-form [data-error-for=mesh]")
    mesh_error.wait_for()
    assert "mesh" in mesh_error.inner_text()

    # The block split: sent as {"split", "blocks"}; a server without block splits says so at the schedule.
    fill_job(page, "mv-form", num_views="1", steps="2")
    schedule = page.locator("#mv-form fieldset.schedule").first
    schedule.locator("[data-role=blocks]").fill("6")
    assert schedule.locator("[data-role=mode][value=split]").is_checked()
    with page.expect_request(lambda r: r.url.endswith("/v1/multiview")) as sent:
        page.locator("#mv-submit").click()
    assert sent.value.post_data_json["schedule"] == {"split": 0.4, "blocks": 6}
    response = sent.value.response()
    if response.status == 202:
        page.locator("#mv-results article.job[data-ready=true]").wait_for(timeout=JOB_TIMEOUT_MS)
    else:  # before the block split lands in the API (issue 12) it is a 422 on schedule.blocks
        assert response.status == 422, response.status
        schedule.locator("[data-error-for=schedule]").filter(has_text="schedule.blocks").wait_for()
    b.check_clean()


def test_step_caching_from_the_page(embedded, browser_factory):
    b = browser_factory(embedded.url)
    page = b.page
    assert page.locator("#mv-cache_interval").input_value() == "1"  # off unless asked
    fill_job(page, "mv-form", prompt="a green cone", num_views="1", steps="4", cache_interval="0")
    page.locator("#mv-submit").click()
    page.locator("#mv-form [data-error-for=cache_interval]").filter(has_text="greater than").wait_for()
    assert page.locator("#mv-cache_interval").get_attribute("aria-invalid") == "true"
    fill_job(page, "mv-form", cache_interval="3")
    with page.expect_request(lambda r: r.url.endswith("/v1/multiview")) as sent:
        page.locator("#mv-submit").click()
    assert sent.value.post_data_json["cache_interval"] == 3
    job = page.locator("#mv-results article.job")
    job.and_(page.locator("[data-ready=true]")).wait_for(timeout=JOB_TIMEOUT_MS)
    assert job.locator("[data-role=status]").inner_text() == "succeeded"
    assert "cache interval 3" in job.locator(".result-meta").inner_text()  # as the job ran it
    b.check_clean()


def test_every_control_is_labelled_and_the_forms_work_from_the_keyboard(embedded, browser_factory):
    b = browser_factory(embedded.url)
    page = b.page
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')].filter(e =>
            e.tagName === 'BUTTON' ? !e.textContent.trim() && !e.getAttribute('aria-label')
                                   : !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
        ).map(e => e.outerHTML)"""
    )
    assert unlabelled == []
    ids = page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids)), "duplicate ids break labels"

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    # The schedule's buttons are a radio group: arrow keys move the choice.
    schedule = page.locator("#mv-form fieldset.schedule").first
    schedule.locator("[data-role=mode][value=default]").focus()
    page.keyboard.press("ArrowRight")
    assert schedule.locator("[data-role=mode][value=split]").is_checked()
    # Enter in a field submits its form; the API's answer comes back to that field.
    page.locator("#mv-num_views").fill("0")
    page.locator("#mv-num_views").press("Enter")
    page.locator("#mv-form [data-error-for=num_views]").filter(has_text="greater than").wait_for()
    b.check_clean()


def test_cancel_from_the_page(embedded, browser_factory):
    b = browser_factory(embedded.url)
    page = b.page
    # Long enough that it is still running when the click lands (4x the default model's 32 px).
    fill_job(page, "mv-form", prompt="a long one", num_views="8", steps="150", resolution="64")
    page.locator("#mv-submit").click()
    job = page.locator("#mv-results article.job")
    job.locator("[data-role=steps]").filter(has_text="step").wait_for(timeout=JOB_TIMEOUT_MS)
    job.locator("[data-role=cancel]").click()
    job.and_(page.locator("[data-status=canceled]")).wait_for(timeout=60_000)
    message = job.locator(".job-message").inner_text()
    assert message.startswith("Canceled at step")
    step = int(message.split()[3])
    assert 1 <= step < 150, message
    assert job.locator("[data-role=cancel]").is_hidden()
    row = page.locator("#jobs-table tbody tr").first
    assert "canceled" in row.inner_text()
    b.check_clean()


def test_texture_upload_shows_the_textured_glb_in_the_3d_viewer(embedded, browser_factory, tmp_path):
    mesh = tmp_path / "box.glb"
    mesh.write_bytes(box_glb())
    b = browser_factory(embedded.url)
    page = b.page
    page.locator("#tx-mesh").set_input_files(str(mesh))
    # the view planning controls: empty, the request's defaults shown; a value the API refuses is said there
    for name in ("max_views", "coverage_target", "inpaint_steps"):
        control = page.locator(f"#tx-{name}")
        assert control.input_value() == "" and control.get_attribute("placeholder") == str(
            TextureRequest.model_fields[name].default
        )
    fill_job(page, "tx-form", prompt="a red box", num_views="2", steps="4", seed="3", inpaint_steps="0")
    page.locator("#tx-atlas").select_option("256")
    page.locator("#tx-submit").click()
    page.locator("#tx-form [data-error-for=inpaint_steps]").filter(has_text="greater than").wait_for()
    assert page.locator("#tx-inpaint_steps").get_attribute("aria-invalid") == "true"
    fill_job(page, "tx-form", inpaint_steps="3", max_views="4", coverage_target="0.99")
    page.locator("#tx-submit").click()
    job = page.locator("#tx-results article.job")
    job.and_(page.locator("[data-ready=true]")).wait_for(timeout=JOB_TIMEOUT_MS)
    # the job's last stage and its steps, as the API reports them (4 for the requested views, planned
    # views' calls add the 3 inpaint_steps asked each)
    steps = re.fullmatch(r"fill 100% · step (\d+) / (\d+)", job.locator("[data-role=steps]").inner_text())
    assert steps and steps[1] == steps[2] and int(steps[1]) > 4 and (int(steps[1]) - 4) % 3 == 0, steps
    viewer = job.locator(".viewer")
    viewer.and_(page.locator("[data-state=ready]")).wait_for()
    canvas = viewer.locator("canvas")

    # Not blank: the mesh covers a good part of the canvas and varies well above the flat background.
    before = np.asarray(shot(canvas, tmp_path, "texture_viewer"), dtype=np.float64)
    background = np.array([0xE9, 0xEC, 0xF1], dtype=np.float64)
    differs = np.abs(before - background).max(axis=-1) > 12
    assert differs.mean() > 0.05, f"only {differs.mean():.1%} of the canvas differs from the background"
    assert before.var(axis=(0, 1)).sum() > 100, before.var(axis=(0, 1))

    # Keyboard orbit: focus the canvas, arrows turn the model.
    canvas.focus()
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    after = np.asarray(shot(canvas, tmp_path, "texture_viewer_orbited"), dtype=np.float64)
    assert np.abs(after - before).mean() > 1.0

    assert all(w > 0 for w in loaded_images(job))  # atlas and views
    # the two requested views and the planned (inpainted) ones, and where the surface's colour came from
    shares = job.locator("[data-testid=surface-shares]").inner_text()
    found = re.fullmatch(
        r"surface: ([\d.]+)% from the 2 views · ([\d.]+)% inpainted from (\d+) planned views? · ([\d.]+)% filled"
        r" \(no view saw it\)",
        shares,
    )
    assert found, shares
    assert abs(float(found[1]) + float(found[2]) + float(found[4]) - 100) < 0.3
    assert 1 <= int(found[3]) <= 4 - 2  # max_views 4: two planned views at most
    assert len(loaded_images(job.locator(".view-grid"))) == 2 + int(found[3])
    downloads = job.locator(".downloads a").evaluate_all("as => as.map(a => a.getAttribute('download'))")
    assert {"textured.glb", "texture.png"} <= set(downloads)
    magic = job.locator(".downloads a[download='textured.glb']").evaluate(
        "async a => new TextDecoder().decode((await (await fetch(a.href)).arrayBuffer()).slice(0, 4))"
    )
    assert magic == "glTF"
    # the planning controls' values are the job's request, as the worker ran it
    meta = json.loads(
        job.locator(".downloads a[download='meta.json']").evaluate("async a => (await fetch(a.href)).text()")
    )
    request = meta["request"]
    assert (request["inpaint_steps"], request["max_views"], request["coverage_target"]) == (3, 4, 0.99)
    shot(page.locator("#tx-results"), tmp_path, "texture", for_docs=True)
    b.check_clean()


def test_api_key_is_kept_in_this_browser_and_other_clients_jobs_stay_hidden(embedded, browser_factory):
    b = browser_factory(embedded.url, key=None)
    page = b.page
    fill_job(page, "mv-form", num_views="1", steps="2")
    page.locator("#mv-submit").click()
    key_error = page.locator("#api-key-error")
    key_error.filter(has_text="API key").wait_for()
    assert page.locator("#api-key").get_attribute("aria-invalid") == "true"

    page.locator("#api-key").fill(KEYS[0])
    assert key_error.inner_text() == ""
    page.locator("#mv-submit").click()
    job = page.locator("#mv-results article.job")
    job.and_(page.locator("[data-ready=true]")).wait_for(timeout=JOB_TIMEOUT_MS)
    assert all(w > 0 for w in loaded_images(job))  # artifacts fetched with the key in a header
    assert page.evaluate("localStorage.getItem('realiz3d.apiKey')") == KEYS[0]
    assert not [u for u in b.requests if KEYS[0] in u], "the key must never be in a URL"
    b.check_clean()

    # Another client's browser sees none of it: its list is empty, the job's link is a 404 to it.
    other = browser_factory(embedded.url, key=KEYS[1])
    assert other.page.locator("#jobs-table tbody tr").count() == 0
    job_id = job.get_attribute("data-job-id")
    other.open(f"/#job={job_id}")
    other.page.locator("#page-error").filter(has_text=f"Job {job_id} does not exist").wait_for()
    assert other.page.locator("#mv-results article.job").count() == 0


# ---------------------------------------------------------------------------------------------------------
# 503, 429 and 413, from a gateway without auth and without any worker (it starts in seconds: no model).


@pytest.fixture(scope="module")
def gateway_without_workers(redis_server, service_launcher):
    # A Redis database that no worker serves; at most one submission a minute per client.
    server = service_launcher.gateway(redis_server.url(11), REALIZ3D_RATE_LIMIT_PER_MINUTE="1")
    yield server
    server.stop()


def test_gateway_serves_the_page_and_503_429_and_413_are_shown(
    gateway_without_workers, browser_factory, tmp_path
):
    b = browser_factory(gateway_without_workers.url, key=None)
    page = b.page
    page.locator("#service-status").filter(has_text="no worker").wait_for()
    page.locator("#mv-submit").click()
    form_error = page.locator("#mv-form .form-error")
    form_error.filter(has_text="cannot take the job").wait_for()
    assert "Retry in 2 s" in form_error.inner_text()
    assert "retry in" in page.locator("#mv-submit").inner_text()  # the button counts down

    # Over 1 submission a minute (a sliding window: the 503 above was counted): 429 with the real wait,
    # the seconds until the first submission leaves the window (the click waits out the 503's countdown).
    page.locator("#mv-submit").click()
    form_error.filter(has_text="Too many requests").wait_for()
    wait = re.search(r"Retry in (\d+) s", form_error.inner_text())
    assert wait and 45 <= int(wait.group(1)) <= 60, form_error.inner_text()

    # Over REALIZ3D_MAX_UPLOAD_BYTES (2 MiB in tests): the 413 is said at the upload field.
    big = tmp_path / "big.glb"
    big.write_bytes(b"\0" * (3 * 1024 * 1024))
    page.locator("#tx-mesh").set_input_files(str(big))
    page.locator("#tx-submit").click()
    mesh_error = page.locator("#tx-form [data-error-for=mesh]")
    mesh_error.filter(has_text="Too large").wait_for()
    b.check_clean()


def test_vendored_viewer_is_pinned_with_its_licence():
    vendor = Path(__file__).resolve().parents[1] / "service" / "static" / "vendor" / "three"
    manifest = (vendor / "VENDOR.md").read_text()
    assert "three@0.187.0" in manifest and "MIT" in (vendor / "LICENSE").read_text()
    for line in manifest.splitlines():
        if line.startswith("| `") and "|" in line[3:]:
            name, digest = (c.strip(" `") for c in line.strip("|").split("|")[:2])
            assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    own = Path(__file__).resolve().parents[1] / "service" / "static"
    for path in [*own.glob("*.html"), *own.glob("*.css"), *own.glob("js/*.js")]:
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path


def test_the_wheel_ships_every_playground_file(tmp_path):
    """What the API image installs is the wheel: every file of service/static must be in it."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # build from a copy: a build writes build/ and *.egg-info next to the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("engines", "service"):
        shutil.copytree(root / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "-w", str(tmp_path), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("realiz3d_serve-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    static = root / "service" / "static"
    expected = {
        f"service/static/{p.relative_to(static).as_posix()}" for p in static.rglob("*") if p.is_file()
    }
    assert expected and expected <= shipped, sorted(expected - shipped)


def test_a_newcomer_gets_the_model_examples_samples_and_the_schedule_explained(embedded, browser_factory):
    b = browser_factory(embedded.url, width=360, height=740)  # a phone
    page = b.page
    # What the page talks to: the shipped toy model, said plainly.
    note = page.locator("#model-note")
    note.wait_for()
    assert "realiz3d-default-trained (32 px views)" in note.inner_text()
    assert "32×32" in note.inner_text() and note.get_attribute("data-toy") == "true"
    page.locator("#about details summary").click()
    assert "block sites" in page.locator("#about details").inner_text()
    assert "0.4,blocks=6" in page.locator("#about details").inner_text()

    # The split rows are dimmed and unused until "Step split" is picked (touching one picks it).
    schedule = page.locator("#mv-form fieldset.schedule").first
    rows = schedule.locator(".split-row")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.inactive)") == ["true", "true"]
    assert schedule.locator("[data-role=split-out]").inner_text() == "unused"
    schedule.locator("[data-mode=real]").click()
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.inactive)") == ["true", "true"]
    schedule.locator("[data-mode=split]").click()
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.inactive)") == ["false", "false"]
    assert schedule.locator("[data-role=split-out]").inner_text() == "0.40"

    # An example prompt fills the prompt; the new job is scrolled into view on the phone.
    page.locator("#mv-form [data-example='a blue sphere']").click()
    assert page.locator("#mv-prompt").input_value() == "a blue sphere"
    fill_job(page, "mv-form", num_views="1", steps="2")
    page.locator("#mv-submit").click()
    job = page.locator("#mv-results article.job")
    job.wait_for()
    page.wait_for_function(
        "() => { const r = document.querySelector('#mv-results article.job').getBoundingClientRect();"
        " return r.top >= 0 && r.top < window.innerHeight; }"
    )

    # A sample mesh in one click (the same file as `realiz3d sample ball.glb`), and more file types offered.
    accept = page.locator("#tx-mesh").get_attribute("accept")
    assert all(ext in accept for ext in (".glb", ".gltf", ".zip", ".obj", ".ply"))
    page.locator("#tx-samples [data-sample=ball]").click()
    page.locator("#tx-sample-note").filter(has_text="ball.glb loaded").wait_for()
    assert page.locator("#tx-prompt").input_value() == "a red sphere"
    assert page.evaluate("document.querySelector('#tx-mesh').files[0].name") == "ball.glb"
    fill_job(page, "tx-form", num_views="1", steps="2")
    page.locator("#tx-atlas").select_option("256")
    with page.expect_response(lambda r: r.url.endswith("/v1/texture")) as answered:
        page.locator("#tx-submit").click()
    assert answered.value.status == 202, answered.value.text()
    page.locator("#tx-results article.job").wait_for()
    b.check_clean()


def test_readyz_says_warming_and_names_the_models(embedded):
    body = httpx.get(embedded.url + "/readyz").json()
    assert body["ready"] is True and body["warming"] is False
    assert body["models"] == [{"name": "realiz3d-default-trained", "resolution": 32}]
