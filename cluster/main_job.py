"""``fraudctl up`` / ``down``: the main job on one machine, and how a second shell stops it."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cluster.config import Settings
from cluster.runtime import aws_endpoint, ray_runtime
from cluster.stream import StreamScoring


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


def _route_stop_signals() -> dict[int, Any]:
    """Send SIGINT and SIGTERM to ``_interrupt``; returns the handlers they had."""
    return {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}


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
    previous = _route_stop_signals()
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
    print("Stopped: nothing of this run is left running.", flush=True)


def _ensure_model(settings: Settings, users: int) -> str:
    """The champion's version; when there is none the running feature code can serve, simulate history and train
    one with the default budget."""
    from simulation.history import run_simulate
    from training.pipeline import TrainOptions, run_train
    from training.registry import FeatureHashMismatch, ModelNotFound, registry_for

    try:
        return registry_for(settings).load("champion").version
    except ModelNotFound:
        reason = "No model in the registry yet"
    except FeatureHashMismatch:
        reason = "The champion was trained with other feature code"
    print(f"{reason}: simulating history and training one (default budget)...", flush=True)
    history = Path(settings.data_dir).resolve() / "bootstrap" / "history.parquet"
    run_simulate(settings, out=history, users=users, days=60, start=date(2026, 1, 1), seed=settings.seed,
                 fraud_rate=settings.fraud_rate)
    version = run_train(settings, TrainOptions(data=history))["version"]
    registry_for(settings).promote(version)
    return version


def _run(settings: Settings, options: MainJobOptions) -> None:
    from serve.app import build_app
    from serve.runtime import serving
    from serve.stats import stats_actor
    from simulation.producers import producer_totals, start_producers

    with _single_instance(settings), aws_endpoint(settings) as live, ray_runtime(live), ExitStack() as running:
        mode = f"embedded AWS (moto) at {live.aws_endpoint_url}" if live.embedded_aws else "real AWS"
        print(f"AWS: {mode}; stream {live.stream_name} ({live.stream_shards} shards)", flush=True)
        print(f"Profiles: {_publish_profiles(live, options.users)} users written to DynamoDB", flush=True)
        print(f"Model: champion {_ensure_model(live, options.users)}", flush=True)
        api_url = running.enter_context(serving(live, build_app(live)))
        if not live.embedded_aws:  # the embedded S3 ends with this run: nothing to keep there
            running.callback(_save_feature_state, live)  # runs once the stream and producers have stopped
        print(f"API: {api_url}/api/check-fraud  (docs {api_url}/docs, stats {api_url}/api/stats)", flush=True)
        if options.stream:
            stream = StreamScoring(live).start()
            running.callback(stream.stop)
            print(f"Stream scoring: one consumer per shard of {live.stream_name} -> {live.decisions_stream_name}",
                  flush=True)
        handles: list[Any] = []
        if options.simulation:
            handles, _ = start_producers(live, tps=options.tps, n_users=options.users)
            running.callback(_stop_producers, handles)
            print(f"Simulation: {len(handles)} producer actors at {options.tps:g} tx/s", flush=True)
        if options.ui:
            from simulation.dashboard import SimulationControl, serving_dashboard

            dashboard_url = running.enter_context(serving_dashboard(live, SimulationControl(handles)))
            print(f"Dashboard: {dashboard_url}", flush=True)
        print("Running. Ctrl-C or `fraudctl down` stops everything.", flush=True)
        _route_stop_signals()  # again: a Ray Tune run during start-up leaves its own SIGINT handler behind
        _watch(stats_actor(), handles, producer_totals)


def _save_feature_state(settings: Settings) -> None:
    """The feature state to S3 after scoring has stopped, so the next ``up`` starts from it."""
    from cluster.feature_state import OnlineFeatures, snapshot_folder

    try:
        features = OnlineFeatures(settings)
        keys = features.snapshot()
        print(f"Feature state saved: {len(keys)} objects under "
              f"s3://{settings.model_bucket}/{snapshot_folder(features.name)}/", flush=True)
    except Exception as exc:  # shutting down goes on; the last periodic snapshot stands
        print(f"Feature state not saved ({exc}); the last periodic snapshot stands.", flush=True)


def _stop_producers(handles: list[Any]) -> None:
    import ray

    for handle in handles:
        handle.stop.remote()
    for handle in handles:
        ray.kill(handle)


def _watch(stats: Any, handles: list[Any], producer_totals: Any) -> None:
    """Live progress until Ctrl-C: produced (reported to the stats actor here), scored, alerts, rate, lag."""
    import ray

    began = time.monotonic()
    snapshot: dict[str, Any] = {"produced": 0, "scored": 0, "alerts": 0}
    produced = 0
    try:
        with tqdm(desc="scored", unit="tx", file=sys.stdout, dynamic_ncols=True) as bar:
            while True:
                time.sleep(1.0)
                if handles:
                    totals = producer_totals(handles)
                    if totals["errors"]:
                        raise RuntimeError(f"producer failed: {totals['errors'][0]}")
                    stats.record.remote(produced=totals["produced"] - produced)
                    produced = totals["produced"]
                snapshot = ray.get(stats.snapshot.remote())
                bar.update(snapshot["scored"] - bar.n)
                bar.set_postfix(produced=snapshot["produced"], alerts=snapshot["alerts"], tps=snapshot["tps"],
                                lag_p99_ms=snapshot["stream_lag_ms"]["p99"])
    except KeyboardInterrupt:
        pass
    elapsed = time.monotonic() - began
    print(f"\nStopping after {elapsed:.0f} s: {snapshot['produced']} produced, {snapshot['scored']} scored, "
          f"{snapshot['alerts']} alerts.", flush=True)


def stop_main_job(settings: Settings, timeout_s: float = 180.0) -> str:
    """Ask a running ``fraudctl up`` to stop exactly as Ctrl-C would (SIGINT) and wait until it has.

    If it has to be killed, the HAProxy ingress it started (which outlives its parent) is stopped here too.
    """
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
    if not _alive(pid):
        return f"fraudctl up (pid {pid}) stopped"
    os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    reaped = _stop_orphaned_ingress(settings)
    return f"fraudctl up (pid {pid}) did not stop within {timeout_s:.0f} s and was killed ({reaped} ingress reaped)"


def _stop_orphaned_ingress(settings: Settings) -> int:
    """Kill HAProxy processes running from this data directory's Serve state folder."""
    from serve.runtime import serve_env

    state = serve_env(settings).get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if not state:
        return 0
    reaped = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "haproxy" in command and state in command:
            os.kill(int(proc.name), signal.SIGKILL)
            reaped += 1
    return reaped
