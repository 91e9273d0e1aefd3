"""``fraudctl down`` against ``up``'s pid file: a process that has exited but is not reaped counts as stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cluster.config import Settings
from fraudctl.process import alive, pid_file, stop_main_job


def _zombie() -> subprocess.Popen:
    """A child that has exited; this process does not reap it (no ``wait``) until the test ends."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return child


def test_a_zombie_is_not_alive() -> None:
    child = _zombie()
    try:
        assert not alive(child.pid)
        assert alive(os.getpid())
    finally:
        child.wait()


def test_down_returns_at_once_when_up_has_exited_unreaped(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    child = _zombie()
    try:
        pid_file(settings).write_text(json.dumps({"pid": child.pid, "ingress_state": None}))
        started = time.monotonic()
        message = stop_main_job(settings, timeout_s=60)
        assert time.monotonic() - started < 5
        assert "not running" in message
        assert not pid_file(settings).exists()
    finally:
        child.wait()


def test_down_stops_a_running_up_through_sigint(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    script = "import signal, time\nsignal.signal(signal.SIGINT, lambda *a: exit(0))\nprint('ready', flush=True)\ntime.sleep(60)\n"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"  # its SIGINT handler is installed
        pid_file(settings).write_text(json.dumps({"pid": child.pid, "ingress_state": None}))
        assert stop_main_job(settings, timeout_s=30) == f"fraudctl up (pid {child.pid}) stopped"
    finally:
        child.kill()
        child.wait()
