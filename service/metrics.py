"""Prometheus metrics, exactly the names and labels of the contract (prefix `realiz3d_`).

Who counts what: the process that moves a job into a status counts it in `realiz3d_jobs_total` (the
gateway counts `queued` and cancels of queued jobs, the worker counts its runs' outcomes, and whichever
process fails a job outside a run, `worker_lost`, `no_worker` or the hard time limit, counts that), and
every transition is one atomic store step that only one process wins, so summing over all scraped
processes counts each terminal status of a job exactly once. The gateway reports queue depth; the worker reports
stage times, UNet steps and busy/GPU gauges on its own port. Where processes fork (uvicorn --workers,
gunicorn), set `PROMETHEUS_MULTIPROC_DIR` and `render()` aggregates all of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

HTTP_REQUEST_DURATION = Histogram(
    "realiz3d_http_request_duration_seconds",
    "HTTP request duration by route template, method and status code",
    ["route", "method", "status"],
    buckets=_SECONDS_BUCKETS,
)
JOBS_TOTAL = Counter("realiz3d_jobs_total", "Jobs that entered a status", ["kind", "status"])
JOB_STAGE_SECONDS = Histogram(
    "realiz3d_job_stage_seconds",
    "Seconds per job stage: queue_wait, text_encode, denoise, decode; texture jobs also load, unwrap, render, generate, bake, fill; total",
    ["kind", "stage"],
    buckets=_SECONDS_BUCKETS,
)
UNET_STEP_SECONDS = Histogram(
    "realiz3d_unet_step_seconds", "Seconds per denoising step", ["backend"], buckets=_STEP_BUCKETS
)
UNET_BATCH_SIZE = Histogram(
    "realiz3d_unet_batch_size", "Samples per UNet call", buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
)
WORKER_BUSY = Gauge(
    "realiz3d_worker_busy",
    "jobs the worker is running now (0 = idle; several with step batching)",
    multiprocess_mode="livesum",
)
GPU_MEMORY_BYTES = Gauge(
    "realiz3d_gpu_memory_bytes", "GPU memory allocated by the worker", multiprocess_mode="livesum"
)

# The compiled-engine cache (engines/runtime/engine_cache.py), per cache folder: backend "onnx" (ONNX
# graphs; the tensorrt backend's exports too) or "tensorrt" (engines). Fed by `watch_engine_cache`.
ENGINE_CACHE_HITS = Counter(
    "realiz3d_engine_cache_hits_total", "Engine cache lookups that loaded a built entry", ["backend"]
)
ENGINE_CACHE_MISSES = Counter(
    "realiz3d_engine_cache_misses_total",
    "Engine cache lookups that found no usable entry (an export or engine build followed)",
    ["backend"],
)
ENGINE_BUILD_SECONDS = Histogram(
    "realiz3d_engine_build_seconds",
    "Seconds per engine cache build (ONNX export, TensorRT engine build)",
    ["backend"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
ENGINE_CACHE_STALE = Counter(
    "realiz3d_engine_cache_stale_entries_total",
    "Entries of other library versions or cache formats found at a miss (never loaded; engines prune --stale)",
    ["backend"],
)

STAGES = ("queue_wait", "text_encode", "denoise", "decode", "bake", "total")


def _engine_cache_event(event: str, backend: str, seconds: float) -> None:
    if event == "hit":
        ENGINE_CACHE_HITS.labels(backend).inc()
    elif event == "miss":
        ENGINE_CACHE_MISSES.labels(backend).inc()
    elif event == "built":
        ENGINE_BUILD_SECONDS.labels(backend).observe(seconds)
    elif event == "stale":
        ENGINE_CACHE_STALE.labels(backend).inc()


def watch_engine_cache(backend: str) -> None:
    """Feed this process's engine cache events into the `realiz3d_engine_cache_*` metrics (idempotent),
    with zero-valued series for the cache folders `backend` uses, so a scrape shows 0 rather than nothing.
    Imports the engines lazily: a gateway-only process never calls this."""
    from engines.runtime.engine_cache import STATS

    STATS.add_listener(_engine_cache_event)
    for folder in {"onnx": ("onnx",), "tensorrt": ("onnx", "tensorrt")}.get(backend, ()):
        ENGINE_CACHE_HITS.labels(folder)
        ENGINE_CACHE_MISSES.labels(folder)


class QueueDepthCollector:
    """`realiz3d_queue_depth{queue}`, read from the job store at scrape time (no stale gauge to keep)."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self):  # noqa: ANN201 - prometheus_client collector protocol
        family = GaugeMetricFamily("realiz3d_queue_depth", "Jobs waiting per queue", labels=["queue"])
        try:
            for queue, depth in self._depths().items():
                family.add_metric([queue], depth)
        except Exception:  # noqa: BLE001 - a broker outage must not break the whole scrape
            pass
        yield family


def observe_job_timings(kind: str, timings: dict[str, float]) -> None:
    for stage, seconds in timings.items():
        if stage in STAGES:
            JOB_STAGE_SECONDS.labels(kind, stage).observe(seconds)


def update_gpu_memory() -> None:
    # Only if the worker already imported torch: the metrics module must not pull torch in.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        GPU_MEMORY_BYTES.set(torch.cuda.memory_allocated())


def render(extra_collectors: tuple = ()) -> tuple[bytes, str]:
    """The exposition text for this process, or for all processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = CollectorRegistry()
        registry.register(_DefaultRegistryView(REGISTRY))
    for collector in extra_collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _DefaultRegistryView:
    """Re-exposes the default registry inside a per-scrape registry that also holds scrape-time collectors."""

    def __init__(self, registry) -> None:  # noqa: ANN001
        self._registry = registry

    def collect(self):  # noqa: ANN201
        return self._registry.collect()
