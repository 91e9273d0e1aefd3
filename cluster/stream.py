"""Real-time scoring from Kinesis: one consumer actor per shard, KCL-style leases, supervision, resharding.

Each ``ShardConsumer`` polls its shard, scores micro-batches with the same in-process scoring core the Serve
replicas and the SDK run (``serve.sdk.FraudDetector``: online features, XGBoost, autoencoder, combiner),
publishes HIGH decisions to SNS (exactly once per transaction_id through the alert ledger), writes every
decision to the output stream, and only then checkpoints the shard's last sequence number in the DynamoDB lease table. A
restarted consumer resumes after its checkpoint; a replayed record can repeat a decision record (keyed by
transaction_id) but never an alert: effectively once.

``StreamScoring`` follows the stream's shard set: a child shard (after resharding) starts once its parents are
drained, as the Kinesis Client Library does, so each user's transactions stay in order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import ValidationError

from cluster.aws import client
from cluster.config import Settings, use_settings
from cluster.kinesis_records import MAX_PACKED_LINES, lines, open_shard_starts, pack
from cluster.schema import LABEL_COLUMN, SCENARIO_COLUMN, Transaction

log = logging.getLogger(__name__)

SHARD_END = "SHARD_END"
MAX_GET_RECORDS = 10_000           # Kinesis' per-call cap
MIN_POLL_INTERVAL_S = 0.2          # Kinesis allows 5 GetRecords calls per second per shard
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


class LeaseTable:
    """Checkpoints per shard in DynamoDB (the KCL's lease table, reduced to what one application needs)."""

    def __init__(self, settings: Settings):
        self.table = settings.lease_table
        self.stream = settings.stream_name
        self.dynamodb = client("dynamodb", settings)

    def _key(self, shard_id: str) -> dict[str, Any]:
        return {"shard_id": {"S": f"{self.stream}/{shard_id}"}}

    def checkpoint_of(self, shard_id: str) -> str | None:
        item = self.dynamodb.get_item(TableName=self.table, Key=self._key(shard_id), ConsistentRead=True).get("Item")
        return item["checkpoint"]["S"] if item else None

    def save(self, shard_id: str, checkpoint: str) -> None:
        self.dynamodb.put_item(TableName=self.table, Item={
            **self._key(shard_id), "checkpoint": {"S": checkpoint},
            "updated_at": {"S": datetime.now(timezone.utc).isoformat()}})


def _decode(line: bytes) -> tuple[Transaction | None, dict[str, Any]]:
    """(the validated transaction, or None if invalid; the ground truth the simulator attached)."""
    try:
        transaction = Transaction.model_validate_json(line)
    except ValidationError:
        return None, {}
    truth = {key: getattr(transaction, key) for key in (LABEL_COLUMN, SCENARIO_COLUMN)
             if getattr(transaction, key) is not None}
    return transaction, truth


class ShardConsumer:
    """Scores one shard from its checkpoint onwards (run it as a restartable Ray actor: ``StreamScoring``)."""

    def __init__(self, shard_id: str, settings: Settings, *, model: str = "champion", batch_limit: int = 1_000):
        from serve.alerts import AlertPublisher
        from serve.sdk import FraudDetector
        from serve.stats import StatsReporter

        use_settings(settings)
        self.settings = settings
        self.kinesis = client("kinesis", self.settings)
        self.leases = LeaseTable(self.settings)
        self.detector = FraudDetector(self.settings, model=model, feature_state="features")
        self.alerts = AlertPublisher(self.settings)
        self.stats = StatsReporter()
        self.batch_limit = batch_limit  # transactions per micro-batch, about
        # Kinesis records per GetRecords, following how densely they are packed (first guess: fully packed, so a
        # backlog's first page is one micro-batch, not the whole shard)
        self.records_per_call = max(1, batch_limit // MAX_PACKED_LINES)
        self.status = ConsumerStatus(shard_id=shard_id, checkpoint=self.leases.checkpoint_of(shard_id))
        self._stop = threading.Event()

    def get_status(self) -> dict[str, Any]:
        return asdict(self.status)

    def stop(self) -> None:
        self._stop.set()

    def _iterator(self) -> str:
        shard_id, checkpoint = self.status.shard_id, self.status.checkpoint
        kwargs: dict[str, Any] = {"StreamName": self.settings.stream_name, "ShardId": shard_id}
        if checkpoint and checkpoint != SHARD_END:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=checkpoint)
        else:
            kwargs.update(ShardIteratorType="TRIM_HORIZON")
        return self.kinesis.get_shard_iterator(**kwargs)["ShardIterator"]

    def _shard_closed(self) -> bool:
        shards = self.kinesis.list_shards(StreamName=self.settings.stream_name)["Shards"]
        return any(s["ShardId"] == self.status.shard_id and "EndingSequenceNumber" in s["SequenceNumberRange"]
                   for s in shards)

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
        with ThreadPoolExecutor(1, thread_name_prefix="fetch") as fetcher, \
                ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
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
        return self.get_status()

    def _score(self, records: list[dict[str, Any]]) -> ScoredBatch:
        started = time.perf_counter()
        decoded = [(_decode(line), record) for record in records for line in lines(record["Data"])]
        per_record = len(decoded) / len(records)
        self.records_per_call = min(max(round(self.batch_limit / max(per_record, 1.0)), 1), MAX_GET_RECORDS)
        valid = [(tx, truth, record) for (tx, truth), record in decoded if tx is not None]
        transactions = [tx for tx, _, _ in valid]
        decisions = self.detector.predict_transactions(transactions) if valid else []
        decided_at = datetime.now(timezone.utc)
        lags = [(decided_at - record["ApproximateArrivalTimestamp"]).total_seconds() * 1000.0
                for _, _, record in valid]
        return ScoredBatch(transactions=transactions, truths=[truth for _, truth, _ in valid], decisions=decisions,
                           lags_ms=lags, decided_at=decided_at, invalid=len(decoded) - len(valid),
                           checkpoint=records[-1]["SequenceNumber"], started=started)

    def _write(self, batch: ScoredBatch) -> None:
        """Alerts, then decisions, then the checkpoint: a crash in between replays the batch, never skips it."""
        from simulation.producers import put_records_reliably

        self.status.invalid += batch.invalid
        if batch.decisions:
            decided_at = batch.decided_at.isoformat()
            entries = [{"Data": orjson.dumps({**decision, **truth, "decided_at": decided_at,
                                              "stream_lag_ms": round(lag, 1)}),
                        "PartitionKey": decision["transaction_id"]}
                       for decision, truth, lag in zip(batch.decisions, batch.truths, batch.lags_ms)]
            alerts = self.alerts.publish_high(batch.decisions, batch.transactions)
            put_records_reliably(self.kinesis, self.settings.decisions_stream_name, pack(entries))
            elapsed_ms = (time.perf_counter() - batch.started) * 1000.0
            scored = len(batch.decisions)
            self.stats.consumer_behind(self.status.shard_id, self.status.millis_behind_latest)
            self.stats.add(scored=scored, alerts=alerts, latency_ms=elapsed_ms / scored, stream_lags_ms=batch.lags_ms,
                           decisions=batch.decisions, transactions=batch.transactions, truths=batch.truths)
            self.status.scored += scored
            self.status.alerts += alerts
        self.status.batches += 1
        self.status.checkpoint = batch.checkpoint
        self.leases.save(self.status.shard_id, self.status.checkpoint)


@dataclass
class ScoredBatch:
    """One page of a shard, scored, waiting for its outputs to be written."""

    transactions: list[Transaction]
    truths: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    lags_ms: list[float]
    decided_at: datetime
    invalid: int
    checkpoint: str
    started: float


class StreamScoring:
    """Starts a consumer per shard, restarts dead ones, follows resharding (children after their parents)."""

    def __init__(self, settings: Settings, *, model: str = "champion", consumer_cpus: float = 0.25,
                 poll_shards_s: float = 2.0):
        self.settings = settings
        self.model = model
        self.consumer_cpus = consumer_cpus
        self.poll_shards_s = poll_shards_s
        self.consumers: dict[str, Any] = {}
        self.runs: dict[str, Any] = {}
        self.finished: set[str] = set()
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "StreamScoring":
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
        import ray

        for shard_id, run in list(self.runs.items()):
            done, _ = ray.wait([run], timeout=0)
            if not done:
                continue
            try:
                status = ray.get(run)
            except ray.exceptions.RayError as exc:  # the actor died (Ray restarts it) or its run raised
                self.restarts += 1
                log.warning("consumer of %s stopped (%s); resuming from its checkpoint", shard_id,
                            type(exc).__name__)
                self.runs[shard_id] = self.consumers[shard_id].run.remote()
                continue
            if status["finished"]:
                self.finished.add(shard_id)
            del self.runs[shard_id]
        for shard_id in self._ready_shards():
            if shard_id not in self.consumers and shard_id not in self.finished:
                # SPREAD: consumers over as many nodes as possible, so losing one node pauses few shards
                consumer = ray.remote(ShardConsumer).options(
                    num_cpus=self.consumer_cpus, max_restarts=-1, max_concurrency=4, scheduling_strategy="SPREAD",
                    name=f"consumer-{self.settings.stream_name}-{shard_id}", get_if_exists=True,
                ).remote(shard_id, self.settings, model=self.model)
                self.consumers[shard_id] = consumer
                self.runs[shard_id] = consumer.run.remote()

    def status(self) -> dict[str, Any]:
        import ray

        statuses = {}
        for shard_id, consumer in self.consumers.items():
            try:
                statuses[shard_id] = ray.get(consumer.get_status.remote(), timeout=10)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                statuses[shard_id] = {"shard_id": shard_id, "unavailable": True}
        return {"shards": statuses, "restarts": self.restarts, "finished": sorted(self.finished)}

    def stop(self) -> None:
        import ray

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


def bench_stream(settings: Settings, *, warmup: int = 2_000, backlog: int = 25_000, hold_tps: float = 5_000,
                 hold_seconds: float = 20, lag_tps: float = 2_000, lag_seconds: float = 30) -> dict[str, Any]:
    """End-to-end figures through the embedded Kinesis, in one run, after ``warmup`` records have brought the
    consumers up (models loaded, feature state live; how long that took is ``cold_start_s``):

    - sustained: a backlog of simulated records put at once, from the first put to the last decision (tx/s),
      beside the emulator's own put rate for the same records (the ceiling), and the CPU each part spent on it;
    - held: the population's traffic, replayed later in time under new ids, put at ``hold_tps`` for
      ``hold_seconds``: whether the consumers keep up (every record decided, lag bounded) at the goal rate;
    - lag: the same at ``lag_tps`` for ``lag_seconds``; stream lag = decision time - Kinesis arrival.

    Paced puts come from the driver, so the rate does not depend on the simulator's share of the CPU (the producer
    actors have their own section).
    """
    import numpy as np
    import pandas as pd

    from cluster.bench import cpu_by_role, cpu_figures, trained_environment

    with trained_environment(settings) as (live, data, version):
        kinesis = client("kinesis", live)
        history = pd.read_parquet(data)
        history["timestamp"] = pd.to_datetime(history["timestamp"], utc=True)
        frame = history.iloc[warmup:warmup + backlog]
        scoring = StreamScoring(live, poll_shards_s=0.5).start()
        began = time.perf_counter()
        _put_all(kinesis, live.stream_name, history.head(warmup))
        _wait_scored(scoring, warmup, timeout_s=300)
        cold_start_s = time.perf_counter() - began

        with cpu_by_role() as cpu:
            began = time.perf_counter()
            put_seconds = _put_all(kinesis, live.stream_name, frame)
            _wait_scored(scoring, warmup + len(frame), timeout_s=300)
            drain_seconds = time.perf_counter() - began

        phases = {}
        copies = 0
        for tag, tps, seconds in (("hold", hold_tps, hold_seconds), ("lag", lag_tps, lag_seconds)):
            rows = int(tps * seconds)
            replay = _later(frame, rows, tag=tag, after=copies)
            copies += -(-rows // len(frame))
            expected = _scored(scoring)
            produced, put_for = _put_at_rate(kinesis, live.stream_name, replay, tps, seconds)
            try:
                caught_up: float | None = round(_wait_scored(scoring, expected + produced, timeout_s=60), 2)
            except TimeoutError:  # fell behind for good: the lag figures say by how much
                caught_up = None
            phases[tag] = {"target_tps": tps, "achieved_produce_tps": round(produced / put_for, 1),
                           "produced": produced, "caught_up_s": caught_up}
        scoring.stop()
        lags = _decision_lags(live)
    for tag, phase in phases.items():
        values = lags.get(tag, [])
        phase.update(decisions=len(values), p50_ms=round(float(np.percentile(values, 50)), 1) if values else None,
                     p99_ms=round(float(np.percentile(values, 99)), 1) if values else None)
    return {
        "model_version": version,
        "shards": live.stream_shards,
        "cold_start_s": round(cold_start_s, 2),
        "sustained": {"transactions": len(frame), "seconds": round(drain_seconds, 2),
                      "end_to_end_tps": round(len(frame) / drain_seconds, 1),
                      "emulator_put_tps": round(len(frame) / put_seconds, 1), "goal_tps": 5_000,
                      "packing": f"up to {MAX_PACKED_LINES} transactions per Kinesis record",
                      **cpu_figures(cpu, len(frame))},
        "held_at_goal": phases["hold"],
        "lag_at_target": {**phases["lag"], "goal_p99_ms": 1_000},
    }


def _put_all(kinesis: Any, stream: str, frame: Any) -> float:
    """Put ``frame`` packed, as fast as the emulator takes it; returns the seconds it took."""
    from simulation.producers import put_records_reliably, to_kinesis_entries

    began = time.perf_counter()
    put_records_reliably(kinesis, stream, pack(to_kinesis_entries(frame), open_shard_starts(kinesis, stream)))
    return time.perf_counter() - began


def _scored(scoring: "StreamScoring") -> int:
    return sum(shard.get("scored", 0) for shard in scoring.status()["shards"].values())


def _wait_scored(scoring: "StreamScoring", count: int, *, timeout_s: float) -> float:
    """Wait until the consumers have scored ``count`` records in all; returns the seconds waited."""
    began = time.perf_counter()
    while _scored(scoring) < count:
        if time.perf_counter() - began > timeout_s:
            raise TimeoutError(f"consumers did not score {count} records within {timeout_s} s")
        time.sleep(0.1)
    return time.perf_counter() - began


def _later(frame: Any, rows: int, *, tag: str, after: int = 0) -> Any:
    """``rows`` transactions: copies of ``frame`` shifted past its own time span (and past ``after`` earlier
    copies), under new ids ending ``-{tag}{k}``."""
    import pandas as pd

    span = (frame["timestamp"].max() - frame["timestamp"].min()).ceil("D") + pd.Timedelta(days=1)
    copies = [frame.assign(timestamp=frame["timestamp"] + span * (after + k),
                           transaction_id=frame["transaction_id"] + f"-{tag}{k}")
              for k in range(1, -(-rows // len(frame)) + 1)]
    return pd.concat(copies, ignore_index=True).head(rows)


def _put_at_rate(kinesis: Any, stream: str, frame: Any, tps: float, seconds: float) -> tuple[int, float]:
    """Put ``frame`` at ``tps`` (packed, ten puts a second) for at most ``seconds``; returns (rows put, seconds)."""
    from simulation.producers import put_records_reliably, to_kinesis_entries

    entries, starts = to_kinesis_entries(frame), open_shard_starts(kinesis, stream)
    step = max(1, round(tps / 10))
    sent, began = 0, time.perf_counter()
    while sent < len(entries) and time.perf_counter() - began < seconds:
        put_records_reliably(kinesis, stream, pack(entries[sent:sent + step], starts))
        sent += len(entries[sent:sent + step])
        time.sleep(max(0.0, began + sent / tps - time.perf_counter()))
    return sent, time.perf_counter() - began


def read_stream(settings: Settings, stream: str) -> list[dict[str, Any]]:
    """Every record of every shard (closed ones included), decoded from JSON: for benches and tests."""
    kinesis = client("kinesis", settings)
    records: list[dict[str, Any]] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=MAX_GET_RECORDS)
            records.extend(json.loads(line) for r in page["Records"] for line in lines(r["Data"]))
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return records


def _decision_lags(settings: Settings) -> dict[str, list[float]]:
    """Stream lag of every replayed decision by its phase tag (ids end ``-{tag}{k}``), read back from the output."""
    lags: dict[str, list[float]] = {}
    for decision in read_stream(settings, settings.decisions_stream_name):
        tag = decision["transaction_id"].rpartition("-")[2].rstrip("0123456789")
        lags.setdefault(tag, []).append(decision["stream_lag_ms"])
    return lags
