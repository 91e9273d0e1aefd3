"""The record format of our Kinesis streams: JSON objects, one per line; a writer packs many lines into one record.

Kinesis limits and bills writes per record (1,000 records/s per shard on AWS) and the embedded emulator spends
~0.15 ms on each one, so a transaction per record caps a 2-shard stream near 2,000 transactions/s whatever the
consumers do. Packing many user records into one Kinesis record is what the KPL calls aggregation; here the packed
form is newline-delimited JSON, so a record holding a single JSON object (what any simple producer writes) is
the same format and every reader takes both. A packed record takes one member's partition key and holds only
members that hash to the same shard, so each user's transactions stay in one shard, in order.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Any

MAX_PACKED_LINES = 100        # user records per Kinesis record: a consumer page of records stays a micro-batch
MAX_PACKED_BYTES = 512 * 1024  # Kinesis takes up to 1 MiB per record


def lines(data: bytes) -> list[bytes]:
    """The user records of a Kinesis record (one pretty-printed JSON object, spread over lines, stays whole)."""
    parts = data.split(b"\n")
    if len(parts) > 1 and not parts[0].rstrip().endswith(b"}"):
        return [data]
    return [part for part in parts if part.strip()]


def open_shard_starts(kinesis: Any, stream: str) -> list[int]:
    """Sorted starting hash keys of the stream's open shards (what ``pack`` groups by)."""
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    return sorted(int(shard["HashKeyRange"]["StartingHashKey"]) for shard in shards
                  if "EndingSequenceNumber" not in shard["SequenceNumberRange"])


def _shard_of(partition_key: str, starts: Sequence[int]) -> int:
    """Kinesis places a record by the MD5 of its partition key, as a 128-bit integer, in a shard's hash range."""
    return bisect.bisect_right(starts, int(hashlib.md5(partition_key.encode()).hexdigest(), 16)) - 1


def pack(entries: Sequence[dict[str, Any]], shard_starts: Sequence[int] = (0,)) -> list[dict[str, Any]]:
    """``put_records`` entries (``Data``, ``PartitionKey``) packed into as few records as the limits allow, members
    of a record sharing one shard of ``shard_starts`` (``open_shard_starts``); order within a shard is kept."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        shard = _shard_of(entry["PartitionKey"], shard_starts) if len(shard_starts) > 1 else 0
        groups.setdefault(shard, []).append(entry)
    packed = []
    for members in groups.values():
        start, size = 0, 0
        for index, entry in enumerate(members):
            full = index - start == MAX_PACKED_LINES or size + len(entry["Data"]) + 1 > MAX_PACKED_BYTES
            if index > start and full:
                packed.append(_record(members[start:index]))
                start, size = index, 0
            size += len(entry["Data"]) + 1
        packed.append(_record(members[start:]))
    return packed


def _record(members: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"Data": b"\n".join(member["Data"] for member in members), "PartitionKey": members[0]["PartitionKey"]}
