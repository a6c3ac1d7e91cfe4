"""`realiz3d loadtest`: a short bounded session against a local service writes its report."""

from __future__ import annotations

import json

import pytest

from engines.bench.loadtest import parse_mix, percentile
from service.cli import main

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


def test_throughput_bench_alternates_both_configurations_and_reports_batch_sizes(redis_server, tmp_path):
    """`realiz3d bench throughput` end to end at toy size: two real stacks (redis-server, worker,
    gateway each) take turns; the report has both configurations, per-round ratios, the UNet bound and
    the batch-size histograms scraped from each worker's /metrics."""
    from engines.bench.throughput import run

    report = run(concurrency=2, jobs=4, steps=2, views=1, out_dir=tmp_path, name="tp", rounds=2)
    batched, unbatched = report["batched"], report["unbatched"]
    for summary in (batched, unbatched):
        assert summary["jobs_succeeded"] == 4 and summary["errors"] == {}
        assert len(summary["rounds_jobs_per_s"]) == 2
    assert len(report["round_ratios"]) == 2 and report["jobs_per_s_ratio"] > 0
    assert set(report["unet_ms_per_image_by_objects_per_call"]) == {1, 2}
    # Unbatched calls hold one 1-view job with CFG (2 images); batched calls may hold up to 2 jobs.
    assert unbatched["unet_batch_size_histogram"]["count"] == 4 * 2
    assert unbatched["mean_unet_batch_images"] == 2.0
    assert 2.0 <= batched["mean_unet_batch_images"] <= 4.0
    md = (tmp_path / "tp.md").read_text()
    assert md.count("| batched |") == 2 and "| unbatched | 8 |" in md  # results row, histogram row
    assert (tmp_path / "tp_batched_latency.png").exists()


@pytest.mark.parametrize("profile", ["smoke", "steady", "burst"])
def test_loadtest_reads_the_shipped_profiles(profile, monkeypatch, tmp_path):
    """`realiz3d loadtest URL --profile NAME`: deploy/loadtest/NAME.yaml sets the run; flags override it."""
    import yaml

    import engines.bench.loadtest as lt
    from service.cli import main

    seen = {}

    def fake_run(cfg, out_dir, name):  # noqa: ANN001, ANN202
        seen["cfg"] = cfg
        return {"jobs_succeeded": 1}

    monkeypatch.setattr(lt, "run_loadtest", fake_run)
    data = yaml.safe_load((lt.PROFILES_DIR / f"{profile}.yaml").read_text())
    assert main(["loadtest", "http://127.0.0.1:1", "--profile", profile, "--out", str(tmp_path)]) == 0
    cfg = seen["cfg"]
    assert cfg.concurrency == data["concurrency"] and cfg.duration_s == data["duration_s"]
    assert cfg.ramp_up_s == data.get("ramp_up_s", 0)
    assert cfg.mix == {k: v for k, v in data["mix"].items() if v > 0}
    assert cfg.steps == data["request"]["multiview"]["steps"]
    assert cfg.guidance_scale == data["request"]["multiview"]["guidance_scale"]
    if "texture" in data["request"]:
        assert cfg.atlas_size == data["request"]["texture"]["atlas_size"]
        assert cfg.texture_views == data["request"]["texture"]["num_views"]
    assert (
        main(
            ["loadtest", "http://127.0.0.1:1", "--profile", profile, "--concurrency", "3", "--duration", "5"]
        )
        == 0
    )
    assert seen["cfg"].concurrency == 3 and seen["cfg"].duration_s == 5


def test_loadtest_unknown_profile_is_one_line(capsys):
    from service.cli import main

    assert main(["loadtest", "http://127.0.0.1:1", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--profile nope: no such file (shipped profiles: burst, smoke, steady)" in err
