"""The packed record format: what goes in comes out, per shard, in order, within the limits; the ingest log gives
back, by time, the transactions put in it."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone

import orjson

from cluster.aws import client
from cluster.config import Settings
from cluster.kinesis import (
    MAX_PACKED_BYTES,
    MAX_PACKED_LINES,
    decode_transaction,
    lines,
    lines_since,
    pack,
    put_transactions,
)
from cluster.schema import Transaction, scoring_record

TWO_SHARDS = (0, 2**127)  # the starting hash keys Kinesis gives a 2-shard stream


def _entries(count: int, size: int = 40) -> list[dict]:
    return [
        {"Data": orjson.dumps({"transaction_id": f"t{i}", "pad": "x" * size}), "PartitionKey": f"user-{i % 7}"}
        for i in range(count)
    ]


def _shard(key: str) -> int:
    return int(int(hashlib.md5(key.encode()).hexdigest(), 16) >= 2**127)


def test_packed_records_give_back_every_entry_in_order_per_shard() -> None:
    entries = _entries(1_000)
    packed = pack(entries, TWO_SHARDS)
    assert len(packed) < len(entries) / 50
    for shard in (0, 1):
        sent = [e["Data"] for e in entries if _shard(e["PartitionKey"]) == shard]
        received = [
            line for record in packed if _shard(record["PartitionKey"]) == shard for line in lines(record["Data"])
        ]
        assert received == sent  # every member landed where its own key would have sent it, in order


def test_packs_stay_within_the_record_limits() -> None:
    packed = pack(_entries(450, size=4_000))
    assert all(len(lines(r["Data"])) <= MAX_PACKED_LINES and len(r["Data"]) <= MAX_PACKED_BYTES for r in packed)
    assert sum(len(lines(r["Data"])) for r in packed) == 450
    assert pack([]) == []


def test_a_plain_record_is_one_user_record_even_pretty_printed() -> None:
    record = orjson.dumps({"transaction_id": "t1", "note": "a\nb"})
    assert [orjson.loads(line) for line in lines(record)] == [{"transaction_id": "t1", "note": "a\nb"}]
    pretty = orjson.dumps({"transaction_id": "t2", "amount": 5}, option=orjson.OPT_INDENT_2)
    assert [orjson.loads(line) for line in lines(pretty)] == [{"transaction_id": "t2", "amount": 5}]


def test_the_ingest_log_gives_back_by_time_every_transaction_put(aws_settings: Settings) -> None:
    kinesis = client("kinesis", aws_settings)
    stream = f"ingest-test-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    records = [
        scoring_record(
            Transaction.model_validate(
                {
                    "transaction_id": f"t{i}",
                    "user_id": f"u{i % 13}",
                    "merchant_id": "m",
                    "amount": 1.5 + i,
                    "timestamp": f"2026-01-22T10:{i % 60:02d}:00.250Z",
                    "channel": "online",
                }
            )
        )
        for i in range(250)
    ]
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    put_transactions(kinesis, stream, records[:1])
    put_transactions(kinesis, stream, records[1:])  # packed: 100 per Kinesis record, any shard
    back = [(arrival, decode_transaction(line)) for arrival, line in lines_since(kinesis, stream, before)]
    assert sorted((scoring_record(tx) for _, tx in back), key=lambda r: r["transaction_id"]) == sorted(
        records, key=lambda r: r["transaction_id"]
    )
    assert all(arrival >= before for arrival, _ in back)
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert list(lines_since(kinesis, stream, later)) == []
    kinesis.delete_stream(StreamName=stream)
