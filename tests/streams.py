"""Test helpers for Kinesis over HTTP: throwaway streams and reading a whole stream back."""

from __future__ import annotations

import json
import uuid
from typing import Any

from cluster.aws import client
from cluster.config import Settings


def create_stream(settings: Settings, shards: int, prefix: str = "test") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    kinesis = client("kinesis", settings)
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    return name


def read_all(settings: Settings, stream: str) -> list[dict[str, Any]]:
    """Every record of every shard (closed ones included), decoded from JSON."""
    kinesis = client("kinesis", settings)
    records = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            records.extend(json.loads(r["Data"]) for r in page["Records"])
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return records
