"""``fraudctl bench``: each stage contributes a section of figures; all print as one JSON object.

Ratios are measured within one run so a noisy shared machine affects both sides alike.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import date
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from cluster.config import Settings

# section name -> "module:function"; each function takes Settings and returns a dict of figures.
SECTIONS: dict[str, str] = {
    "producers": "simulation.producers:bench_producers",
    "training": "training.baseline:bench_training",
    "serving": "serve.bench:bench_serving",
    "features_offline": "cluster.offline_features:bench_features_offline",
    "features_online": "cluster.feature_state:bench_features_online",
    "stream": "cluster.stream:bench_stream",
}


BENCH_USERS = 400  # the simulated population whose profiles the benches load

# Who burns the CPU: a process belongs to the first role whose marker its command line holds (Ray actors and Serve
# replicas carry their class or deployment in their process title). The bench's own process is "bench driver";
# anything else under it (raylet, GCS, Serve controller and proxies, HAProxy, idle workers) is "ray and serve".
CPU_ROLES: dict[str, tuple[str, ...]] = {
    "ingress": ("ServeReplica:fraud:Ingress",),
    "model stages": ("ServeReplica:fraud:XGBoost", "ServeReplica:fraud:Autoencoder"),
    "feature state": ("FeatureStateActor",),
    "stream consumers": ("ShardConsumer",),
    "alert desk": ("AlertDesk",),
    "stats": ("StatsCollector",),
    "aws emulator": ("moto.server",),
    "no-op app": ("ServeReplica:noop:",),  # the serving bench's yardstick
}
DRIVER_ROLE = "bench driver"
SYSTEM_ROLE = "ray and serve"


@contextmanager
def trained_environment(settings: Settings, *, users: int = BENCH_USERS, days: int = 28) -> Iterator[tuple[Settings, Path, str]]:
    """Embedded AWS, local Ray, simulated history with profiles in DynamoDB, and a model trained on it (small
    Tune budget) as champion: what the serving and stream benches measure against. Yields (settings, data, version).
    """
    from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS, put_profiles
    from cluster.runtime import aws_endpoint, ray_runtime
    from simulation.history import profile_paths, run_simulate
    from training.pipeline import TrainOptions, run_train

    workdir = Path(tempfile.mkdtemp(prefix="fraud-bench-"))
    base = settings.model_copy(update={"aws_mode": "embedded", "aws_endpoint_url": None, "data_dir": workdir})
    with aws_endpoint(base) as live, ray_runtime(live, num_cpus=os.cpu_count()):
        data = workdir / "history.parquet"
        run_simulate(live, out=data, users=users, days=days, start=date(2026, 1, 1), seed=live.seed,
                     fraud_rate=0.02)
        users_path, merchants_path = profile_paths(data)
        put_profiles(live.user_table, pd.read_parquet(users_path)[list(USER_PROFILE_COLUMNS)], live)
        put_profiles(live.merchant_table, pd.read_parquet(merchants_path)[list(MERCHANT_PROFILE_COLUMNS)], live)
        version = run_train(live, TrainOptions(data=data, trials=2))["version"]
        yield live, data, version


def _role(cmdline: str) -> str:
    return next((role for role, markers in CPU_ROLES.items() if any(m in cmdline for m in markers)), SYSTEM_ROLE)


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every descendant (the local Ray cluster, the embedded AWS)."""
    import psutil

    me = psutil.Process()
    seconds: dict[int, tuple[str, float]] = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            role = DRIVER_ROLE if process.pid == me.pid else _role(" ".join(process.cmdline()))
        except psutil.Error:  # gone meanwhile
            continue
        seconds[process.pid] = (role, times.user + times.system)
    return seconds


@contextmanager
def cpu_by_role() -> Iterator[dict[str, float]]:
    """CPU seconds each role spent during the block (``CPU_ROLES``); the dict is filled when the block ends.

    Wall-clock rates on a shared 2-core machine swing from run to run; the CPU a transaction costs swings less, and
    it is what sizes a deployment (``cpu_figures``).
    """
    spent: dict[str, float] = {}
    before = _cpu_seconds()
    yield spent
    for pid, (role, seconds) in _cpu_seconds().items():
        _, earlier = before.get(pid, (role, 0.0))
        spent[role] = spent.get(role, 0.0) + max(seconds - earlier, 0.0)


def cpu_figures(spent: dict[str, float], transactions: int) -> dict[str, Any]:
    """CPU milliseconds per 1,000 transactions by role, and the rate that CPU allows on this machine's cores: the
    ceiling of any scheduling, as long as the service's processes (all but the bench driver) share these cores."""
    if not transactions:
        return {}
    service = sum(seconds for role, seconds in spent.items() if role != DRIVER_ROLE)
    per_1k = {role: round(seconds * 1e6 / transactions, 1)
              for role, seconds in sorted(spent.items(), key=lambda item: -item[1]) if seconds > 0}
    return {"cpu_ms_per_1k_tx": per_1k, "service_cpu_ms_per_1k_tx": round(service * 1e6 / transactions, 1),
            "cpu_bound_tx_per_s": round((os.cpu_count() or 1) * transactions / service) if service else None}


def _load(target: str) -> Callable[[Settings], dict[str, Any]]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def run_bench(settings: Settings, only: list[str] | None = None) -> dict[str, Any]:
    unknown = set(only or ()) - SECTIONS.keys()
    if unknown:
        raise ValueError(f"unknown bench section(s): {sorted(unknown)}; known: {sorted(SECTIONS)}")
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with redirect_stdout(sys.stderr):  # stdout carries only the JSON; Ray relays worker and raylet logs to stdout
        for name, target in SECTIONS.items():
            if only and name not in only:
                continue
            started = time.perf_counter()
            figures[name] = _load(target)(settings)
            figures[name]["section_seconds"] = round(time.perf_counter() - started, 1)
    return figures
