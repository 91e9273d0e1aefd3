"""Real-time scoring from Kinesis: one consumer actor per shard, KCL-style leases, supervision, resharding.

Each ``ShardConsumer`` polls its shard, scores micro-batches with the same in-process scoring core the Serve
replicas and the SDK run (``serve.sdk.FraudDetector``: online features, XGBoost, autoencoder, combiner),
publishes HIGH decisions to SNS (exactly once per transaction_id through the alert ledger), opens a review case per
"review" decision (once per transaction_id, ``serve.cases``), writes every decision to the output stream, and only
then checkpoints the shard's last sequence number in the DynamoDB lease table. A restarted consumer resumes after its
checkpoint; a replayed record can repeat a decision record (keyed by transaction_id) but never an alert nor a case:
effectively once. Each row goes to the feature state with its stream position
(``cluster.feature_state.StreamPlacement``), so the state applies it exactly once and a restarted state actor
replays what its snapshot misses.

``StreamScoring`` follows the stream's shard set: a child shard (after resharding) starts once its parents are
drained, as the Kinesis Client Library does, so each user's transactions stay in order.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
import ray
from pydantic import ValidationError

from cluster.aws import client
from cluster.config import Settings, use_settings
from cluster.feature_state import StreamPlacement
from cluster.kinesis import (
    MAX_GET_RECORDS,
    MAX_PACKED_LINES,
    SHARD_END,
    LeaseTable,
    after_record,
    decode_transaction,
    lines,
    pack,
    position,
    put_records_reliably,
    shard_iterator,
    shard_key,
)
from cluster.schema import Transaction, field_errors
from serve.alerts import AlertPublisher
from serve.cases import CaseOpener
from serve.champion import DECISIONS_PREFIX, TRANSACTIONS_PREFIX, JsonLinesLog, transaction_rows
from serve.monitoring import MonitoringReporter
from serve.rollout import RolloutStore, guard_actor, read_routing
from serve.scoring import scoring_record
from serve.sdk import FraudDetector
from serve.stats import StatsReporter

log = logging.getLogger(__name__)

MIN_POLL_INTERVAL_S = 0.2  # Kinesis allows 5 GetRecords calls per second per shard
MAX_IDLE_BACKOFF_S = 1.0


@dataclass
class ConsumerStatus:
    shard_id: str
    scored: int = 0
    alerts: int = 0
    invalid: int = 0
    batches: int = 0
    checkpoint: str | None = None
    millis_behind_latest: int = 0
    finished: bool = False


class ShardConsumer:
    """Scores one shard from its checkpoint onwards (run it as a restartable Ray actor: ``StreamScoring``)."""

    def __init__(
        self,
        shard_id: str,
        settings: Settings,
        *,
        model: str = "champion",
        batch_limit: int = 1_000,
        feature_state: str | None = None,
    ):
        use_settings(settings)
        self.settings = settings
        self.kinesis = client("kinesis", self.settings)
        self.leases = LeaseTable(self.settings)
        self.monitor = MonitoringReporter(self.settings)
        self.detector = FraudDetector(
            self.settings, model=model, monitor=self.monitor, feature_state=feature_state or settings.feature_state_name
        )
        # following the champion pointer and the rollout unless pinned to a version
        self.rollout = RolloutStore(self.settings) if model == "champion" else None
        self._routing_read = 0.0
        self.decision_log = JsonLinesLog(self.settings, DECISIONS_PREFIX)
        self.transaction_log = JsonLinesLog(self.settings, TRANSACTIONS_PREFIX)
        self.alerts = AlertPublisher(self.settings)
        self.cases = CaseOpener(self.settings)
        self.stats = StatsReporter()
        self.batch_limit = batch_limit  # transactions per micro-batch, about
        # Kinesis records per GetRecords, following how densely they are packed (first guess: fully packed, so a
        # backlog's first page is one micro-batch, not the whole shard)
        self.records_per_call = max(1, batch_limit // MAX_PACKED_LINES)
        self.status = ConsumerStatus(shard_id=shard_id, checkpoint=self.leases.checkpoint_of(shard_id))
        self.shard = shard_key(settings.stream_name, shard_id)
        checkpoint = self.status.checkpoint
        self.read_after = after_record(None if checkpoint == SHARD_END else checkpoint)  # where the next page starts
        self._stop = threading.Event()

    def get_status(self) -> dict[str, Any]:
        return asdict(self.status)

    def stop(self) -> None:
        self._stop.set()

    def _iterator(self) -> str:
        checkpoint = self.status.checkpoint
        return shard_iterator(
            self.kinesis,
            self.settings.stream_name,
            self.status.shard_id,
            after=checkpoint if checkpoint != SHARD_END else None,
        )

    def _shard_closed(self) -> bool:
        shards = self.kinesis.list_shards(StreamName=self.settings.stream_name)["Shards"]
        return any(
            s["ShardId"] == self.status.shard_id and "EndingSequenceNumber" in s["SequenceNumberRange"] for s in shards
        )

    def _get_records(self, iterator: str, not_before: float) -> dict[str, Any]:
        """One GetRecords call, no sooner than ``not_before`` (Kinesis allows 5 calls per second per shard)."""
        self._stop.wait(max(0.0, not_before - time.monotonic()))
        return self.kinesis.get_records(ShardIterator=iterator, Limit=self.records_per_call)

    def run(self) -> dict[str, Any]:
        """Poll until stopped or the shard is closed and drained; returns the final status.

        Three stages overlap: the next page is fetched while this one is scored, and a batch's outputs (alerts,
        decisions, then the checkpoint) are written while the next batch is scored. Writes stay in batch order,
        and at most one batch waits for its writes, so a checkpoint never runs ahead of its decisions.
        """
        if self.status.checkpoint == SHARD_END:
            self.status.finished = True
            return self.get_status()
        iterator: str | None = self._iterator()
        idle_s = MIN_POLL_INTERVAL_S
        with (
            ThreadPoolExecutor(1, thread_name_prefix="fetch") as fetcher,
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer,
        ):
            fetch = fetcher.submit(self._get_records, iterator, 0.0)
            writing: Future | None = None
            while not self._stop.is_set() and iterator:
                called = time.monotonic()
                page = fetch.result()
                iterator = page.get("NextShardIterator")
                self.status.millis_behind_latest = int(page.get("MillisBehindLatest", 0))
                if page["Records"]:
                    idle_s = MIN_POLL_INTERVAL_S
                elif self.status.millis_behind_latest == 0 and self._shard_closed():
                    iterator = None
                else:
                    idle_s = min(MAX_IDLE_BACKOFF_S, idle_s * 2)
                if iterator:
                    fetch = fetcher.submit(self._get_records, iterator, called + idle_s)
                if page["Records"]:
                    batch = self._score(page["Records"])
                    if writing is not None:
                        writing.result()
                    writing = writer.submit(self._write, batch)
            if writing is not None:
                writing.result()
        if not iterator:
            self.leases.save(self.status.shard_id, SHARD_END)
            self.status.checkpoint, self.status.finished = SHARD_END, True
        self.stats.flush()
        self.monitor.flush()
        self.decision_log.flush()
        self.transaction_log.flush()
        return self.get_status()

    def _follow_rollout(self) -> None:
        """Re-read the champion and the rollout as the ingress does (every ``serve_model_refresh_s``), so a
        transaction gets the same model here as over HTTP."""
        if self.rollout is None or time.monotonic() - self._routing_read < self.settings.serve_model_refresh_s:
            return
        self.detector.follow(read_routing(self.rollout, self.detector.models))
        self._routing_read = time.monotonic()

    def _score(self, records: list[dict[str, Any]]) -> ScoredBatch:
        started = time.perf_counter()
        decoded = [
            (decode_transaction(line), record, index, line_no)
            for index, record in enumerate(records)
            for line_no, line in enumerate(lines(record["Data"]))
        ]
        per_record = len(decoded) / len(records)
        self.records_per_call = min(max(round(self.batch_limit / max(per_record, 1.0)), 1), MAX_GET_RECORDS)
        valid = [(tx, record, index, line_no) for tx, record, index, line_no in decoded if tx is not None]
        if len(valid) < len(decoded):
            self._note_rejected(
                [line for record in records for line in lines(record["Data"])], [tx for tx, *_ in decoded]
            )
        transactions = [tx for tx, _, _, _ in valid]
        self._follow_rollout()
        placement = StreamPlacement(
            [(self.shard, position(r["SequenceNumber"], 0)) for r in records],
            np.array([index for _, _, index, _ in valid], np.int64),
            np.array([line_no for _, _, _, line_no in valid], np.int64),
            {self.shard: self.read_after},
        )
        decisions = self.detector.predict_transactions(transactions, placement) if valid else []
        self.read_after = after_record(records[-1]["SequenceNumber"])
        challenger_rows, challenger_errors = self.detector.take_challenger_log()
        rule_matches = self.detector.take_rule_matches()
        decided_at = datetime.now(timezone.utc)
        lags = [
            (decided_at - record["ApproximateArrivalTimestamp"]).total_seconds() * 1000.0 for _, record, _, _ in valid
        ]
        return ScoredBatch(
            transactions=transactions,
            decisions=decisions,
            lags_ms=lags,
            decided_at=decided_at,
            invalid=len(decoded) - len(valid),
            checkpoint=records[-1]["SequenceNumber"],
            started=started,
            rule_matches=rule_matches,
            challenger_rows=challenger_rows,
            challenger_errors=challenger_errors,
        )

    def _note_rejected(self, raw: list[bytes], decoded: list[Transaction | None]) -> None:
        """The fields of each invalid record, for monitoring's rejected inputs (invalid records are rare: each is
        validated again here to name them)."""
        for line, transaction in zip(raw, decoded):
            if transaction is None:
                self.monitor.rejected(record_errors(line))

    def _write(self, batch: ScoredBatch) -> None:
        """Alerts and review cases, then decisions, then the checkpoint: a crash (or a case that could not be
        opened) in between replays the batch, never skips it; alerts and cases are once per transaction_id."""
        self.status.invalid += batch.invalid
        if batch.decisions:
            decided_at = batch.decided_at.isoformat()
            entries = [
                {
                    "Data": orjson.dumps({**decision, "decided_at": decided_at, "stream_lag_ms": round(lag, 1)}),
                    "PartitionKey": decision["transaction_id"],
                }
                for decision, lag in zip(batch.decisions, batch.lags_ms)
            ]
            alerts = self.alerts.publish_high(batch.decisions, batch.transactions)
            self.cases.open_many(batch.decisions, batch.transactions)
            put_records_reliably(self.kinesis, self.settings.decisions_stream_name, pack(entries))
            elapsed_ms = (time.perf_counter() - batch.started) * 1000.0
            scored = len(batch.decisions)
            self.stats.consumer_behind(self.status.shard_id, self.status.millis_behind_latest)
            self.stats.add(
                scored=scored,
                alerts=alerts,
                latency_ms=elapsed_ms / scored,
                stream_lags_ms=batch.lags_ms,
                decisions=batch.decisions,
                transactions=batch.transactions,
                rule_matches=batch.rule_matches,
            )
            for version, rows in batch.challenger_errors.items():
                self.stats.model_errors(version, rows)
            self.decision_log.add(batch.challenger_rows)
            self.transaction_log.add(transaction_rows([scoring_record(t) for t in batch.transactions], batch.decisions))
            self.status.scored += scored
            self.status.alerts += alerts
            if self.monitor.due():  # binned here, in the writer thread, while the next batch is scored
                self.monitor.flush()
        self.status.batches += 1
        self.status.checkpoint = batch.checkpoint
        self.leases.save(self.status.shard_id, self.status.checkpoint)


def record_errors(line: bytes) -> list[dict[str, str]]:
    """Why a stream record is no valid transaction, field by field (``body`` when it is no JSON object)."""
    try:
        Transaction.model_validate_json(line)
    except ValidationError as exc:
        return [{**error, "field": "body"} if error["field"] == "__root__" else error for error in field_errors(exc)]
    except (ValueError, RecursionError) as exc:
        return [{"field": "body", "message": str(exc)}]
    return []


@dataclass
class ScoredBatch:
    """One page of a shard, scored, waiting for its outputs to be written."""

    transactions: list[Transaction]
    decisions: list[dict[str, Any]]
    lags_ms: list[float]
    decided_at: datetime
    invalid: int
    checkpoint: str
    started: float
    rule_matches: dict[str, dict[str, int]]
    challenger_rows: list[dict[str, Any]]
    challenger_errors: dict[str, int]


class StreamScoring:
    """Starts a consumer per shard, restarts dead ones, follows resharding (children after their parents)."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: str = "champion",
        consumer_cpus: float = 0.25,
        poll_shards_s: float = 2.0,
        feature_state: str | None = None,
    ):
        """``feature_state``: the online state the consumers share (``feature_state_name``, the Serve app's, by
        default)."""
        self.settings = settings
        self.model = model
        self.feature_state = feature_state or settings.feature_state_name
        self.consumer_cpus = consumer_cpus
        self.poll_shards_s = poll_shards_s
        self.consumers: dict[str, Any] = {}
        self.runs: dict[str, Any] = {}
        self.finished: set[str] = set()
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "StreamScoring":
        guard_actor(self.settings)  # the cluster's one rollout guard (the app may have started it already)
        self._reconcile()
        self._thread = threading.Thread(target=self._supervise, name="stream-supervisor", daemon=True)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while not self._stop.wait(self.poll_shards_s):
            try:
                self._reconcile()
            except Exception:  # a supervisor that dies silently would stop scoring: log and keep going
                log.exception("stream supervision round failed")

    def _ready_shards(self) -> list[str]:
        shards = client("kinesis", self.settings).list_shards(StreamName=self.settings.stream_name)["Shards"]
        known = {s["ShardId"] for s in shards}
        leases = LeaseTable(self.settings)
        ready = []
        for shard in shards:
            parents = [shard.get(k) for k in ("ParentShardId", "AdjacentParentShardId") if shard.get(k)]
            if all(p not in known or p in self.finished or leases.checkpoint_of(p) == SHARD_END for p in parents):
                ready.append(shard["ShardId"])
        return ready

    def _reconcile(self) -> None:
        for shard_id, run in list(self.runs.items()):
            done, _ = ray.wait([run], timeout=0)
            if not done:
                continue
            try:
                status = ray.get(run)
            except ray.exceptions.RayError as exc:  # the actor died (Ray restarts it) or its run raised
                self.restarts += 1
                log.warning("consumer of %s stopped (%s); resuming from its checkpoint", shard_id, type(exc).__name__)
                self.runs[shard_id] = self.consumers[shard_id].run.remote()
                continue
            if status["finished"]:
                self.finished.add(shard_id)
            del self.runs[shard_id]
        for shard_id in self._ready_shards():
            if shard_id not in self.consumers and shard_id not in self.finished:
                # SPREAD: consumers over as many nodes as possible, so losing one node pauses few shards
                consumer = (
                    ray.remote(ShardConsumer)
                    .options(
                        num_cpus=self.consumer_cpus,
                        max_restarts=-1,
                        max_concurrency=4,
                        scheduling_strategy="SPREAD",
                        name=f"consumer-{self.settings.stream_name}-{shard_id}",
                        get_if_exists=True,
                    )
                    .remote(shard_id, self.settings, model=self.model, feature_state=self.feature_state)
                )
                self.consumers[shard_id] = consumer
                self.runs[shard_id] = consumer.run.remote()

    def status(self) -> dict[str, Any]:
        statuses = {}
        for shard_id, consumer in self.consumers.items():
            try:
                statuses[shard_id] = ray.get(consumer.get_status.remote(), timeout=10)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                statuses[shard_id] = {"shard_id": shard_id, "unavailable": True}
        return {"shards": statuses, "restarts": self.restarts, "finished": sorted(self.finished)}

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for consumer in self.consumers.values():
            try:
                consumer.stop.remote()
            except ray.exceptions.RayActorError:
                pass
        if self.runs:
            ray.wait(list(self.runs.values()), num_returns=len(self.runs), timeout=30)
        for consumer in self.consumers.values():
            ray.kill(consumer, no_restart=True)
        self.consumers.clear()
        self.runs.clear()
