"""Every entry point shares one engine cache, across real processes (issue 23's "done when").

- Four `realiz3d generate --backend onnx --engine-cache DIR` processes, four schedules, one shape, four
  PYTHONHASHSEEDs: ONE graph, exported by the first and a cache hit in the other three.
- `realiz3d build-engines`, then a `realiz3d worker` subprocess, then an embedded `realiz3d serve`
  subprocess, with no cache flag or cache env at all (the root comes from $REALIZ3D_HOME): ONE graph; the
  worker and the server take jobs with no new entry, and their Prometheus metrics show the hits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.client import Realiz3DClient
from tests.fixtures.redis_server import ROOT, ServiceLauncher
from tests.service_helpers import metric_value

pytestmark = pytest.mark.timeout(420)

SCHEDULES = ("0.4", "real", "synthetic", "0.7,blocks=6")


def base_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "REALIZ3D_HOME": str(home)}
    env.pop("REALIZ3D_ENGINE_CACHE_DIR", None)  # the rule's own default, not a test's override
    return env


def cli(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def graphs(root: Path) -> list[Path]:
    return sorted(root.rglob("unet.onnx"))


def test_four_generate_processes_with_four_schedules_leave_one_graph(tmp_path):
    cache = tmp_path / "cache"
    env = base_env(tmp_path / "home")
    summaries = []
    for seed, schedule in enumerate(SCHEDULES, start=1):
        out = cli(
            [
                "generate",
                "a cube",
                "--backend",
                "onnx",
                "--engine-cache",
                str(cache),
                "--device",
                "cpu",
                "--steps",
                "2",
                "--views",
                "2",
                "--schedule",
                schedule,
                "--out",
                str(tmp_path / f"out{seed}"),
            ],
            {**env, "PYTHONHASHSEED": str(seed)},
        )
        summaries.append(re.search(r"engine cache .*", out).group(0))
    assert summaries[0] == f"engine cache {cache}: onnx 0 hits, 1 built"
    assert summaries[1:] == [f"engine cache {cache}: onnx 1 hit, 0 built"] * 3, summaries
    (graph,) = graphs(cache)
    assert graph.parent.name.startswith("domains-v2-32x32-")


def test_build_engines_then_worker_then_embedded_serve_leave_one_graph(tmp_path, redis_server):
    home = tmp_path / "home"
    root = home / "engines"  # where the rule puts it: no --engine-cache, no REALIZ3D_ENGINE_CACHE_DIR
    env = base_env(home)
    # run from another folder: the old worker default (./realiz3d-engines) depended on it
    out = cli(["build-engines", "--backend", "onnx", "--device", "cpu"], env, cwd=tmp_path)
    assert f"1 entries (1 built, 0 cache hits) in {root}" in out, out
    (graph,) = graphs(root)
    built = graph.stat().st_mtime_ns

    service_env = {
        **env,
        "PYTHONUNBUFFERED": "1",
        "REALIZ3D_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "REALIZ3D_DEVICE": "cpu",
        "REALIZ3D_BACKEND": "onnx",
        "REALIZ3D_HEARTBEAT_SECONDS": "0.3",
        "REALIZ3D_HEARTBEAT_TTL_SECONDS": "5",
        "REALIZ3D_BATCH_MAX_JOBS": "2",
    }
    launcher = ServiceLauncher(tmp_path, service_env)
    request = {"prompt": "a teapot", "num_views": 4, "steps": 2, "seed": 0}
    try:
        broker = redis_server.url(12)
        gateway = launcher.gateway(broker)
        worker = launcher.worker(broker)
        launcher.wait_ready(worker)
        launcher.wait_ready(gateway)  # the gateway sees the worker's heartbeat
        with Realiz3DClient(gateway.url) as client:
            done = client.wait(client.submit_multiview(request).id, timeout=180)
            assert done.status == "succeeded", done.error
        scraped = httpx.get(worker.url + "/metrics").text
        assert metric_value(scraped, "realiz3d_engine_cache_hits_total", backend="onnx") >= 1
        assert metric_value(scraped, "realiz3d_engine_cache_misses_total", backend="onnx") == 0
        assert metric_value(scraped, "realiz3d_engine_build_seconds_count", backend="onnx") == 0
        worker.stop()
        gateway.stop()

        server = launcher.embedded()
        with Realiz3DClient(server.url) as client:
            done = client.wait(client.submit_multiview(request).id, timeout=180)
            assert done.status == "succeeded", done.error
            scraped = client.metrics()
        assert metric_value(scraped, "realiz3d_engine_cache_hits_total", backend="onnx") >= 1
        assert metric_value(scraped, "realiz3d_engine_cache_misses_total", backend="onnx") == 0
    finally:
        launcher.stop_all()
    assert graphs(root) == [graph] and graph.stat().st_mtime_ns == built  # no new entry, not rewritten
    assert not (tmp_path / "realiz3d-engines").exists() and not (ROOT / "realiz3d-engines").exists()
