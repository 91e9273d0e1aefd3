"""Who burns the CPU while a bench load runs: CPU seconds of every process of the run, by role."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

EMULATOR_ROLE = "aws emulator"
# A process belongs to the first role whose marker its command line holds (Ray actors and Serve replicas carry their
# class or deployment in their process title). The bench's own process is "bench driver"; anything else under it
# (raylet, GCS, Serve controller and proxies, HAProxy, idle workers) is "ray and serve".
CPU_ROLES: dict[str, tuple[str, ...]] = {
    "ingress": ("ServeReplica:fraud:Ingress",),
    "model stages": ("ServeReplica:fraud:XGBoost", "ServeReplica:fraud:Autoencoder"),
    "feature state": ("FeatureStateActor",),
    "stream consumers": ("ShardConsumer",),
    "alert desk": ("AlertDesk",),
    "case desk": ("CaseDesk",),
    "stats": ("StatsCollector",),
    EMULATOR_ROLE: ("cluster.emulator", "moto.server"),
    "no-op apps": ("ServeReplica:noop:", "ServeReplica:noop_single:"),  # the serving bench's yardsticks
    "load generator": ("wrk_scoring.lua",),  # wrk, named by its script
}
DRIVER_ROLE = "bench driver"
SYSTEM_ROLE = "ray and serve"


def _role(cmdline: str) -> str:
    return next((role for role, markers in CPU_ROLES.items() if any(m in cmdline for m in markers)), SYSTEM_ROLE)


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every descendant (the local Ray cluster, the embedded AWS)."""
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
    ceiling of any scheduling, as long as the service's processes (all but the bench driver) share these cores.
    Beside it, the same without the embedded AWS, whose work real AWS does on its own machines."""
    if not transactions:
        return {}
    service = sum(seconds for role, seconds in spent.items() if role != DRIVER_ROLE)
    own = service - spent.get(EMULATOR_ROLE, 0.0)
    per_1k = {
        role: round(seconds * 1e6 / transactions, 1)
        for role, seconds in sorted(spent.items(), key=lambda item: -item[1])
        if seconds > 0
    }
    cores = os.cpu_count() or 1
    return {
        "cpu_ms_per_1k_tx": per_1k,
        "service_cpu_ms_per_1k_tx": round(service * 1e6 / transactions, 1),
        "cpu_bound_tx_per_s": round(cores * transactions / service) if service else None,
        "cpu_bound_tx_per_s_without_aws_emulator": round(cores * transactions / own) if own > 0 else None,
    }
