"""`realiz3d bench first-job`: a new user's first minutes, from `git clone` to `/healthz` and to a finished job.

Clones `repo` (default: this checkout) into a temporary folder and runs the README's quick start there:
`make run` (a venv of its own, what serving needs, then the service in embedded mode on 127.0.0.1:`port`),
polls `/healthz`, submits the README's multiview job and polls it until it succeeds. pip's cache is off
(`PIP_NO_CACHE_DIR`), as on a fresh machine; pip's other configuration (indexes, find-links) is the
machine's and is recorded. Writes first_job.json/.md: both times, the venv's size and package count, the
service's first log lines and the machine. `make run` serves on port 8000, which must be free.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from engines.bench import OUT_DIR
from engines.bench.machine import describe, machine

ROOT = Path(__file__).resolve().parents[2]
JOB = {"prompt": "a red cube", "num_views": 4, "steps": 30, "schedule": "0.4,blocks=6"}  # the README's


def _tree_bytes(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _wait_for(url: str, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`make run` exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in time")


def run(
    repo: str | Path = ROOT,
    out_dir: str | Path | None = OUT_DIR,
    port: int = 8000,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """One timed run; the report (also written to `out_dir` unless None)."""
    base = f"http://127.0.0.1:{port}"
    try:
        httpx.get(f"{base}/healthz", timeout=1)
        raise RuntimeError(f"port {port} is in use: stop that service first (make run serves there)")
    except httpx.HTTPError:
        pass
    before = machine()
    tmp = Path(tempfile.mkdtemp(prefix="realiz3d-first-job-"))
    work, log = tmp / "fresh", tmp / "make-run.log"
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
    env.pop("VIRTUAL_ENV", None)
    proc = None
    try:
        t0 = time.monotonic()
        subprocess.run(["git", "clone", "-q", str(repo), str(work)], check=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["make", "run"],
                cwd=work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        _wait_for(f"{base}/healthz", proc, log, deadline)
        healthz_s = time.monotonic() - t0
        answer = httpx.post(f"{base}/v1/multiview", json=JOB, timeout=30)
        if answer.status_code != 202:
            raise RuntimeError(f"POST /v1/multiview answered {answer.status_code}: {answer.text[:300]}")
        job = answer.json()
        while True:
            status = httpx.get(f"{base}/v1/jobs/{job['id']}", timeout=30).json()["status"]
            if status == "succeeded":
                break
            if status in ("failed", "canceled") or time.monotonic() > deadline:
                raise RuntimeError(f"the first job ended {status}")
            time.sleep(0.5)
        job_s = time.monotonic() - t0
        venv = work / ".venv"
        freeze = subprocess.run(
            [str(venv / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True, check=True
        ).stdout
        log_lines = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if line.startswith("==>") or "realiz3d.serve" in line or "realiz3d.embedded" in line
        ]
        report = {
            "command": "realiz3d bench first-job",
            "healthz_s": round(healthz_s, 1),
            "first_job_s": round(job_s, 1),
            "job": JOB,
            "venv_mb": round(_tree_bytes(venv) / 1e6),
            "packages": len(freeze.split()),
            "pip_find_links": env.get("PIP_FIND_LINKS") or None,
            "log": [line[:160] for line in log_lines[:20]],
            "machine": before,
            "load_average_1min_after": machine().get("load_average_1min"),
        }
    except Exception as e:
        tail = (
            log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log: `make run` did not start)"
        )
        raise RuntimeError(f"first-job: {e}\n--- the end of `make run`'s output:\n{tail}") from e
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    if out_dir is not None:
        write_report(report, Path(out_dir))
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "first_job.json").write_text(json.dumps(report, indent=2) + "\n")
    r = report
    wheels = f"; pip's find-links: `{r['pip_find_links']}`" if r["pip_find_links"] else ""
    lines = [
        "# Time to first job, from a fresh clone (`realiz3d bench first-job`)",
        "",
        "`git clone` of this repository into an empty folder, then the README's `make run` (a venv of its own, "
        "the `engine` and `gateway` extras, the service in embedded mode), polling `/healthz`, then the "
        "README's multiview job (`" + json.dumps(r["job"]) + "`) polled until it succeeded. One run.",
        "",
        "| from `git clone` to | seconds |",
        "|---|---|",
        f"| `/healthz` answering | {r['healthz_s']} |",
        f"| the first job succeeded | {r['first_job_s']} |",
        "",
        f"The venv `make run` made: {r['venv_mb']} MB, {r['packages']} packages, pip's cache off{wheels}.",
        f"Machine, at the start: {describe(r['machine'])}; load average {r['load_average_1min_after']} at "
        "the end (a shared machine: other work slows the install and the job).",
        "",
        "What `make run` said (its steps and the service's first lines):",
        "",
        "```",
        *r["log"],
        "```",
    ]
    (out_dir / "first_job.md").write_text("\n".join(lines) + "\n")
