"""One ``fraudctl up`` per data directory, and how ``fraudctl down`` stops it from another shell.

Kept apart from the main job so that ``fraudctl down`` loads none of Ray, Serve or the models. The pid file holds
the pid and the HAProxy state folder of the run: if ``up`` has to be killed, the ingress it started (which
outlives its parent) is found by that folder.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from cluster.config import Settings
from cluster.waiting import wait_until


def pid_file(settings: Settings) -> Path:
    return settings.data_dir / "up.pid"


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a process that has exited but is not yet reaped by its parent (a zombie) has
    stopped, whatever ``kill(pid, 0)`` says."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C, ``fraudctl down`` and SIGTERM all take the same clean shutdown path (even when started in the
    background, where a shell leaves SIGINT ignored)."""
    raise KeyboardInterrupt


def route_stop_signals() -> dict[int, Any]:
    """Send SIGINT and SIGTERM to ``_interrupt``; returns the handlers they had."""
    return {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def single_instance(settings: Settings, *, ingress_state: str | None) -> Iterator[None]:
    """Hold the data directory's pid file for the block, with stop signals routed to ``KeyboardInterrupt``."""
    path = pid_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    other = int(_read(path).get("pid") or 0)
    if other and alive(other):
        raise SystemExit(f"fraudctl up is already running (pid {other}); stop it with `fraudctl down`")
    path.write_text(json.dumps({"pid": os.getpid(), "ingress_state": ingress_state}))
    previous = route_stop_signals()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        path.unlink(missing_ok=True)


def stop_main_job(settings: Settings, timeout_s: float = 180.0) -> str:
    """Ask a running ``fraudctl up`` to stop exactly as Ctrl-C would (SIGINT) and wait until it has; kill it (and
    its ingress) if it has not stopped within ``timeout_s``."""
    path = pid_file(settings)
    if not path.exists():
        return "fraudctl up is not running"
    recorded = _read(path)
    pid = int(recorded.get("pid") or 0)
    if not pid or not alive(pid):
        path.unlink(missing_ok=True)
        return "fraudctl up is not running (removed a stale pid file)"
    os.kill(pid, signal.SIGINT)
    try:
        wait_until(lambda: not alive(pid), timeout_s=timeout_s, interval_s=0.2, what=f"fraudctl up (pid {pid}) stopped")
        return f"fraudctl up (pid {pid}) stopped"
    except TimeoutError:
        pass
    os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    reaped = _stop_orphaned_ingress(recorded.get("ingress_state"))
    return f"fraudctl up (pid {pid}) did not stop within {timeout_s:.0f} s and was killed ({reaped} ingress reaped)"


def _stop_orphaned_ingress(state: str | None) -> int:
    """Kill HAProxy processes running from the run's Serve state folder."""
    if not state:
        return 0
    reaped = 0
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or ())
        if "haproxy" in command and state in command:
            process.kill()
            reaped += 1
    return reaped
