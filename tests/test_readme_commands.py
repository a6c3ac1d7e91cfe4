"""The README's command blocks run as written, and every `realiz3d` command in the README and docs parses.

- The install block (`make run`, `make test`) is checked with `make -n` (running it would install a venv and
  serve for ever): `run` installs the engine and gateway extras only, `test` the dev toolchain.
- Every other ```bash block runs verbatim with bash -e -o pipefail, in an empty folder whose `.venv` is this
  test's venv, against `realiz3d serve` (embedded mode) on a free port instead of 8000: the curl blocks
  (multiview and texture jobs, events, artifacts, cancel, metrics) and the CLI block (sample, generate,
  texture, bake, render). Its log says where it listens, loading/ready and one access line per request.
- Every `realiz3d ...` in a fenced block of README.md or docs/**/*.md parses with the CLI's own parser,
  required arguments and all; an inline `realiz3d ...` mention names only flags and choices that exist.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

pytestmark = pytest.mark.timeout(600)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_has_the_blocks_this_test_runs():
    blocks = bash_blocks(README.read_text())
    assert any("make run" in b for b in blocks)
    runnable = [b for b in blocks if "make run" not in b]
    text = "\n".join(runnable)
    for needed in ("/v1/multiview", "/v1/texture", "/events", "/artifacts/", "DELETE", "/metrics", "/readyz"):
        assert needed in text, needed
    for command in ("sample", "generate", "texture", "bake", "render"):
        assert f".venv/bin/realiz3d {command} " in text, command
    assert "<id>" not in text  # a placeholder breaks when pasted: ids are captured in $id


def test_make_run_installs_serving_only_and_make_test_the_toolchain(tmp_path):
    venv = tmp_path / "venv"  # absent: make prints the install steps
    run = subprocess.run(["make", "-n", "run", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert '-e ".[engine,gateway]"' in run.stdout and ".[dev]" not in run.stdout, run.stdout
    assert "-q " not in run.stdout  # pip shows its progress
    assert "realiz3d serve" in run.stdout
    test = subprocess.run(["make", "-n", "test", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    assert '-e ".[dev]"' in test.stdout and "pytest" in test.stdout and "ruff check" in test.stdout


def test_readme_blocks_run_as_written(service_launcher, tmp_path):
    server = service_launcher.embedded()
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))  # `.venv/bin/realiz3d` as after `make run`
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    blocks = [b for b in bash_blocks(README.read_text()) if "make run" not in b]
    outputs = []
    for block in blocks:
        script = block.replace("localhost:8000", f"localhost:{server.port}")
        r = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert r.returncode == 0, f"{block}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        outputs.append(r.stdout)
    out = "\n".join(outputs)
    assert '"status":"succeeded"' in out  # the multiview job, read after its event stream ended
    assert "event: status" in out and "event: progress" in out
    assert "realiz3d_jobs_total{" in out
    assert (work / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (work / "ball_textured.glb").read_bytes()[:4] == b"glTF"
    for made in (
        "out/cube/grid.png",
        "out/ball/textured.glb",
        "out/rebake/texture.png",
        "out/maps/view_00.png",
    ):
        assert (work / made).is_file(), made

    # The server said where it is, what it was doing, and logged each request.
    log = server.log.read_text()
    url = f"http://127.0.0.1:{server.port}"
    assert f"listening on {url} (embedded mode" in log, log[-3000:]
    for line in (f"playground  {url}/", f"API docs    {url}/docs", f"metrics     {url}/metrics"):
        assert line in log, line
    assert "loading the model" in log and re.search(r"ready: \S+ loaded and warmed up in [\d.]+ s", log)
    assert re.search(r"realiz3d\.access: POST /v1/multiview 202 [\d.]+ ms", log)
    assert re.search(r"realiz3d\.access: POST /v1/texture 202 [\d.]+ ms", log)


def doc_commands() -> list[tuple[str, str, bool]]:
    """(file, arguments after `realiz3d`, fenced) for every realiz3d command in the README and docs."""
    found = []
    for path in [README, *sorted((ROOT / "docs").glob("**/*.md"))]:
        text = path.read_text()
        name = str(path.relative_to(ROOT))
        for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip().removeprefix("$ ")
                if m := re.match(r"^(?:\S*/)?realiz3d\s+(.*)$", line):
                    found.append((name, m.group(1), True))
        for span in re.findall(r"`((?:\S*/)?realiz3d [^`]+)`", text):
            found.append((name, re.sub(r"^(?:\S*/)?realiz3d\s+", "", span.replace("\n", " ")), False))
    return found


def test_every_documented_command_parses():
    from service.cli import build_parser

    parser = build_parser()
    commands = doc_commands()
    assert len(commands) > 50
    problems = []
    for name, args, fenced in commands:
        if any(t in args for t in ("|", "...", "[", "<", "&&", ";", "$(")):
            continue  # a synopsis (choices, optional parts), not one command
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args(shlex.split(args))
        except SystemExit as e:
            message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else str(e.code)
            # an inline mention may leave out what a full command needs (`realiz3d bake` in prose)
            partial = "required" in message or "expected one argument" in message
            if e.code and (fenced or not partial):
                problems.append(f"{name}: realiz3d {args}\n    {message}")
    assert not problems, "\n".join(problems)
