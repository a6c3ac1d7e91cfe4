"""The chart, docker-compose.yml, the Dockerfile and deploy/ agree with service.settings.Settings.

Every REALIZ3D_* env name used anywhere in deployment must be a Settings field (a typo would be silently
ignored: Settings has extra="ignore"); every value must pass Settings' validation; ports and queues agree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import API_PORT, WORKER_METRICS_PORT, Settings
from tests.test_deploy_helm import VALUE_SETS, by_kind, manifests, workload

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "realiz3d"
PREFIX = "REALIZ3D_"
FIELDS = set(Settings.model_fields)


def field_of(env_name: str) -> str:
    assert env_name.startswith(PREFIX), env_name
    return env_name[len(PREFIX) :].lower()


def interpolate(value: Any) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} with VAR unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", str(value))


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_env(service: str) -> dict[str, str]:
    env = compose()["services"][service].get("environment", {})
    return {k: interpolate(v) for k, v in env.items()}


def chart_env(values_name: str, component: str) -> dict[str, Any]:
    """Env of a component's container: ConfigMap entries plus explicit env (valueFrom as None)."""
    (c,) = workload(values_name, component)["spec"]["template"]["spec"]["containers"]
    (cm,) = by_kind(values_name, "ConfigMap")
    assert c["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    env: dict[str, Any] = dict(cm["data"])
    env.update({e["name"]: e.get("value") for e in c["env"]})
    return env


def all_env_names() -> dict[str, set[str]]:
    """Where each REALIZ3D_* name is used -> the names."""
    found: dict[str, set[str]] = {}
    text_sources = [
        CHART / "values.yaml",
        CHART / "ci" / "gpu-values.yaml",
        ROOT / "docker-compose.yml",
        ROOT / "Dockerfile",
        *sorted((CHART / "templates").iterdir()),
    ]
    for path in text_sources:
        found[str(path.relative_to(ROOT))] = set(re.findall(r"\bREALIZ3D_[A-Z0-9_]+\b", path.read_text()))
    for values_name in VALUE_SETS:
        names = set()
        for doc in manifests(values_name):
            names |= set(re.findall(r"\bREALIZ3D_[A-Z0-9_]+\b", yaml.safe_dump(doc)))
        found[f"rendered chart ({values_name})"] = names
        # values.yaml `settings` keys become REALIZ3D_<KEY>.
        for source in (CHART / "values.yaml", VALUE_SETS[values_name]):
            if source is not None:
                settings = (yaml.safe_load(source.read_text()) or {}).get("settings", {})
                found.setdefault(f"{source.name} settings", set()).update(
                    PREFIX + k.upper() for k in settings
                )
    return found


def test_every_realiz3d_env_name_in_deployment_files_is_a_settings_field() -> None:
    unknown = {
        where: sorted(n for n in names if field_of(n) not in FIELDS)
        for where, names in all_env_names().items()
    }
    unknown = {k: v for k, v in unknown.items() if v}
    assert not unknown, f"not fields of service.settings.Settings: {unknown}"
    assert sum(len(v) for v in all_env_names().values()) > 20  # the scan found the env names


def test_values_schema_settings_keys_are_settings_fields() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = set(schema["properties"]["settings"]["properties"])
    assert keys and keys <= FIELDS, keys - FIELDS


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
@pytest.mark.parametrize("component", ["api", "worker"])
def test_chart_env_values_pass_settings_validation(values_name: str, component: str) -> None:
    env = chart_env(values_name, component)
    plain = {field_of(k): v for k, v in env.items() if k.startswith(PREFIX) and v is not None}
    # $(VAR) references and the downward API are resolved by Kubernetes at run time.
    Settings(**plain)


@pytest.mark.parametrize("service", ["api", "worker", "worker-cpu"])
def test_compose_env_values_pass_settings_validation(service: str) -> None:
    env = compose_env(service)
    Settings(**{field_of(k): v for k, v in env.items() if k.startswith(PREFIX)})


def test_api_port_agrees_everywhere() -> None:
    assert Settings.model_fields["port"].default == API_PORT == 8000
    for values_name in VALUE_SETS:
        (c,) = workload(values_name, "api")["spec"]["template"]["spec"]["containers"]
        assert c["ports"][0]["containerPort"] == API_PORT
        assert c["args"][c["args"].index("--port") + 1] == str(API_PORT)
        assert chart_env(values_name, "api")["REALIZ3D_PORT"] == str(API_PORT)
    api = compose()["services"]["api"]
    assert f"{API_PORT}:{API_PORT}" in api["ports"]
    assert api["command"][api["command"].index("--port") + 1] == str(API_PORT)
    assert compose_env("api")["REALIZ3D_PORT"] == str(API_PORT)
    assert f"127.0.0.1:{API_PORT}/healthz" in str(api["healthcheck"]["test"])
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    api_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "realiz3d-api")
    assert api_job["static_configs"][0]["targets"] == [f"api:{API_PORT}"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {API_PORT}" in dockerfile and f"REALIZ3D_PORT={API_PORT}" in dockerfile


def test_worker_metrics_port_agrees_everywhere() -> None:
    assert Settings.model_fields["worker_metrics_port"].default == WORKER_METRICS_PORT == 9100
    for values_name in VALUE_SETS:
        (c,) = workload(values_name, "worker")["spec"]["template"]["spec"]["containers"]
        assert c["ports"] == [{"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"}]
        assert chart_env(values_name, "worker")["REALIZ3D_WORKER_METRICS_PORT"] == str(WORKER_METRICS_PORT)
        (svc,) = [s for s in by_kind(values_name, "Service") if s["metadata"]["name"].endswith("-worker")]
        assert svc["spec"]["ports"][0]["port"] == WORKER_METRICS_PORT
    for service in ("worker", "worker-cpu"):
        assert compose_env(service)["REALIZ3D_WORKER_METRICS_PORT"] == str(WORKER_METRICS_PORT)
        assert f"127.0.0.1:{WORKER_METRICS_PORT}/readyz" in str(
            compose()["services"][service]["healthcheck"]["test"]
        )
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    worker_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "realiz3d-worker")
    assert worker_job["dns_sd_configs"][0]["port"] == WORKER_METRICS_PORT
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count(f"EXPOSE {WORKER_METRICS_PORT}") == 2
    assert dockerfile.count(f"REALIZ3D_WORKER_METRICS_PORT={WORKER_METRICS_PORT}") == 2


