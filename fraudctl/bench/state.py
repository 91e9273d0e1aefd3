"""The exactly-once feature state section of ``fraudctl bench``: what aligned checkpoints cost and how fast a
killed state actor comes back.

Transactions go through a one-shard embedded Kinesis stream and are read back page by page, as a consumer reads
them, then through the state actors (no models: this section measures the state path alone):
- throughput with checkpoints off (no stream positions, no periodic snapshots) and on (positions on every row,
  and the snapshot share of the chosen interval): two fresh states take the same batches, alternating batch by
  batch, so a shared machine's load weighs on both alike;
- snapshot size and time per 100,000 users (compressed npz to S3, every kind and the positions in one object);
- recovery after ``ray.kill``: Ray restarts the actor, it loads the snapshot and replays what came after it.
"""

from __future__ import annotations

import time
import uuid
from statistics import median
from typing import Any

import ray
from tqdm import tqdm

from cluster.aws import client
from cluster.config import Settings
from cluster.feature_state import OnlineFeatures, StreamPlacement
from cluster.kinesis import (
    after_record,
    decode_transaction,
    lines,
    pages,
    position,
    put_frame,
    shard_iterator,
    shard_key,
)
from cluster.runtime import ACTOR_NAMESPACE, aws_endpoint, ray_runtime
from cluster.schema import canonical_columns, scoring_record
from cluster.waiting import wait_until
from fraudctl.bench.features import synthetic_transactions

Batch = tuple[dict[str, Any], StreamPlacement]


