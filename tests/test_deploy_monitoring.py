"""deploy/: Prometheus config, alert rules and their unit tests (promtool), Grafana, load-test profiles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "realiz3d.json"

# The contract's metric names (CONTRACT.md, "Prometheus metrics").
CONTRACT_METRICS = {
    "realiz3d_http_request_duration_seconds",
    "realiz3d_jobs_total",
    "realiz3d_job_stage_seconds",
    "realiz3d_queue_depth",
    "realiz3d_unet_step_seconds",
    "realiz3d_unet_batch_size",
    "realiz3d_worker_busy",
    "realiz3d_gpu_memory_bytes",
}
PROMTOOL = shutil.which("promtool")
PROMTOOL_MISSING = "promtool missing - install Debian's `prometheus` package (apt-get install -y prometheus)"


@pytest.fixture
def needs_promtool() -> None:
    """Skip visibly without promtool on a developer machine; fail under CI (CI=true), where it must exist."""
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail(PROMTOOL_MISSING)
        pytest.skip(PROMTOOL_MISSING)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY)


def metric_names_in(expr: str) -> set[str]:
    names = set(re.findall(r"\brealiz3d_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_check_config_accepts_prometheus_yml() -> None:
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_check_rules_accepts_alerts_yml() -> None:
    proc = promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    proc = promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_unit_tests_fail_when_an_alert_is_broken(tmp_path: Path) -> None:
    # Guard against a test file that passes whatever the rules say: raise the error-rate threshold to 50%.
    rules = (DEPLOY / "alerts.yml").read_text().replace(") > 0.05", ") > 0.5")
    (tmp_path / "alerts.yml").write_text(rules)
    shutil.copy(DEPLOY / "alerts_test.yml", tmp_path / "alerts_test.yml")
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "Realiz3dJobErrorRateHigh" in proc.stdout + proc.stderr


def test_alerts_cover_latency_backlog_no_worker_and_error_rate_each_with_a_test() -> None:
    rules = [r for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "Realiz3dApiLatencyP99High",
        "Realiz3dJobLatencyP99High",
        "Realiz3dQueueBacklogGrowing",
        "Realiz3dNoReadyWorker",
        "Realiz3dJobErrorRateHigh",
    } <= names
    tested = {
        t["alertname"]
        for case in yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    assert names == tested, names ^ tested
    for r in rules:
        assert metric_names_in(r["expr"]) <= CONTRACT_METRICS, r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(r["annotations"])


def test_prometheus_scrapes_api_on_8000_and_workers_on_9100() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["realiz3d-api"]["static_configs"][0]["targets"] == ["api:8000"]
    (sd,) = jobs["realiz3d-worker"]["dns_sd_configs"]
    assert sd["port"] == 9100 and set(sd["names"]) == {"worker", "worker-cpu"}
    assert config["rule_files"] == ["alerts.yml"]


def test_dashboard_shows_stage_latency_throughput_queue_batch_and_gpu_memory() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = set().union(*(metric_names_in(e) for e in exprs))
    assert used <= CONTRACT_METRICS, used - CONTRACT_METRICS
    assert {
        "realiz3d_job_stage_seconds",
        "realiz3d_jobs_total",
        "realiz3d_queue_depth",
        "realiz3d_unet_batch_size",
        "realiz3d_gpu_memory_bytes",
    } <= used
    assert any("by (le, stage)" in e for e in exprs), "latency by stage"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] == "realiz3d-serve"


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((prov / "dashboards" / "realiz3d.yml").read_text())["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    dash = json.loads(DASHBOARD.read_text())
    datasource_var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert datasource_var["current"]["value"] == ds["uid"]


@pytest.mark.parametrize("profile", sorted((DEPLOY / "loadtest").glob("*.yaml")), ids=lambda p: p.stem)
def test_loadtest_profile_is_well_formed(profile: Path) -> None:
    data = yaml.safe_load(profile.read_text())
    assert data["name"] == profile.stem
    assert isinstance(data["concurrency"], int) and data["concurrency"] >= 1
    assert isinstance(data["duration_s"], int) and data["duration_s"] > 0
    assert set(data["mix"]) <= {"multiview", "texture"}
    assert abs(sum(data["mix"].values()) - 1.0) < 1e-9
    assert all(kind in data["request"] for kind, share in data["mix"].items() if share > 0)
