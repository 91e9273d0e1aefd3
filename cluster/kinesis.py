"""Kinesis I/O, in one place: the record format, puts with per-record retry, shard iterators and page reads, and
the lease table of the stream consumers (the Ray Data datasource over a stream is ``cluster.kinesis_source``).

The record format of our streams: JSON objects, one per line; a writer packs many lines into one record.

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
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
import pandas as pd
from pydantic import ValidationError

from cluster.aws import client
from cluster.config import Settings
from cluster.schema import TIMESTAMP_FORMAT, Transaction
from cluster.waiting import backoff_s

MAX_PACKED_LINES = 100  # user records per Kinesis record: a consumer page of records stays a micro-batch
MAX_PACKED_BYTES = 512 * 1024  # Kinesis takes up to 1 MiB per record
MAX_RECORDS_PER_CALL = 500  # PutRecords' limits
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_GET_RECORDS = 10_000  # GetRecords' per-call cap
RETRYABLE_CODES = {"ProvisionedThroughputExceededException", "InternalFailure", "KMSThrottlingException"}
SHARD_END = "SHARD_END"  # the checkpoint of a closed shard that has been read to its end
LINE_SLOTS = 1 << 20  # positions per record: more than the lines a 1 MiB record can hold
BEFORE_FIRST = -1  # the position before a shard's first record (read from the trim horizon)


def lines(data: bytes) -> list[bytes]:
    """The user records of a Kinesis record (one pretty-printed JSON object, spread over lines, stays whole)."""
    parts = data.split(b"\n")
    if len(parts) > 1 and not parts[0].rstrip().endswith(b"}"):
        return [data]
    return [part for part in parts if part.strip()]


def decode_transaction(line: bytes) -> Transaction | None:
    """One user record as a validated transaction; None for anything invalid (bad JSON, nested too deeply, a rule
    broken), which a reader counts and skips rather than failing the shard."""
    try:
        return Transaction.model_validate_json(line)
    except (ValidationError, ValueError, RecursionError):
        return None


def open_shard_starts(kinesis: Any, stream: str) -> list[int]:
    """Sorted starting hash keys of the stream's open shards (what ``pack`` groups by)."""
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    return sorted(
        int(shard["HashKeyRange"]["StartingHashKey"])
        for shard in shards
        if "EndingSequenceNumber" not in shard["SequenceNumberRange"]
    )


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


def to_entries(transactions: pd.DataFrame) -> list[dict[str, Any]]:
    """Canonical JSON records partitioned by user_id; missing values are left out. Rows are serialised straight from
    the column arrays (orjson), a producer's main cost after I/O."""
    frame = transactions.copy()
    frame["timestamp"] = frame["timestamp"].dt.strftime(TIMESTAMP_FORMAT)
    columns = list(frame.columns)
    entries = []
    for row in zip(*(frame[column].to_numpy(dtype=object) for column in columns)):
        clean = {c: v for c, v in zip(columns, row) if v is not None and v is not pd.NA and v == v}
        entries.append(
            {"Data": orjson.dumps(clean, option=orjson.OPT_SERIALIZE_NUMPY), "PartitionKey": clean["user_id"]}
        )
    return entries


class KinesisPutError(RuntimeError):
    """Records were still failing after every retry."""


@dataclass
class PutStats:
    records: int = 0
    calls: int = 0
    retried_records: int = 0


