"""What `realiz3d serve` says once it listens: where the API, the playground, the docs and the metrics are."""

from __future__ import annotations

import logging

from service.settings import Settings

log = logging.getLogger("realiz3d.serve")


def base_url(host: str, port: int) -> str:
    """The URL a person on this machine opens: a wildcard bind is reached at 127.0.0.1."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"  # an IPv6 literal
    return f"http://{shown}:{port}"


def banner(s: Settings, mode: str, access_log: bool) -> str:
    url = base_url(s.host, s.port)
    docs = (
        "hidden without an API key (REALIZ3D_PUBLIC_DOCS=false)" if s.api_keys and not s.public_docs else ""
    )
    if mode == "embedded":
        what = "embedded mode: queue and worker in this process"
    else:
        what = f"gateway mode: jobs go to the workers on {_redacted(s.broker_url or '')}"
    lines = [
        f"Realiz3D Serve listening on {url} ({what})"
        + (f"; bound to {s.host or 'all interfaces'}" if s.host in ("0.0.0.0", "", "::") else ""),
        f"  playground  {url}/",
        f"  API docs    {url}/docs  (ReDoc: {url}/redoc)" + (f" {docs}" if docs else ""),
        f"  metrics     {url}/metrics",
        f"  health      {url}/healthz  ready: {url}/readyz",
        "  access log  " + ("on (REALIZ3D_ACCESS_LOG=false turns it off)" if access_log else "off"),
        "  Ctrl+C stops",
    ]
    return "\n".join(lines)


def _redacted(url: str) -> str:
    """A broker URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def announce(s: Settings, mode: str, access_log: bool) -> None:
    log.info("%s", banner(s, mode, access_log))
