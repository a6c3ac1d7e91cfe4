"""`realiz3d serve` (HTTP API; embedded mode without --broker) and `realiz3d worker` (a Celery worker)."""

from __future__ import annotations

import argparse
import logging
import os

from service.commands.request_args import add_runtime_args
from service.commands.serve_banner import announce
from service.settings import API_PORT, Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the HTTP API (embedded queue + worker when no --broker is given)",
        description="Run the HTTP API. Without --broker: embedded mode, queue and worker in this process.",
    )
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help=f"port (default {API_PORT})")
    serve.add_argument("--broker", default=None, help="Redis URL, e.g. redis://localhost:6379/0")
    # the compute flags (embedded mode), with Settings' choices and help
    add_runtime_args(serve.add_argument_group("model and runtime (embedded mode)"), from_settings=True)
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a line per request (default: on in embedded mode, off with --broker; REALIZ3D_ACCESS_LOG)",
    )
    serve.set_defaults(handler=run_serve)

    worker = subparsers.add_parser(
        "worker",
        help="run a worker: load the model once, then run jobs from the broker",
        description="A Celery worker on the given Redis broker, with /metrics, /healthz, /readyz on its own port.",
    )
    worker.add_argument("--broker", default=None, help="Redis URL (or REALIZ3D_BROKER_URL)")
    worker.add_argument("--queues", default=None, help="comma-separated: multiview,texture")
    add_runtime_args(worker, from_settings=True)
    worker.add_argument("--metrics-port", type=int, default=None, help="port of /metrics (default 9100)")
    worker.set_defaults(handler=run_worker_command)


#: `realiz3d serve` flag -> Settings field (the compute ones apply in embedded mode)
SERVE_FLAGS = {
    "host": "host",
    "port": "port",
    "broker": "broker_url",
    "model": "model_dir",
    "backend": "backend",
    "adapters": "adapters",
    "device": "device",
    "precision": "precision",
    "engine_cache": "engine_cache_dir",
    "cuda_graphs": "cuda_graphs",
    "access_log": "access_log",
}


def _settings(args: argparse.Namespace, mapping: dict[str, str]) -> Settings:
    """Env (REALIZ3D_*) first, flags given on the command line override it; validated once here."""
    overrides = {
        field: getattr(args, flag) for flag, field in mapping.items() if getattr(args, flag, None) is not None
    }
    return Settings(**overrides)


def _check_device(device: str) -> None:
    """A one-line UserInputError for a device this machine or torch build lacks (`--device cuda` on a
    CPU-only torch), before the model loads in the background and fails there with a traceback."""
    from engines.runtime.torch_runner import resolve_device

    resolve_device(device)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    s = _settings(args, SERVE_FLAGS)
    if not s.broker_url:
        _check_device(s.device)  # embedded mode computes here: a device it cannot use is exit 2 now
    _logging()
    if s.broker_url and s.api_workers > 1:
        return _serve_gateway_processes(args, s)
    if s.broker_url:
        from service.api.app import create_gateway_app

        app = create_gateway_app(s)
    else:
        from service.embedded import create_embedded_app

        app = create_embedded_app(s)
    hub = app.state.context.hub

    from service.api.access_log import access_log_enabled

    mode = app.state.context.mode

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # noqa: ANN001 - signal handler signature
            hub.close_threadsafe()  # event streams end with a final event, then connections drain
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:  # noqa: ANN001 - uvicorn's signature
            await super().startup(sockets)
            if self.started:  # bound: say where
                announce(s, mode, access_log_enabled(s.access_log, mode))

    config = uvicorn.Config(
        app, host=s.host, port=s.port, log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    Server(config).run()
    return 0


def _serve_gateway_processes(args: argparse.Namespace, s: Settings) -> int:
    """`api_workers` gateway processes on one port (uvicorn's supervisor restarts one that dies). Each
    builds its app from the environment, so the command line's flags are passed on as REALIZ3D_* vars;
    metrics of all of them are aggregated (PROMETHEUS_MULTIPROC_DIR, a fresh folder unless set)."""
    import tempfile

    import uvicorn

    for flag, field in SERVE_FLAGS.items():
        if getattr(args, flag, None) is not None:
            os.environ["REALIZ3D_" + field.upper()] = str(getattr(args, flag))
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="realiz3d-metrics-")
    from service.api.access_log import access_log_enabled

    announce(s, "gateway", access_log_enabled(s.access_log, "gateway"))
    uvicorn.run(
        "service.commands.serving:gateway_process_app",
        factory=True,
        workers=s.api_workers,
        host=s.host,
        port=s.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


def gateway_process_app():  # noqa: ANN201 - a FastAPI app
    """One gateway process of several (uvicorn's factory, called in the process's main thread after uvicorn
    installed its signal handlers): on SIGTERM/SIGINT, event streams end with their final event, then
    uvicorn's own handler drains connections."""
    import signal

    from service.api.app import create_gateway_app

    _logging()  # this process's own access log lines, when on
    app = create_gateway_app(Settings())
    hub = app.state.context.hub
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous) -> None:  # noqa: ANN001 - signal handler signature
            hub.close_threadsafe()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)
    return app


def run_worker_command(args: argparse.Namespace) -> int:
    from service.worker import run_worker

    s = _settings(
        args,
        {
            "broker": "broker_url",
            "queues": "queues",
            "model": "model_dir",
            "backend": "backend",
            "adapters": "adapters",
            "device": "device",
            "precision": "precision",
            "engine_cache": "engine_cache_dir",
            "cuda_graphs": "cuda_graphs",
            "metrics_port": "worker_metrics_port",
        },
    )
    _check_device(s.device)
    _logging()
    return run_worker(s)
