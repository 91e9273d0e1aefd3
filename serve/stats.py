"""Live counters behind ``GET /api/stats``: one named Ray actor that every ingress replica (and the stream scorer
and the producers) reports to, so the figures cover the whole cluster rather than one replica."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

STATS_ACTOR = "serve-stats"
STATS_NAMESPACE = "fraud"
RESERVOIR = 20_000       # latest latencies kept for the percentiles
TPS_WINDOW_S = 10.0


class StatsCollector:
    """Totals, a sliding window of scored counts for tps, and the latest latencies / stream lags."""

    def __init__(self) -> None:
        self.totals = {"produced": 0, "scored": 0, "alerts": 0}
        self.latencies: deque[float] = deque(maxlen=RESERVOIR)
        self.lags: deque[float] = deque(maxlen=RESERVOIR)
        self.recent: deque[tuple[float, int]] = deque()

    def record(self, *, scored: int = 0, alerts: int = 0, produced: int = 0, latencies_ms: list[float] = (),
               stream_lags_ms: list[float] = ()) -> None:
        now = time.monotonic()
        self.totals["scored"] += scored
        self.totals["alerts"] += alerts
        self.totals["produced"] += produced
        self.latencies.extend(latencies_ms)
        self.lags.extend(stream_lags_ms)
        if scored:
            self.recent.append((now, scored))

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        while self.recent and self.recent[0][0] < now - TPS_WINDOW_S:
            self.recent.popleft()
        return {**self.totals, "tps": round(sum(n for _, n in self.recent) / TPS_WINDOW_S, 1),
                "latency_ms": _percentiles(self.latencies), "stream_lag_ms": _percentiles(self.lags)}


def _percentiles(values: deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    array = np.fromiter(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(array, 50)), 2), "p99": round(float(np.percentile(array, 99)), 2)}


def stats_actor() -> Any:
    """The cluster's one stats actor (created on first use)."""
    import ray

    return ray.remote(StatsCollector).options(name=STATS_ACTOR, namespace=STATS_NAMESPACE, get_if_exists=True,
                                              lifetime="detached", num_cpus=0).remote()


class StatsReporter:
    """Per-replica buffer, flushed to the actor at most once a second so the hot path makes no remote call."""

    def __init__(self, flush_every_s: float = 1.0):
        self.actor = stats_actor()
        self.flush_every_s = flush_every_s
        self._pending: dict[str, Any] = self._empty()
        self._last_flush = time.monotonic()

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"scored": 0, "alerts": 0, "latencies_ms": [], "stream_lags_ms": []}

    def add(self, *, scored: int, alerts: int, latency_ms: float, stream_lags_ms: list[float] = ()) -> None:
        self._pending["scored"] += scored
        self._pending["alerts"] += alerts
        self._pending["latencies_ms"].append(latency_ms)
        self._pending["stream_lags_ms"].extend(stream_lags_ms)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> Any:
        pending, self._pending = self._pending, self._empty()
        self._last_flush = time.monotonic()
        return self.actor.record.remote(**pending)
