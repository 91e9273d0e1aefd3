"""Live counters behind ``GET /api/stats`` and the dashboard: one named Ray actor that every ingress replica (and
the stream scorer and the producers) reports to, so the figures cover the whole cluster rather than one replica.

Only production figures: beside the contract's counters, last-minute flagged and alert counts, how far behind each
stream consumer is, the latest HIGH decisions with their reasons, and per serving model version the decisions,
HIGH (alert) and MEDIUM (review) counts, errors and latencies that the rollout guard (``serve/rollout.py``) compares. Decisions carry no ground truth; the
simulation's scoreboard (``simulation/scoreboard.py``) joins it by transaction_id for the dashboard.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import ray

from cluster.runtime import ACTOR_NAMESPACE
from cluster.schema import Transaction
from training.policy import HIGH, MEDIUM

STATS_ACTOR = "serve-stats"
RESERVOIR = 20_000  # at most this many of the newest latencies / lags feed the percentiles
PERCENTILE_WINDOW_S = 60.0  # ... and only those of the last minute: start-up backlogs age out
TPS_WINDOW_S = 10.0
RATE_WINDOW_S = 60.0  # the flagged share and alerts/min are over the last minute
RECENT_ALERTS = 50
ALERT_FIELDS = ("user_id", "merchant_id", "amount", "currency", "channel", "country")
MODEL_WINDOW_S = 3600.0  # per-model counts are kept this long (the guard reads a window within it)
MODEL_COUNTS = ("decisions", "high", "review", "errors")


class StatsCollector:
    """Totals, a sliding window of scored counts for tps, the latest latencies / stream lags, last-minute flagged
    and alert counts, and the recent alerts."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.clock, self.wall_clock = clock, wall_clock
        self.totals = {"produced": 0, "scored": 0, "alerts": 0}
        self.flagged = 0
        self.latencies = RecentValues()
        self.lags = RecentValues()
        # (monotonic time, scored, flagged, alerts) per report, over RATE_WINDOW_S
        self.recent: deque[tuple[float, int, int, int]] = deque()
        self.alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self.consumers: dict[str, tuple[float, int]] = {}  # shard -> (reported at, Kinesis MillisBehindLatest)
        self.rule_matches: dict[str, dict[str, int]] = {}  # rule id -> {"active"|"shadow": rows matched}
        # per report and model version, over MODEL_WINDOW_S: (wall time, version, MODEL_COUNTS...) and latencies
        self.model_counts: deque[tuple[float, str, int, int, int, int]] = deque()
        self.model_latencies: deque[tuple[float, str, np.ndarray]] = deque()

    def record(
        self,
        *,
        scored: int = 0,
        alerts: int = 0,
        produced: int = 0,
        latencies_ms: Sequence[float] = (),
        stream_lags_ms: Sequence[float] = (),
        flagged: int = 0,
        alert_details: Sequence[dict[str, Any]] = (),
        consumers: dict[str, int] | None = None,
        rule_matches: dict[str, dict[str, int]] | None = None,
        models: dict[str, Sequence[int]] | None = None,
        model_latencies: dict[str, Sequence[float]] | None = None,
    ) -> None:
        now = self.clock()
        self._record_models(models or {}, model_latencies or {})
        add_matches(self.rule_matches, rule_matches or {})
        self.consumers.update({shard: (now, behind) for shard, behind in (consumers or {}).items()})
        self.totals["scored"] += scored
        self.totals["alerts"] += alerts
        self.totals["produced"] += produced
        self.flagged += flagged
        self.latencies.extend(now, latencies_ms)
        self.lags.extend(now, stream_lags_ms)
        self.alerts.extend(alert_details)
        if scored or alerts:
            self.recent.append((now, scored, flagged, alerts))

    def _record_models(self, models: dict[str, Sequence[int]], latencies: dict[str, Sequence[float]]) -> None:
        at = self.wall_clock()
        for version, counts in models.items():
            self.model_counts.append((at, version, *(int(c) for c in counts)))
        for version, values in latencies.items():
            if len(values):
                self.model_latencies.append((at, version, np.asarray(values, dtype=np.float64)))
        for entries in (self.model_counts, self.model_latencies):
            while entries and entries[0][0] < at - MODEL_WINDOW_S:
                entries.popleft()

    def models_since(self, start: float) -> dict[str, dict[str, Any]]:
        """Per model version, what it served since ``start`` (a wall-clock time): rows (decisions + errors), the
        counts, alert / review / error rates and the latency p99 of the requests or batches it answered."""
        totals: dict[str, list[int]] = {}
        for at, version, *counts in self.model_counts:
            if at >= start:
                into = totals.setdefault(version, [0] * len(MODEL_COUNTS))
                for i, count in enumerate(counts):
                    into[i] += count
        figures = {}
        for version, counts in totals.items():
            decisions, high, review, errors = counts
            latencies = [values for at, v, values in self.model_latencies if v == version and at >= start]
            figures[version] = {
                "rows": decisions + errors,
                **dict(zip(MODEL_COUNTS, counts)),
                "alert_rate": round(high / decisions, 6) if decisions else 0.0,
                "review_rate": round(review / decisions, 6) if decisions else 0.0,
                "error_rate": round(errors / (decisions + errors), 6) if decisions + errors else 0.0,
                "latency_p99_ms": percentile_summary(np.concatenate(latencies) if latencies else [])["p99"],
            }
        return figures

    def _trim(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
            self.recent.popleft()

    def snapshot(self) -> dict[str, Any]:
        """The ``GET /api/stats`` body (the contract's shape)."""
        now = self.clock()
        self._trim(now)
        scored = sum(entry[1] for entry in self.recent if entry[0] >= now - TPS_WINDOW_S)
        return {
            **self.totals,
            "tps": round(scored / TPS_WINDOW_S, 1),
            "latency_ms": self.latencies.percentiles(now),
            "stream_lag_ms": self.lags.percentiles(now),
        }

    def rule_counts(self) -> dict[str, dict[str, int]]:
        """Rows each rule matched since the actor started, by the state the rule had (``GET /api/rules/stats``):
        a shadow rule's matches are counted here and act nowhere."""
        return {rule: dict(counts) for rule, counts in sorted(self.rule_matches.items())}

    def dashboard_view(self) -> dict[str, Any]:
        """The production figures the dashboard draws, in one call: the snapshot, last-minute counts, the recent
        alerts (newest first) and how far behind each stream consumer that reported in the last minute is."""
        snapshot, now = self.snapshot(), self.clock()
        window = dict(
            zip(
                ("scored", "flagged", "alerts"),
                (int(sum(column)) for column in list(zip(*self.recent))[1:]) if self.recent else (0, 0, 0),
            )
        )
        return {
            "stats": snapshot,
            "window_s": RATE_WINDOW_S,
            "window": window,
            "flagged": self.flagged,
            "alerts": list(reversed(self.alerts)),
            "consumers": {
                shard: {"millis_behind_latest": behind, "seconds_since_report": round(now - at, 1)}
                for shard, (at, behind) in sorted(self.consumers.items())
                if at >= now - RATE_WINDOW_S
            },
        }


def add_matches(total: dict[str, dict[str, int]], matches: dict[str, dict[str, int]]) -> None:
    """Add per-rule match counts (rule id -> state -> rows) into ``total``."""
    for rule, counts in matches.items():
        into = total.setdefault(rule, {})
        for state, rows in counts.items():
            into[state] = into.get(state, 0) + rows


class RecentValues:
    """Values reported over the last ``PERCENTILE_WINDOW_S`` (at most ``RESERVOIR`` of the newest), kept as one
    array per report so a busy reporter costs one append."""

    def __init__(self) -> None:
        self.chunks: deque[tuple[float, np.ndarray]] = deque()
        self.count = 0

    def extend(self, now: float, values: Sequence[float]) -> None:
        if len(values):
            self.chunks.append((now, np.asarray(values, dtype=np.float64)))
            self.count += len(values)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.chunks and (
            self.chunks[0][0] < now - PERCENTILE_WINDOW_S or self.count - len(self.chunks[0][1]) >= RESERVOIR
        ):
            self.count -= len(self.chunks.popleft()[1])

    def percentiles(self, now: float) -> dict[str, float | None]:
        self._trim(now)
        values = np.concatenate([chunk for _, chunk in self.chunks])[-RESERVOIR:] if self.chunks else []
        return percentile_summary(values)


def percentile_summary(values: Sequence[float] | np.ndarray, digits: int = 2) -> dict[str, float | None]:
    """p50 and p99 of ``values`` (None for none): the one summary every latency figure uses."""
    if not len(values):
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return {"p50": round(float(p50), digits), "p99": round(float(p99), digits)}


def stats_actor() -> Any:
    """The cluster's one stats actor (created on first use; restarted, with fresh counters, if its node is lost)."""
    return (
        ray.remote(StatsCollector)
        .options(
            name=STATS_ACTOR,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_restarts=-1,
        )
        .remote()
    )


class StatsReporter:
    """Per-replica buffer, flushed to the actor at most once a second so the hot path makes no remote call.

    Counts are exact; of the decisions only the newest HIGH ones travel (``RECENT_ALERTS`` per flush), so a busy
    consumer sends a bounded amount however many decisions it made.
    """

    def __init__(self, flush_every_s: float = 1.0, actor: Any | None = None):
        self.actor = actor or stats_actor()
        self.flush_every_s = flush_every_s
        self._pending: dict[str, Any] = self._empty()
        self._last_flush = time.monotonic()

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {
            "scored": 0,
            "alerts": 0,
            "latencies_ms": [],
            "stream_lags_ms": [],
            "flagged": 0,
            "alert_details": deque(maxlen=RECENT_ALERTS),
            "consumers": {},
            "rule_matches": {},
            "models": {},
            "model_latencies": {},
        }

    def model_errors(self, version: str, rows: int) -> None:
        """Rows a model version failed to score (they were answered by the champion instead)."""
        self._pending["models"].setdefault(version, [0] * len(MODEL_COUNTS))[3] += rows

    def consumer_behind(self, shard_id: str, millis_behind_latest: int) -> None:
        """How far a stream consumer's shard is ahead of it (Kinesis ``MillisBehindLatest``), sent with the next
        flush: the dashboard shows the furthest-behind consumer."""
        self._pending["consumers"][shard_id] = millis_behind_latest

    def add(
        self,
        *,
        scored: int,
        alerts: int,
        latency_ms: float,
        stream_lags_ms: Sequence[float] = (),
        decisions: Sequence[dict[str, Any]] = (),
        transactions: Sequence[Transaction] = (),
        rule_matches: dict[str, dict[str, int]] | None = None,
    ) -> None:
        """Count a scored batch: ``decisions`` give the flagged count, and the HIGH ones (with their
        ``transactions``) the recent alerts; ``rule_matches`` the rows each rule matched."""
        pending = self._pending
        add_matches(pending["rule_matches"], rule_matches or {})
        pending["scored"] += scored
        pending["alerts"] += alerts
        pending["latencies_ms"].append(latency_ms)
        pending["stream_lags_ms"].extend(stream_lags_ms)
        decided_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        served: set[str] = set()
        for position, decision in enumerate(decisions):
            pending["flagged"] += bool(decision["is_fraud"])
            version = decision.get("model_version")
            if version is not None:
                counts = pending["models"].setdefault(version, [0] * len(MODEL_COUNTS))
                counts[0] += 1
                counts[1] += decision["risk_level"] == HIGH
                counts[2] += decision["risk_level"] == MEDIUM
                served.add(version)
            if decision["risk_level"] == HIGH:
                transaction = transactions[position] if position < len(transactions) else None
                details = {field: getattr(transaction, field, None) for field in ALERT_FIELDS}
                pending["alert_details"].append(
                    {
                        "decided_at": decided_at,
                        "transaction_id": decision["transaction_id"],
                        "fraud_score": decision["fraud_score"],
                        "factors": list(decision.get("factors") or []),
                        "model_version": decision.get("model_version"),
                        **details,
                    }
                )
        for version in served:  # a batch answered by two models took as long for both
            pending["model_latencies"].setdefault(version, []).append(latency_ms)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> Any:
        pending, self._pending = self._pending, self._empty()
        self._last_flush = time.monotonic()
        pending["alert_details"] = list(pending["alert_details"])
        return self.actor.record.remote(**pending)
