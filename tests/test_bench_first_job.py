"""`realiz3d bench first-job` on a stand-in repository whose `make run` serves a tiny fake API.

The real run installs a venv (minutes, network); this checks what the benchmark does around it: clone, start
`make run` in its own session, wait for /healthz, submit the README's job, poll it to `succeeded`, count the
venv's packages, keep `make run`'s steps, write the report with the machine line, stop the service and
remove the clone.
"""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import time

import httpx
import pytest

from engines.bench.first_job import JOB, run
from engines.bench.machine import describe

pytestmark = pytest.mark.timeout(120)

SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

polls = {"n": 0}

class H(BaseHTTPRequestHandler):
    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            return self.reply({"status": "ok"})
        polls["n"] += 1
        self.reply({"id": "j1", "status": "succeeded" if polls["n"] >= 3 else "running"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        assert self.path == "/v1/multiview" and body["steps"] == 30, body
        if os.environ.get("FAKE_REFUSE"):
            self.send_response(503)
            self.end_headers()
            return self.wfile.write(b'{"error": {"code": "no_worker"}}')
        self.send_response(202)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"id": "j1"}')

    def log_message(self, *args):
        pass

print("2026-01-01 realiz3d.serve: listening", flush=True)
HTTPServer(("127.0.0.1", int(os.environ["FAKE_PORT"])), H).serve_forever()
"""

MAKEFILE = """
run:
\t@echo "==> [1/1] installing"
\tmkdir -p .venv/bin && printf '#!/bin/sh\\necho a==1\\necho b==2\\n' > .venv/bin/pip && chmod +x .venv/bin/pip
\tpython3 server.py
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "server.py").write_text(textwrap.dedent(SERVER))
    (repo / "Makefile").write_text(MAKEFILE)
    for args in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True)
    port = _free_port()
    monkeypatch.setenv("FAKE_PORT", str(port))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return repo, port, tmp_path / "tmp"


def test_first_job_times_a_fresh_clone_and_cleans_up(fake_repo, tmp_path):
    repo, port, tmp = fake_repo
    report = run(repo=repo, out_dir=tmp_path / "out", port=port, timeout_s=60)
    assert 0 < report["healthz_s"] <= report["first_job_s"]
    assert report["job"] == JOB and report["packages"] == 2
    assert report["log"][0] == "==> [1/1] installing" and "realiz3d.serve: listening" in report["log"][-1]
    md = (tmp_path / "out" / "first_job.md").read_text()
    assert f"| `/healthz` answering | {report['healthz_s']} |" in md
    assert describe(report["machine"]) in md
    assert json.loads((tmp_path / "out" / "first_job.json").read_text()) == report
    assert list(tmp.iterdir()) == []  # the clone is gone
    with pytest.raises(httpx.HTTPError):  # and the service is stopped
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_first_job_refuses_a_busy_port(fake_repo):
    repo, port, _ = fake_repo
    server = subprocess.Popen(["python3", str(repo / "server.py")])
    try:
        for _ in range(50):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        with pytest.raises(RuntimeError, match="in use"):
            run(repo=repo, out_dir=None, port=port, timeout_s=30)
    finally:
        server.terminate()
        server.wait()


def test_first_job_says_why_it_failed_with_make_runs_output(fake_repo, tmp_path, monkeypatch):
    repo, port, tmp = fake_repo
    monkeypatch.setenv("FAKE_REFUSE", "1")
    with pytest.raises(RuntimeError, match="answered 503") as failed:
        run(repo=repo, out_dir=tmp_path / "out", port=port, timeout_s=60)
    assert "no_worker" in str(failed.value) and "==> [1/1] installing" in str(failed.value)
    assert not (tmp_path / "out").exists() and list(tmp.iterdir()) == []
