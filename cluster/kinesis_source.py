"""A bounded ``ray.data.Datasource`` over a Kinesis stream: one read task per shard.

Each task reads its shard in sequence order from a start bound (a timestamp, a sequence number or the trim
horizon) up to an end bound (a timestamp, a sequence number, or the moment the read was planned), so a read of a
live stream is finite and repeatable. Records are canonical transaction JSON; invalid ones are skipped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from cluster.aws import client
from cluster.config import Settings, get_settings
from cluster.kinesis import MAX_GET_RECORDS, decode_transaction, lines, pages, shard_iterator

log = logging.getLogger(__name__)


class KinesisDatasource(Datasource):
    """Reads ``stream_name`` between bounds: timestamps for the whole stream, or sequence numbers per shard.

    Without an end bound the read stops at the records that had arrived when the datasource was created.
    """

    def __init__(
        self,
        stream_name: str | None = None,
        settings: Settings | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        start_sequence: dict[str, str] | None = None,
        end_sequence: dict[str, str] | None = None,
    ):
        super().__init__()
        self.settings = settings or get_settings()
        self.stream = stream_name or self.settings.stream_name
        self.start, self.end = start, end or datetime.now(timezone.utc)
        self.start_sequence, self.end_sequence = start_sequence or {}, end_sequence or {}

    def get_name(self) -> str:
        return f"Kinesis({self.stream})"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        tasks = []
        shards = client("kinesis", self.settings).list_shards(StreamName=self.stream)["Shards"]
        for index, shard in enumerate(sorted(shards, key=lambda s: s["ShardId"])):
            shard_id = shard["ShardId"]
            bounds = ShardBounds(
                shard_id=shard_id,
                index=index,
                start=self.start,
                end=self.end,
                start_sequence=self.start_sequence.get(shard_id),
                end_sequence=self.end_sequence.get(shard_id),
            )
            metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            tasks.append(
                ReadTask(
                    lambda b=bounds, stream=self.stream, settings=self.settings: [read_shard(stream, b, settings)],
                    metadata,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


class ShardBounds:
    def __init__(
        self,
        *,
        shard_id: str,
        index: int,
        start: datetime | None,
        end: datetime,
        start_sequence: str | None,
        end_sequence: str | None,
    ):
        self.shard_id, self.index, self.start, self.end = shard_id, index, start, end
        self.start_sequence, self.end_sequence = start_sequence, end_sequence


def _records(kinesis: Any, stream: str, bounds: ShardBounds) -> Iterable[dict[str, Any]]:
    """The shard's records within the bounds, in sequence order."""
    iterator = shard_iterator(kinesis, stream, bounds.shard_id, at=bounds.start_sequence, since=bounds.start)
    end_sequence = int(bounds.end_sequence) if bounds.end_sequence else None
    for page in pages(kinesis, iterator, MAX_GET_RECORDS):
        for record in page:
            past_sequence = end_sequence is not None and int(record["SequenceNumber"]) > end_sequence
            if past_sequence or record["ApproximateArrivalTimestamp"] > bounds.end:
                return
            yield record


def read_shard(stream: str, bounds: ShardBounds, settings: Settings) -> pd.DataFrame:
    """One shard's valid transactions with ``shard_id``, ``sequence_number``, ``arrival_ms`` and ``arrival_seq``.

    ``arrival_seq`` (shard index << 40 | position in the shard) orders rows as they arrived, deterministically.
    """
    rows, skipped = [], 0
    for record in _records(client("kinesis", settings), stream, bounds):
        for line in lines(record["Data"]):
            transaction = decode_transaction(line)
            if transaction is None:
                skipped += 1
                continue
            row = transaction.to_record()
            row.update(
                shard_id=bounds.shard_id,
                sequence_number=record["SequenceNumber"],
                arrival_seq=(bounds.index << 40) | len(rows),
                arrival_ms=int(record["ApproximateArrivalTimestamp"].timestamp() * 1000),
            )
            rows.append(row)
    if skipped:
        log.warning("%s/%s: skipped %d invalid record(s)", stream, bounds.shard_id, skipped)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame


def read_kinesis(stream_name: str | None = None, settings: Settings | None = None, **bounds: Any) -> Any:
    """A bounded Dataset of canonical transactions from a Kinesis stream (see ``KinesisDatasource``)."""
    return ray.data.read_datasource(KinesisDatasource(stream_name, settings, **bounds))
