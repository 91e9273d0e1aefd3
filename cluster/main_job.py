"""``fraudctl up`` / ``down``: the main job on one machine, and how a second shell stops it."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cluster.config import Settings
from cluster.runtime import aws_endpoint, ray_runtime


@dataclass(frozen=True)
class MainJobOptions:
    ui: bool = True
    simulation: bool = True
    stream: bool = True
    tps: float = 200.0
    users: int = 2000


def _pid_file(settings: Settings) -> Path:
    return settings.data_dir / "up.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C, ``fraudctl down`` and SIGTERM all take the same clean shutdown path (even when started in the
    background, where a shell leaves SIGINT ignored)."""
    raise KeyboardInterrupt


@contextmanager
def _single_instance(settings: Settings) -> Iterator[None]:
    """One ``up`` per data directory; its pid lets ``fraudctl down`` stop it from another shell."""
    pid_file = _pid_file(settings)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    if pid_file.exists():
        other = int(pid_file.read_text().strip() or 0)
        if other and _alive(other):
            raise SystemExit(f"fraudctl up is already running (pid {other}); stop it with `fraudctl down`")
    pid_file.write_text(str(os.getpid()))
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        pid_file.unlink(missing_ok=True)


def _publish_profiles(settings: Settings, users: int) -> int:
    from cluster.profiles import put_profiles
    from simulation.generator import SimulationConfig, build_population

    user_frame, merchant_frame = build_population(SimulationConfig(n_users=users, seed=settings.seed))
    put_profiles(settings.merchant_table, merchant_frame, settings)
    return put_profiles(settings.user_table, user_frame, settings)


def run_main_job(settings: Settings, options: MainJobOptions) -> None:
    """Start everything, show live progress, and stop it all on Ctrl-C (or ``fraudctl down``)."""
    print("Starting local Ray and the AWS endpoint...", flush=True)
    try:
        _run(settings, options)
    except KeyboardInterrupt:
        print("Interrupted during start-up; everything started so far is stopped.", flush=True)


def _run(settings: Settings, options: MainJobOptions) -> None:
    import ray

    from simulation.producers import producer_totals, start_producers

    embedded = not settings.uses_real_aws
    with _single_instance(settings), aws_endpoint(settings) as live, ray_runtime(live):
        mode = f"embedded AWS (moto) at {live.aws_endpoint_url}" if embedded else "real AWS"
        print(f"AWS: {mode}; stream {live.stream_name} ({live.stream_shards} shards)", flush=True)
        print(f"Profiles: {_publish_profiles(live, options.users)} users written to DynamoDB", flush=True)
        handles: list[Any] = []
        if options.simulation:
            handles, _ = start_producers(live, tps=options.tps, n_users=options.users)
            print(f"Simulation: {len(handles)} producer actors at {options.tps:g} tx/s", flush=True)
        print("Running. Ctrl-C or `fraudctl down` stops everything.", flush=True)
        began = time.monotonic()
        totals: dict[str, Any] = {"produced": 0}
        try:
            with tqdm(desc="produced", unit="tx", file=sys.stdout, dynamic_ncols=True) as bar:
                while True:
                    time.sleep(1.0)
                    if handles:
                        totals = producer_totals(handles)
                        bar.update(totals["produced"] - bar.n)
                        if totals["errors"]:
                            raise RuntimeError(f"producer failed: {totals['errors'][0]}")
        except KeyboardInterrupt:
            pass
        finally:
            for handle in handles:
                handle.stop.remote()
            if handles:
                totals = producer_totals(handles)
                for handle in handles:
                    ray.kill(handle)
            elapsed = time.monotonic() - began
            print(f"\nStopped after {elapsed:.0f} s: {totals['produced']} transactions produced "
                  f"({totals['produced'] / max(elapsed, 1e-9):.0f} tx/s).", flush=True)


def stop_main_job(settings: Settings, timeout_s: float = 60.0) -> str:
    """Ask a running ``fraudctl up`` to stop exactly as Ctrl-C would (SIGINT) and wait until it has."""
    pid_file = _pid_file(settings)
    if not pid_file.exists():
        return "fraudctl up is not running"
    pid = int(pid_file.read_text().strip() or 0)
    if not pid or not _alive(pid):
        pid_file.unlink(missing_ok=True)
        return "fraudctl up is not running (removed a stale pid file)"
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        return f"fraudctl up (pid {pid}) did not stop within {timeout_s:.0f} s and was killed"
    return f"fraudctl up (pid {pid}) stopped"