def test_queues_agree_between_settings_chart_keda_and_compose() -> None:
    queues = Settings().queue_names
    assert queues == ["multiview", "texture"]
    for values_name in VALUE_SETS:
        env = chart_env(values_name, "worker")
        assert env["REALIZ3D_QUEUES"].split(",") == queues
        (c,) = workload(values_name, "worker")["spec"]["template"]["spec"]["containers"]
        assert c["args"][c["args"].index("--queues") + 1].split(",") == queues
    (scaled,) = by_kind("gpu", "ScaledObject")
    assert [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]] == queues
    for service in ("worker", "worker-cpu"):
        cmd = compose()["services"][service]["command"]
        assert cmd[cmd.index("--queues") + 1].split(",") == queues
        assert compose_env(service)["REALIZ3D_QUEUES"].split(",") == queues


def test_broker_url_reaches_api_and_worker_args_from_the_same_env() -> None:
    for values_name in VALUE_SETS:
        for component in ("api", "worker"):
            (c,) = workload(values_name, component)["spec"]["template"]["spec"]["containers"]
            assert c["args"][c["args"].index("--broker") + 1] == "$(REALIZ3D_BROKER_URL)"
            broker = next(e for e in c["env"] if e["name"] == "REALIZ3D_BROKER_URL")
            assert "secretKeyRef" in broker["valueFrom"]
    for service in ("api", "worker", "worker-cpu"):
        cmd = compose()["services"][service]["command"]
        assert (
            cmd[cmd.index("--broker") + 1]
            == compose_env(service)["REALIZ3D_BROKER_URL"]
            == "redis://redis:6379/0"
        )


def test_artifact_engine_and_model_paths_agree_with_mounts() -> None:
    for values_name in VALUE_SETS:
        for component in ("api", "worker"):
            env = chart_env(values_name, component)
            (c,) = workload(values_name, component)["spec"]["template"]["spec"]["containers"]
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            assert env["REALIZ3D_ARTIFACT_DIR"] == mounts["artifacts"]
            if component == "worker":
                assert env["REALIZ3D_ENGINE_CACHE_DIR"] == mounts["engine-cache"]
                if "model" in mounts:
                    assert env["REALIZ3D_MODEL_DIR"] == mounts["model"]
                else:
                    assert "REALIZ3D_MODEL_DIR" not in env
    for service in ("api", "worker", "worker-cpu"):
        env = compose_env(service)
        volumes = compose()["services"][service]["volumes"]
        assert f"artifacts:{env['REALIZ3D_ARTIFACT_DIR']}" in volumes
        if "REALIZ3D_ENGINE_CACHE_DIR" in env:
            assert f"engine-cache:{env['REALIZ3D_ENGINE_CACHE_DIR']}" in volumes
