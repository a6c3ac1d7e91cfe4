"""Chart rules that keep a multi-node, autoscaled install from breaking at run time (issue 15): storage
that every replica can use, scale from zero that can really scale, a drain that covers a job."""

from __future__ import annotations

import pytest

from tests.test_deploy_helm import CHART, NAMESPACE, RELEASE, by_kind, helm, workload


def render(values: dict) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def env_of(values_name: str, component: str) -> dict:
    (c,) = workload(values_name, component)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_emptydir_artifacts_with_the_local_store_fail_the_render():
    with pytest.raises(helm.HelmError, match="own emptyDir"):
        render({"persistence": {"artifacts": {"enabled": False}}})
    render(
        {
            "persistence": {"artifacts": {"enabled": False}},
            "settings": {"artifact_store": "s3", "s3_bucket": "b"},
        }
    )


def test_a_shared_read_write_once_engine_cache_fails_with_autoscaled_workers():
    values = {
        "worker": {"engineCache": {"type": "shared", "accessModes": ["ReadWriteOnce"]}, "replicaCount": 2}
    }
    with pytest.raises(helm.HelmError, match="Multi-Attach"):
        render(values)


def test_production_workers_get_an_engine_cache_per_pod_and_artifacts_in_s3():
    spec = workload("gpu", "worker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["engine-cache"]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]  # one per pod: never attached twice
    assert not [p for p in by_kind("gpu", "PersistentVolumeClaim") if "engine-cache" in p["metadata"]["name"]]
    for component in ("api", "worker"):
        env = env_of("gpu", component)
        assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "realiz3d-s3"
        assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "realiz3d-s3"
    (cm,) = by_kind("gpu", "ConfigMap")
    assert cm["data"]["REALIZ3D_ARTIFACT_STORE"] == "s3" and cm["data"]["REALIZ3D_S3_BUCKET"]


def test_scale_from_zero_needs_queue_admission():
    values = {"worker": {"keda": {"enabled": True, "minReplicaCount": 0}}}
    with pytest.raises(helm.HelmError, match="admission=queue"):
        render(values)
    render({**values, "settings": {"admission": "queue"}})
    (scaled,) = by_kind("gpu", "ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == 0
    (cm,) = by_kind("gpu", "ConfigMap")
    assert cm["data"]["REALIZ3D_ADMISSION"] == "queue"


def test_the_worker_grace_period_covers_the_soft_time_limit():
    spec = workload("default", "worker")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 1900 + 60  # job_time_limit + 60 s by default
    with pytest.raises(helm.HelmError, match="shorter than settings.job_soft_time_limit"):
        render({"worker": {"terminationGracePeriodSeconds": 600}})


def test_replica_counts_use_helms_key_and_probes_bind_for_the_kubelet():
    out = render({"api": {"replicaCount": 4}, "worker": {"replicaCount": 3}})
    assert "replicas: 4" in next(t for p, t in out.items() if p.endswith("api-deployment.yaml"))
    assert "replicas: 3" in next(t for p, t in out.items() if p.endswith("worker-deployment.yaml"))
    assert env_of("default", "worker")["REALIZ3D_WORKER_PROBE_HOST"] == "0.0.0.0"


def test_metrics_can_require_a_token_the_servicemonitor_sends():
    assert env_of("gpu", "api")["REALIZ3D_METRICS_TOKEN"]["secretKeyRef"]["name"] == "realiz3d-metrics-token"
    (monitor,) = by_kind("gpu", "ServiceMonitor")
    api = next(e for e in monitor["spec"]["endpoints"] if e["port"] == "http")
    assert api["authorization"]["credentials"] == {"name": "realiz3d-metrics-token", "key": "metrics-token"}
