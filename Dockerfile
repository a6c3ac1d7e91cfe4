# syntax=docker/dockerfile:1.7
#
# Realiz3D Serve images. Targets:
#   api         slim gateway (FastAPI + Celery client): Python 3.11, no torch, no CUDA
#   worker      GPU worker: CUDA runtime base, CUDA build of torch, TensorRT from NVIDIA's index
#   worker-cpu  the same worker with CPU torch, for laptops and CI (the embedded default model)
#
#   docker build --target api        -t realiz3d-serve:0.1.0-api .
#   docker build --target worker     -t realiz3d-serve:0.1.0-worker .
#   docker build --target worker-cpu -t realiz3d-serve:0.1.0-worker-cpu .
#
# Every Python package is pinned: deploy/docker/constraints-*.txt are the locked dependency sets; torch and
# TensorRT are pinned by the build args below. No secret is needed to build, and none enters a layer.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG UBUNTU_IMAGE=ubuntu:24.04

# ---------------------------------------------------------------------------------------------------------
# wheel: build the project's own (pure Python) wheel once; the runtime stages install it without build tools.
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engines ./engines
COPY service ./service
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && ls /wheels/realiz3d_serve-*.whl

# ---------------------------------------------------------------------------------------------------------
# api: the gateway only.
FROM ${PYTHON_IMAGE} AS api
LABEL org.opencontainers.image.title="realiz3d-serve api" \
      org.opencontainers.image.description="Realiz3D Serve HTTP gateway (no torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/realiz3d \
    REALIZ3D_HOST=0.0.0.0 \
    REALIZ3D_PORT=8000 \
    REALIZ3D_ARTIFACT_DIR=/data/artifacts
RUN groupadd --system --gid 10001 realiz3d \
    && useradd --system --uid 10001 --gid realiz3d --home-dir /home/realiz3d --create-home \
       --shell /usr/sbin/nologin realiz3d \
    && mkdir -p /data/artifacts \
    && chown realiz3d:realiz3d /data/artifacts
COPY deploy/docker/constraints-api.txt /opt/realiz3d/constraints.txt
# Dependencies first (a layer that changes only when the lock does), then the project without deps.
RUN python -m venv /opt/venv \
    && pip install --requirement /opt/realiz3d/constraints.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/realiz3d_serve-*.whl \
    && pip check \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/realiz3d
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REALIZ3D_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["realiz3d"]
# Pass the broker (e.g. --broker redis://redis:6379/0): this image has no torch, so no embedded mode.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------------------
# worker: Ubuntu 24.04's Python 3.12 (inside pyproject's >=3.11,<3.13) in a venv, a non-root user, writable
# data dirs. worker-cpu below differs only in its base image and torch build.
FROM ${CUDA_IMAGE} AS worker
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG TENSORRT_VERSION=11.4.0.106
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
ARG NVIDIA_INDEX_URL=https://pypi.nvidia.com
LABEL org.opencontainers.image.title="realiz3d-serve worker" \
      org.opencontainers.image.description="Realiz3D Serve GPU worker (CUDA torch + TensorRT)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/realiz3d \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    REALIZ3D_BACKEND=tensorrt \
    REALIZ3D_DEVICE=cuda \
    REALIZ3D_WORKER_METRICS_PORT=9100 \
    REALIZ3D_ARTIFACT_DIR=/data/artifacts \
    REALIZ3D_ENGINE_CACHE_DIR=/var/cache/realiz3d/engines
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's own python3.12 build: its version moves with security updates of the pinned base image, so it
# is not pinned here (the base image tag pins the release).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 realiz3d \
    && useradd --system --uid 10001 --gid realiz3d --home-dir /home/realiz3d --create-home \
       --shell /usr/sbin/nologin realiz3d \
    && mkdir -p /data/artifacts /var/cache/realiz3d/engines /models \
    && chown realiz3d:realiz3d /data/artifacts /var/cache/realiz3d/engines
# The largest, least often changed layer first: torch's CUDA build and TensorRT (cu12, matching the base).
RUN python3 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}+${TORCH_CUDA}" \
    && pip install --extra-index-url "${NVIDIA_INDEX_URL}" "tensorrt-cu12==${TENSORRT_VERSION}"
COPY deploy/docker/constraints-worker.txt /opt/realiz3d/constraints.txt
RUN pip install --requirement /opt/realiz3d/constraints.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/realiz3d_serve-*.whl \
    && pip check \
    && python -c "import diffusers, transformers, tokenizers"
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/realiz3d
EXPOSE 9100
# /healthz: the worker process and its heartbeat are alive (model loading does not fail it).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REALIZ3D_WORKER_METRICS_PORT', '9100'), timeout=4)"]
# Celery's warm shutdown on SIGTERM lets the running job finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["realiz3d"]
CMD ["worker", "--broker", "redis://redis:6379/0", "--queues", "multiview,texture"]

# ---------------------------------------------------------------------------------------------------------
# worker-cpu: same worker, CPU torch, the embedded default model unless REALIZ3D_MODEL_DIR is set.
FROM ${UBUNTU_IMAGE} AS worker-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="realiz3d-serve worker-cpu" \
      org.opencontainers.image.description="Realiz3D Serve CPU worker (laptops, CI)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/realiz3d \
    REALIZ3D_BACKEND=torch \
    REALIZ3D_DEVICE=cpu \
    REALIZ3D_WORKER_METRICS_PORT=9100 \
    REALIZ3D_ARTIFACT_DIR=/data/artifacts \
    REALIZ3D_ENGINE_CACHE_DIR=/var/cache/realiz3d/engines
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Same reason as in the worker stage: the base image tag pins Ubuntu's python3.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 realiz3d \
    && useradd --system --uid 10001 --gid realiz3d --home-dir /home/realiz3d --create-home \
       --shell /usr/sbin/nologin realiz3d \
    && mkdir -p /data/artifacts /var/cache/realiz3d/engines /models \
    && chown realiz3d:realiz3d /data/artifacts /var/cache/realiz3d/engines
RUN python3 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}+cpu"
COPY deploy/docker/constraints-worker.txt /opt/realiz3d/constraints.txt
RUN pip install --requirement /opt/realiz3d/constraints.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/realiz3d_serve-*.whl \
    && pip check \
    && python -c "import diffusers, transformers, tokenizers"
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/realiz3d
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REALIZ3D_WORKER_METRICS_PORT', '9100'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["realiz3d"]
CMD ["worker", "--broker", "redis://redis:6379/0", "--queues", "multiview,texture"]
