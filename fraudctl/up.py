"""``fraudctl up``: the main job on one machine (``fraudctl.process`` holds its pid file and ``fraudctl down``)."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import ray
from tqdm import tqdm

from cluster.config import Settings
from cluster.feature_state import OnlineFeatures, snapshot_folder
from cluster.profiles import put_profiles
from cluster.runtime import aws_endpoint, ray_runtime
from fraudctl.process import route_stop_signals, single_instance
from serve.app import build_app
from serve.runtime import serve_env, serving
from serve.stats import stats_actor
from serve.stream import StreamScoring
from simulation.dashboard import SimulationControl, serving_dashboard
from simulation.generator import SimulationConfig, build_population
from simulation.history import run_simulate
from simulation.producers import producer_totals, start_producers
from simulation.scoreboard import start_scoreboard, stop_scoreboard
from simulation.world_shift import WorldShift
from training.pipeline import TrainOptions, run_train
from training.registry import FeatureVersionMismatch, ModelNotFound, registry_for


@dataclass(frozen=True)
class MainJobOptions:
    tps: float
    users: int
    ui: bool = True
    simulation: bool = True
    stream: bool = True
    serve: bool = True
    shift: WorldShift | None = None  # the simulated world shifted from the start (drift to watch)


def _publish_simulated_population(settings: Settings, users: int) -> int:
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
    """The champion's version; when there is none the running feature spec can serve, simulate history and train
    one with the default budget."""
    try:
        return registry_for(settings).load("champion").version
    except ModelNotFound:
        reason = "No model in the registry yet"
    except FeatureVersionMismatch:
        reason = "The champion was trained on another feature spec"
    print(f"{reason}: simulating history and training one (default budget)...", flush=True)
    history = settings.bootstrap_history
    run_simulate(
        settings,
        out=history,
        users=users,
        days=settings.simulated_days,
        start=settings.simulated_start,
        seed=settings.seed,
        fraud_rate=settings.fraud_rate,
    )
    version = run_train(settings, TrainOptions(data=history))["version"]
    registry_for(settings).promote(version)
    return version


def _run(settings: Settings, options: MainJobOptions) -> None:
    with (
        single_instance(settings, ingress_state=serve_env(settings).get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")),
        aws_endpoint(settings) as live,
        ray_runtime(live),
        ExitStack() as running,
    ):
        mode = f"embedded AWS (moto) at {live.aws_endpoint_url}" if live.embedded_aws else "real AWS"
        print(f"AWS: {mode}; stream {live.stream_name} ({live.stream_shards} shards)", flush=True)
        if options.simulation:  # the simulated users' profiles; real ones come from the operator's own data
            print(
                f"Profiles: {_publish_simulated_population(live, options.users)} users written to DynamoDB", flush=True
            )
        print(f"Model: champion {_ensure_model(live, options.users)}", flush=True)
        if options.serve:
            api_url = running.enter_context(serving(live, build_app(live)))
        else:  # the Serve app is someone else's (`serve deploy serve/serve_config.yaml` on a cluster)
            api_url = f"http://{live.api_host}:{live.api_port}"
        if not live.embedded_aws:  # the embedded S3 ends with this run: nothing to keep there
            running.callback(_save_feature_state, live)  # runs once the stream and producers have stopped
        if options.serve:
            print(
                f"API: {api_url}/api/check-fraud  (docs {api_url}/docs, stats {api_url}/api/stats); scored "
                f"requests logged to {live.ingest_stream_name}",
                flush=True,
            )
        if options.stream:
            stream = StreamScoring(live).start()
            running.callback(stream.stop)
            print(
                f"Stream scoring: one consumer per shard of {live.stream_name} -> {live.decisions_stream_name}",
                flush=True,
            )
        handles: list[Any] = []
        scoreboard = None
        if options.simulation:  # the scoreboard first: it must hold a transaction's truth before its decision
            scoreboard = start_scoreboard(live)
            running.callback(stop_scoreboard, scoreboard)  # after the producers (callbacks run last-in first-out)
            handles, _ = start_producers(
                live, tps=options.tps, n_users=options.users, scoreboard=scoreboard, shift=options.shift
            )
            running.callback(_stop_producers, handles)
            print(
                f"Simulation: {len(handles)} producer actors at {options.tps:g} tx/s; ground truth joined with "
                f"{live.decisions_stream_name} by the scoreboard"
                + (f"; world shift: {options.shift.describe()}" if options.shift else ""),
                flush=True,
            )
        if options.ui:
            dashboard_url = running.enter_context(serving_dashboard(live, SimulationControl(handles, scoreboard)))
            print(f"Dashboard: {dashboard_url}", flush=True)
        print("Running. Ctrl-C or `fraudctl down` stops everything.", flush=True)
        route_stop_signals()  # again: a Ray Tune run during start-up leaves its own SIGINT handler behind
        _watch(stats_actor(), handles, producer_totals)


def _save_feature_state(settings: Settings) -> None:
    """The feature state to S3 after scoring has stopped, so the next ``up`` starts from it."""
    try:
        features = OnlineFeatures(settings)
        keys = features.snapshot()
        print(
            f"Feature state saved: {len(keys)} objects under "
            f"s3://{settings.model_bucket}/{snapshot_folder(features.name)}/",
            flush=True,
        )
    except Exception as exc:  # shutting down goes on; the last periodic snapshot stands
        print(f"Feature state not saved ({exc}); the last periodic snapshot stands.", flush=True)


def _stop_producers(handles: list[Any]) -> None:
    for handle in handles:
        handle.stop.remote()
    for handle in handles:
        ray.kill(handle)


def _watch(stats: Any, handles: list[Any], producer_totals: Any) -> None:
    """Live progress until Ctrl-C: produced (reported to the stats actor here), scored, alerts, rate, lag."""
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
                bar.set_postfix(
                    produced=snapshot["produced"],
                    alerts=snapshot["alerts"],
                    tps=snapshot["tps"],
                    lag_p99_ms=snapshot["stream_lag_ms"]["p99"],
                )
    except KeyboardInterrupt:
        pass
    elapsed = time.monotonic() - began
    print(
        f"\nStopping after {elapsed:.0f} s: {snapshot['produced']} produced, {snapshot['scored']} scored, "
        f"{snapshot['alerts']} alerts.",
        flush=True,
    )
