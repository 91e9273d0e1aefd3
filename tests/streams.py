"""Test helper for Kinesis over HTTP: throwaway streams."""

from __future__ import annotations

import uuid

from cluster.aws import client
from cluster.config import Settings


def create_stream(settings: Settings, shards: int, prefix: str = "test") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    kinesis = client("kinesis", settings)
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    return name