def bench_feature_state(
    settings: Settings,
    *,
    users: int = 100_000,
    rows: int = 200_000,
    after_snapshot: int = 20_000,
    batch_rows: int = 1_000,
) -> dict[str, Any]:
    transactions = synthetic_transactions(rows + after_snapshot, users=users, merchants=max(rows // 250, 1))
    interval_s = settings.feature_snapshot_interval_s
    with aws_endpoint(settings.model_copy(update={"aws_mode": "embedded", "aws_endpoint_url": None})) as live:
        live = live.model_copy(
            update={"stream_name": f"bench-state-{uuid.uuid4().hex[:8]}", "feature_snapshot_interval_s": 0.0}
        )
        with ray_runtime(live):
            batches = _stream_batches(live, transactions, batch_rows)
            head, tail = _split(batches, rows)
            off = OnlineFeatures(live, name="bench-state-off", restore=False)
            online = OnlineFeatures(live, name="bench-state-on", restore=False)
            off.matrix(head[0][0])  # actors up; the first stream batch also snapshots where the shard starts
            online.matrix(*head[0])
            seconds = {"off": 0.0, "on": 0.0}
            for index, (batch, placement) in enumerate(
                tqdm(head[1:], desc="state, checkpoints off / on", unit="batch")
            ):
                for mode in ("off", "on") if index % 2 else ("on", "off"):
                    started = time.perf_counter()
                    if mode == "off":
                        off.matrix(batch)
                    else:
                        online.matrix(batch, placement)
                    seconds[mode] += time.perf_counter() - started
            off.shutdown()
            summary = online.summary()  # every row of ``head`` applied with positions
            snapshot_s = []
            for _ in range(3):
                started = time.perf_counter()
                (key,) = online.snapshot()
                snapshot_s.append(time.perf_counter() - started)
            size = client("s3", live).head_object(Bucket=live.model_bucket, Key=key)["ContentLength"]
            for batch, placement in tail:  # applied after the snapshot: the replay must bring these back
                online.matrix(batch, placement)
            before_kill = online.summary()
            recovery_s, recovered = _kill_and_recover(online)
            online.shutdown()
    applied = sum(len(p) for _, p in head[1:])
    off_tps, on_tps = applied / seconds["off"], applied / seconds["on"]
    per_100k = 100_000 / max(summary["keys"]["user"], 1)
    snapshot_each_s = median(snapshot_s)
    duty = snapshot_each_s / (interval_s + snapshot_each_s) if interval_s else 0.0
    return {
        "users": summary["keys"]["user"],
        "state_rows": summary["rows"],
        "batch_rows": batch_rows,
        "off_tx_per_s": round(off_tps),
        "positions_on_tx_per_s": round(on_tps),
        "snapshot_mb_per_100k_users": round(size * per_100k / 2**20, 1),
        "snapshot_s_per_100k_users": round(snapshot_each_s * per_100k, 3),
        "snapshot_interval_s": interval_s,
        "checkpoints_on_tx_per_s": round(on_tps * (1 - duty)),
        "checkpoint_cost_pct": round(100 * (1 - on_tps * (1 - duty) / off_tps), 1),
        "goal_cost_pct": 10,
        "recovery_after_kill_s": round(recovery_s, 2),
        "recovery_in_actor_s": recovered["last_recovery_s"],
        "replayed_after_kill": recovered["replayed"],
        "rows_after_recovery": recovered["rows"],
        "rows_before_kill": before_kill["rows"],
        "note": (
            f"{rows // users} transactions per user, {after_snapshot:,} more after the snapshot replayed from "
            "the stream; checkpoints on = stream positions on every row + one snapshot per interval (its time "
            "share); recovery = from ray.kill to the first answer of the restarted actor"
        ),
    }


def _stream_batches(settings: Settings, transactions: Any, batch_rows: int) -> list[Batch]:
    """Put the transactions into a one-shard stream, read them back page by page as a consumer does: batches of
    canonical columns with each row's stream position."""
    kinesis = client("kinesis", settings)
    kinesis.create_stream(StreamName=settings.stream_name, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(
        StreamName=settings.stream_name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50}
    )
    put_frame(kinesis, settings.stream_name, transactions.drop(columns=["is_fraud"]))
    shard_id = kinesis.list_shards(StreamName=settings.stream_name)["Shards"][0]["ShardId"]
    shard = shard_key(settings.stream_name, shard_id)
    batches, after = [], after_record(None)
    records_per_page = max(batch_rows // 100, 1)
    for page in pages(kinesis, shard_iterator(kinesis, settings.stream_name, shard_id), limit=records_per_page):
        decoded = [
            (decode_transaction(line), position(record["SequenceNumber"], n))
            for record in page
            for n, line in enumerate(lines(record["Data"]))
        ]
        batch = canonical_columns([scoring_record(tx) for tx, _ in decoded])
        placement = StreamPlacement.of([shard] * len(decoded), [at for _, at in decoded], {shard: after})
        batches.append((batch, placement))
        after = after_record(page[-1]["SequenceNumber"])
    return batches


def _split(batches: list[Batch], rows: int) -> tuple[list[Batch], list[Batch]]:
    counted, cut = 0, len(batches)
    for index, (_, placement) in enumerate(batches):
        if counted >= rows:
            cut = index
            break
        counted += len(placement)
    return batches[:cut], batches[cut:]


def _kill_and_recover(online: OnlineFeatures) -> tuple[float, dict[str, Any]]:
    """Seconds from ``ray.kill`` to the first answer of the restarted actor, and its summary. ``ray.kill`` returns
    before the actor dies, so a call right after it can still reach the old actor: the restarted one is the one
    whose summary counts one more recovery (Ray holds calls while it recovers)."""
    actor = ray.get_actor(f"{online.name}-0", namespace=ACTOR_NAMESPACE)
    recoveries = online.summary()["recoveries"]
    started = time.perf_counter()

    def restarted() -> dict[str, Any] | None:
        summary = online.summary()
        return summary if summary["recoveries"] > recoveries else None

    ray.kill(actor, no_restart=False)
    recovered = wait_until(restarted, timeout_s=600, interval_s=0.05, what="the killed state actor back")
    return time.perf_counter() - started, recovered
