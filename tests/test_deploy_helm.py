"""The Helm chart: renders, lints strict, and every manifest validates against Kubernetes' schemas.

Offline: helm-python-sdk (Helm's Go library) renders and lints; kubernetes-validate checks built-in kinds
(strict: unknown fields fail); CRD kinds (ScaledObject, ServiceMonitor) are checked by the schemas kept in
tests/schemas/.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed (pip install -e .[dev])")
kv_utils = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate not installed")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "realiz3d"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RELEASE, NAMESPACE = "rz", "realiz3d"

# The values files CI renders: the defaults (CPU worker) and the GPU production shape.
VALUE_SETS = {"default": None, "gpu": CHART / "ci" / "gpu-values.yaml"}
KUBE_VERSIONS = ["1.30.0", kv_utils.latest_version()]
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring-servicemonitor-v1.json",
}


def load_values(name: str) -> dict[str, Any] | None:
    path = VALUE_SETS[name]
    return None if path is None else yaml.safe_load(path.read_text())


@cache
def _render(name: str) -> tuple[tuple[str, str], ...]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values=load_values(name), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return tuple(sorted(out.items()))


def rendered_files(name: str) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included) for one value set."""
    return dict(_render(name))


def manifests(name: str) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object for one value set."""
    docs: list[dict[str, Any]] = []
    for path, text in rendered_files(name).items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(name: str, kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests(name) if m["kind"] == kind]


def workload(name: str, component: str) -> dict[str, Any]:
    (dep,) = [
        m
        for m in by_kind(name, "Deployment")
        if m["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return dep


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_chart_lints_strict_without_warnings(values_name: str) -> None:
    report = helm.lint(
        CHART, load_values(values_name), strict=True, namespace=NAMESPACE, kube_version="v1.30.0"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not problems, (report["errors"], problems)


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_values_pass_the_chart_values_schema(values_name: str) -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.schema is not None, "values.schema.json missing"
        chart.validate_schema(load_values(values_name))


def test_values_schema_rejects_unknown_setting_and_wrong_type() -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match="not_a_setting"):
            chart.validate_schema({"settings": {"not_a_setting": 1}})
        with pytest.raises(helm.HelmValuesError, match="gpu"):
            chart.validate_schema({"worker": {"gpu": {"enabled": "yes"}}})


def test_external_redis_without_url_fails_to_render_with_a_clear_message() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError, match="redis.external.url"):
        chart.render(values={"redis": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_manifest_validates_strict_against_kubernetes_schemas(
    values_name: str, kube_version: str
) -> None:
    checked, errors = 0, []
    for doc in manifests(values_name):
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            continue  # test_crd_manifests_match_schemas_kept_in_repo
        try:
            kv_utils.validate(doc, kube_version, strict=True)
            checked += 1
        except kv_utils.SchemaNotFoundError as e:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: no schema: {e.message}")
        except kv_utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
    assert not errors, "\n".join(errors)
    assert checked >= 12


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_crd_manifests_match_schemas_kept_in_repo(values_name: str) -> None:
    known_crd_groups = {"keda.sh", "monitoring.coreos.com"}
    for doc in manifests(values_name):
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
            jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
        else:
            assert doc["apiVersion"].split("/")[0] not in known_crd_groups, f"no repo schema for {key}"


def test_gpu_values_enable_gpu_ingress_hpa_keda_and_servicemonitor() -> None:
    kinds = {m["kind"] for m in manifests("gpu")}
    assert {"Ingress", "HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor"} <= kinds
    worker = workload("gpu", "worker")
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-worker")
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    # KEDA owns the worker replica count, the HPA the api's.
    assert "replicas" not in worker["spec"]
    assert "replicas" not in workload("gpu", "api")["spec"]
    (scaled,) = by_kind("gpu", "ScaledObject")
    assert {t["metadata"]["listName"] for t in scaled["spec"]["triggers"]} == {"multiview", "texture"}
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]


def test_default_values_are_cpu_only_with_no_crds() -> None:
    kinds = {m["kind"] for m in manifests("default")}
    assert not kinds & {"Ingress", "HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor"}
    (container,) = workload("default", "worker")["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert container["image"].endswith("-worker-cpu")


def test_worker_probes_use_readyz_and_healthz_on_the_metrics_port() -> None:
    for values_name in VALUE_SETS:
        (c,) = workload(values_name, "worker")["spec"]["template"]["spec"]["containers"]
        assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        # Model load + warm-up (+ an engine build) gets minutes before liveness applies.
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_model_volume_is_read_only_and_engine_cache_is_mounted() -> None:
    spec = workload("gpu", "worker")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["model"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"]["readOnly"] is True
    assert "ephemeral" in volumes["engine-cache"]  # a claim per pod, not one RWO claim for every replica
    assert "engine-cache" in mounts and "artifacts" in mounts


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_pod_runs_non_root_read_only_with_all_capabilities_dropped(values_name: str) -> None:
    pods = [m for m in manifests(values_name) if m["kind"] in {"Deployment", "StatefulSet"}]
    assert len(pods) == 3  # api, worker, redis
    for workload_ in pods:
        spec = workload_["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]
            writable = {m["mountPath"] for m in c["volumeMounts"]}
            if c["name"] != "redis":
                assert "/tmp" in writable, c["name"]


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_pdbs_and_network_policies_cover_every_component(values_name: str) -> None:
    pdb_selectors = [
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in by_kind(values_name, "PodDisruptionBudget")
    ]
    assert sorted(pdb_selectors) == ["api", "worker"]
    policies = by_kind(values_name, "NetworkPolicy")
    covered = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in policies}
    assert covered == {"api", "worker", "redis"}
    for p in policies:
        assert set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_redis_statefulset_persists_with_append_only_file() -> None:
    (sts,) = by_kind("default", "StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_artifacts_volume_is_one_read_write_many_claim_shared_by_api_and_workers() -> None:
    (pvc,) = [
        p for p in by_kind("default", "PersistentVolumeClaim") if p["metadata"]["name"].endswith("-artifacts")
    ]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for component in ("api", "worker"):
        volumes = {
            v["name"]: v for v in workload("default", component)["spec"]["template"]["spec"]["volumes"]
        }
        assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_notes_render_with_the_release_names(values_name: str) -> None:
    notes = next(text for path, text in rendered_files(values_name).items() if path.endswith("NOTES.txt"))
    assert f"deployment/{RELEASE}-realiz3d-worker" in notes
    assert "/v1/multiview" in notes
