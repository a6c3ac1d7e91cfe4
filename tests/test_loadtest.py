"""`realiz3d loadtest`: a short bounded session against a local service writes its report."""

from __future__ import annotations

import json

import pytest

from service.cli import main
from service.loadtest import parse_mix, percentile

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def embedded(service_launcher):
    server = service_launcher.gateway(None, REALIZ3D_BROKER_URL="", REALIZ3D_BATCH_MAX_JOBS="4")
    service_launcher.wait_ready(server)
    yield server
    server.stop()


def test_loadtest_runs_a_bounded_mixed_session_and_writes_json_and_plots(embedded, tmp_path, capsys):
    args = ["loadtest", embedded.url, "--jobs", "4", "--concurrency", "2", "--steps", "2", "--views", "2"]
    args += ["--atlas", "64", "--mix", "multiview:0.5,texture:0.5", "--out", str(tmp_path), "--name", "lt"]
    assert main(args) == 0
    report = json.loads((tmp_path / "lt.json").read_text())
    assert report["jobs_submitted"] == 4 and report["jobs_succeeded"] == 4
    assert report["errors"] == {}
    assert report["jobs_per_s"] > 0
    assert report["latency_s"]["p50"] <= report["latency_s"]["p99"]
    assert len(report["samples"]) == 4 and all(s["queue_wait_s"] is not None for s in report["samples"])
    assert (tmp_path / "lt_latency.png").stat().st_size > 0
    assert (tmp_path / "lt_throughput.png").stat().st_size > 0
    assert '"jobs_per_s"' in capsys.readouterr().out


@pytest.mark.parametrize("mix", ["pictures:1", "multiview:x", "multiview:0", "texture:-1"])
def test_bad_job_mix_is_a_one_line_error(mix, capsys):
    assert main(["loadtest", "http://127.0.0.1:9", "--jobs", "1", "--mix", mix]) == 2
    assert "job mix" in capsys.readouterr().err


def test_mix_is_normalised_and_percentiles_interpolate():
    assert parse_mix("multiview:3,texture:1") == {"multiview": 0.75, "texture": 0.25}
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([], 0.5) is None