def _chunks(entries: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split into put_records calls within Kinesis' 500-record and 5 MiB limits."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for entry in entries:
        entry_size = len(entry["Data"]) + len(entry["PartitionKey"])
        if len(chunks[-1]) == MAX_RECORDS_PER_CALL or size + entry_size > MAX_BYTES_PER_CALL:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += entry_size
    return [chunk for chunk in chunks if chunk]


def put_records_reliably(
    kinesis: Any,
    stream: str,
    entries: Sequence[dict[str, Any]],
    *,
    max_attempts: int = 12,
    base_delay_s: float = 0.05,
    max_delay_s: float = 2.0,
) -> PutStats:
    """Put every entry, resubmitting only the failed ones with exponential backoff and full jitter.

    Partial failures are normal in Kinesis (a hot shard throttles part of a call), so a failed entry is retried
    on its own; entries that succeeded are never sent twice by this function.
    """
    stats = PutStats()
    for chunk in _chunks(entries):
        pending = chunk
        for attempt in range(max_attempts):
            response = kinesis.put_records(StreamName=stream, Records=pending)
            stats.calls += 1
            if not response.get("FailedRecordCount"):
                break
            failed = [entry for entry, result in zip(pending, response["Records"]) if "ErrorCode" in result]
            fatal = {r["ErrorCode"] for r in response["Records"] if r.get("ErrorCode")} - RETRYABLE_CODES
            if fatal:
                raise KinesisPutError(f"non-retryable Kinesis errors: {sorted(fatal)}")
            stats.retried_records += len(failed)
            pending = failed
            time.sleep(backoff_s(attempt, base_s=base_delay_s, cap_s=max_delay_s))
        else:
            raise KinesisPutError(f"{len(pending)} records still failing after {max_attempts} attempts")
        stats.records += len(chunk)
    return stats


def put_frame(kinesis: Any, stream: str, transactions: pd.DataFrame) -> PutStats:
    """Put canonical transactions packed, each user's in order within its shard."""
    return put_records_reliably(kinesis, stream, pack(to_entries(transactions), open_shard_starts(kinesis, stream)))


def put_transactions(kinesis: Any, stream: str, records: Sequence[dict[str, Any]]) -> PutStats:
    """Put validated transactions (``cluster.schema.scoring_record``s) packed, in as few records as the limits allow.

    For a log replayed by time and transaction_id (the ingest stream), not by shard order: members of a record need
    not share a shard, so nothing is looked up before the put.
    """
    entries = [
        {"Data": orjson.dumps(record, option=orjson.OPT_UTC_Z), "PartitionKey": record["user_id"]} for record in records
    ]
    return put_records_reliably(kinesis, stream, pack(entries))


def shard_iterator(
    kinesis: Any,
    stream: str,
    shard_id: str,
    *,
    after: str | None = None,
    at: str | None = None,
    since: datetime | None = None,
) -> str:
    """An iterator after (or at) a sequence number, at a timestamp, or from the trim horizon."""
    request: dict[str, Any] = {"StreamName": stream, "ShardId": shard_id}
    if after:
        request.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
    elif at:
        request.update(ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=at)
    elif since:
        request.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=since)
    else:
        request.update(ShardIteratorType="TRIM_HORIZON")
    return kinesis.get_shard_iterator(**request)["ShardIterator"]


def pages(kinesis: Any, iterator: str | None, limit: int = MAX_GET_RECORDS) -> Iterator[list[dict[str, Any]]]:
    """Pages of a shard's records from ``iterator`` until it is read up to its latest record (or closed)."""
    while iterator:
        page = kinesis.get_records(ShardIterator=iterator, Limit=limit)
        if page["Records"]:
            yield page["Records"]
        elif page.get("MillisBehindLatest", 0) == 0:
            return
        iterator = page.get("NextShardIterator")


def shard_key(stream: str, shard_id: str) -> str:
    """A shard named across streams (neither a stream name nor a shard id holds a slash)."""
    return f"{stream}/{shard_id}"


def position(sequence_number: str, line: int) -> int:
    """A user record's place in its shard, ordered like the stream: its Kinesis record's sequence number, then its
    line in that record (records pack many lines)."""
    return int(sequence_number) * LINE_SLOTS + line


def after_record(sequence_number: str | None) -> int:
    """The position of a record's last possible line: everything up to and including that record
    (``BEFORE_FIRST`` for none, a read from the trim horizon)."""
    return BEFORE_FIRST if sequence_number is None else position(sequence_number, LINE_SLOTS - 1)


def lines_after(kinesis: Any, key: str, after: int) -> Iterator[tuple[int, bytes, datetime]]:
    """(position, user record, arrival time) of every line of a shard (``shard_key``) after ``after``, up to the
    shard's latest record. Raises botocore's ClientError when the stream is gone or the position is trimmed."""
    stream, shard_id = key.split("/", 1)
    record = None if after < 0 else str(after // LINE_SLOTS)  # read from the record holding ``after``, then skip
    for page in pages(kinesis, shard_iterator(kinesis, stream, shard_id, at=record)):
        for item in page:
            for line_no, line in enumerate(lines(item["Data"])):
                at = position(item["SequenceNumber"], line_no)
                if at > after:
                    yield at, line, item["ApproximateArrivalTimestamp"]


def lines_since(kinesis: Any, stream: str, since: datetime) -> Iterator[tuple[datetime, bytes]]:
    """(arrival time, user record) of every line that reached any shard of ``stream`` (closed ones included) at or
    after ``since``, shard after shard. Raises botocore's ClientError when the stream is gone."""
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        for page in pages(kinesis, shard_iterator(kinesis, stream, shard["ShardId"], since=since)):
            for item in page:
                for line in lines(item["Data"]):
                    yield item["ApproximateArrivalTimestamp"], line


def read_stream(settings: Settings, stream: str) -> list[dict[str, Any]]:
    """Every JSON object of every shard (closed ones included): what a bench or a test reads back."""
    kinesis = client("kinesis", settings)
    return [
        json.loads(line)
        for shard in kinesis.list_shards(StreamName=stream)["Shards"]
        for page in pages(kinesis, shard_iterator(kinesis, stream, shard["ShardId"]))
        for record in page
        for line in lines(record["Data"])
    ]


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
        self.dynamodb.put_item(
            TableName=self.table,
            Item={
                **self._key(shard_id),
                "checkpoint": {"S": checkpoint},
                "updated_at": {"S": datetime.now(timezone.utc).isoformat()},
            },
        )
