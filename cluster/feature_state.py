"""Online feature state: keyed history in Ray actors, partitioned by a stable hash of user, merchant and category.

Each actor keeps, per key, the rows the feature windows can still see (30 days, for merchants plus the label delay;
at most the per-key cap) and runs the very same passes as the offline builder (``cluster.features``) on history +
micro-batch. Idle keys expire with their last row; state snapshots to S3 and restores, so a restarted actor loses
nothing. ``OnlineFeatures`` is the one public coordinator: ``compute`` (features for a batch), ``record_labels``
(label feedback), ``snapshot``, ``restore``, ``summary``.

Exactly once for the stream, as Flink aligns keyed state with its sources: every stream batch carries each row's
position (shard, sequence number, line), an actor remembers per shard the last position it applied, and a snapshot
holds those positions with the state, in one S3 object per actor (so they always agree). A restarted actor loads
its snapshot and replays every shard from the snapshot's positions before it takes a call (Ray holds the callers'
calls meanwhile), so it comes back with every transaction it had applied, and a row at or before an applied
position never joins the state twice (a restarted consumer re-sends from its lease checkpoint). The first rows of a
shard the state has not seen snapshot it first, so no shard's start is ever lost.

HTTP requests are logged too: the ingress appends a pass's transactions to the ingest stream while it calls the
state (``cluster.kinesis.put_transactions``) and answers once both are done. Several replicas write that stream
at once, so its order is not the order the state applied: a restarted actor replays it by time, from its
snapshot's time minus ``feature_ingest_margin_s``, and the transaction ids the snapshot remembers keep what it
already holds from joining twice.
"""

from __future__ import annotations

import functools
import heapq
import io
import itertools
import json
import logging
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from botocore.exceptions import ClientError

from cluster.aws import client
from cluster.config import Settings, get_settings
from cluster.features import (
    DEVICE_CARD_WINDOWS,
    DEVICE_HISTORY_CAP,
    DEVICE_ROW_COLUMNS,
    EVENT_ROW_COLUMNS,
    MERCHANT_HISTORY_CAP,
    PASS_OUTPUTS,
    RETENTION_MS,
    USER_HISTORY_CAP,
    USER_ROW_COLUMNS,
    Columns,
    assemble,
    device_pass_values,
    duration_ms,
    epoch_ms,
    event_rows,
    exposure_events,
    feature_frame,
    label_anchor,
    mcc_pass_values,
    merchant_pass_values,
    partition_of,
    prepare_rows,
    stable_hash,
    user_pass_values,
)
from cluster.kinesis import LINE_SLOTS, decode_transaction, lines_after, lines_since
from cluster.profiles import MERCHANT_PROFILE_COLUMNS, USER_PROFILE_COLUMNS
from cluster.profiles import merchant_store as default_merchant_store
from cluster.profiles import user_store as default_user_store
from cluster.runtime import ACTOR_NAMESPACE
from cluster.schema import LABEL_EVENT_COLUMNS, canonical_columns, label_values, require_columns, scoring_record

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX = "feature-state"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
KINDS = ("user", "merchant", "mcc", "device")
_FLOAT_COLUMNS = frozenset({"amount", "lat", "lon"})
MERCHANT_STATE_COLUMNS = (*EVENT_ROW_COLUMNS, "txn_key", "mcc_key", "user_key")  # what places label feedback
LABEL_STATE_COLUMNS = ("key", "known_ms", "anchor_ms", "txn_key")
TAIL_ROWS = 4_096  # recent arrivals kept unsorted before one merge into the key-sorted body
CLOCK_SAMPLE = 4_096  # the state's clock is the median time of this many latest new transactions
REPLAY_MEMORY = 50_000  # transactions per partition whose outputs a replay gets back unchanged
RECOVERY_BATCH = 10_000  # stream transactions per pass while a restarted actor replays
MISSING_OBJECT = ("NoSuchKey", "404", "NoSuchBucket")
# Snapshots are compressed for speed: zstd at level 1 (pyarrow's) comes close to numpy's zlib in size at a small
# fraction of the time. The header holds the uncompressed size.
SNAPSHOT_CODEC = pa.Codec("zstd", compression_level=1)
SNAPSHOT_HEADER = struct.Struct("<Q")

Rows = dict[str, np.ndarray]


def _dtype(column: str) -> type:
    return np.float64 if column in _FLOAT_COLUMNS else np.int64


class KeyedHistory:
    """Columnar rows grouped by key (arrival order within a key), plus a small tail of recent arrivals.

    Appends land in the tail, so a batch costs O(batch); the tail merges into the key-sorted body once it holds
    ``TAIL_ROWS`` rows: one O(state) merge per that many rows rather than one per batch.
    """

    def __init__(self, columns: tuple[str, ...], key: str, time: str):
        self.columns, self.key, self.time = columns, key, time
        self.data = {c: np.zeros(0, _dtype(c)) for c in columns}
        self.tail = {c: np.zeros(TAIL_ROWS, _dtype(c)) for c in columns}
        self.tail_rows = 0

    def __len__(self) -> int:
        return len(self.data[self.key]) + self.tail_rows

    @property
    def nbytes(self) -> int:
        return sum(values.nbytes for values in (*self.data.values(), *self.tail.values()))

    @property
    def key_count(self) -> int:
        self.flush()
        keys = self.data[self.key]
        return int(np.count_nonzero(np.diff(keys)) + 1) if len(keys) else 0

    def column(self, name: str) -> np.ndarray:
        """Every retained value of one column (body, then tail)."""
        return np.concatenate((self.data[name], self.tail[name][: self.tail_rows]))

    def take(self, keys: np.ndarray) -> Rows:
        """Every retained row of these keys, grouped by key in arrival order."""
        wanted = np.unique(keys)
        stored = self.data[self.key]
        lower, upper = np.searchsorted(stored, wanted, "left"), np.searchsorted(stored, wanted, "right")
        lengths = upper - lower
        offsets = np.repeat(lower - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        index = offsets + np.arange(int(lengths.sum()))
        if not self.tail_rows:
            return {c: values[index] for c, values in self.data.items()}
        recent = np.flatnonzero(np.isin(self.tail[self.key][: self.tail_rows], wanted))
        rows = {c: np.concatenate((self.data[c][index], self.tail[c][recent])) for c in self.columns}
        order = np.argsort(rows[self.key], kind="stable")  # body rows of a key precede its later tail rows
        return {c: values[order] for c, values in rows.items()}

    def append(self, rows: Rows | pd.DataFrame) -> None:
        count = len(rows[self.key])
        if self.tail_rows + count > TAIL_ROWS:
            self.flush()
        if count > TAIL_ROWS:
            self._merge({c: np.asarray(rows[c], _dtype(c)) for c in self.columns})
            return
        for c in self.columns:
            self.tail[c][self.tail_rows : self.tail_rows + count] = rows[c]
        self.tail_rows += count

    def flush(self) -> None:
        """Merge the tail into the body."""
        if self.tail_rows:
            tail = {c: values[: self.tail_rows] for c, values in self.tail.items()}
            self.tail_rows = 0
            self._merge(tail)

    def _merge(self, rows: Rows) -> None:
        order = np.argsort(rows[self.key], kind="stable")
        positions = np.searchsorted(self.data[self.key], rows[self.key][order], "right")
        self.data = {c: np.insert(values, positions, rows[c][order]) for c, values in self.data.items()}

    def evict(self, horizon: int, cap: int) -> None:
        """Drop rows at or before ``horizon`` and all but each key's last ``cap`` rows."""
        self.flush()
        keep = self.data[self.time] > horizon
        keys = self.data[self.key]
        if len(keys):
            last_of_key = np.searchsorted(keys, keys, "right") - 1
            keep &= (last_of_key - np.arange(len(keys))) < cap
        self.data = {c: values[keep] for c, values in self.data.items()}

    def to_frame(self) -> pd.DataFrame:
        self.flush()
        return pd.DataFrame(self.data)

    def load(self, data: Rows) -> None:
        self.data = {c: np.asarray(data[c], _dtype(c)) for c in self.columns}
        self.tail_rows = 0


class RecentTransactions:
    """The pass outputs of the last ``capacity`` transactions a partition took in, by transaction key.

    A replayed record (a restarted Kinesis consumer, a retried request) gets these outputs back and does not join
    the state a second time, so its features, score and decision repeat exactly.
    """

    def __init__(self, width: int, capacity: int = REPLAY_MEMORY):
        self.keys = np.zeros(capacity, np.int64)  # 0: empty slot (a transaction key is never 0)
        self.values = np.zeros((capacity, width))
        self.written = 0
        self._slot: dict[int, int] = {}

    def slots(self, keys: np.ndarray) -> np.ndarray:
        """Each key's slot, -1 for keys not remembered."""
        return np.fromiter((self._slot.get(k, -1) for k in keys.tolist()), np.int64, len(keys))

    def remember(self, keys: np.ndarray, values: np.ndarray) -> None:
        capacity = len(self.keys)
        keys, values = keys[-capacity:], values[-capacity:]
        slots = (self.written + np.arange(len(keys))) % capacity
        for old, slot in zip(self.keys[slots].tolist(), slots.tolist()):
            if self._slot.get(old) == slot:
                del self._slot[old]
        self.keys[slots], self.values[slots] = keys, values
        self._slot.update(zip(keys.tolist(), slots.tolist()))
        self.written += len(keys)

    def load(self, keys: np.ndarray, values: np.ndarray, written: int) -> None:
        self.keys, self.values, self.written = keys, values, written
        self._slot = {k: slot for slot, k in enumerate(keys.tolist()) if k}


class FeatureStateCore:
    """The state of one partition of one key kind (``KINDS``); plain Python, held by an actor."""

    def __init__(self, kind: str, label_delay_ms: int, clock_sample: int = CLOCK_SAMPLE):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.kind, self.label_delay_ms = kind, label_delay_ms
        if kind == "user":
            self.rows = KeyedHistory(USER_ROW_COLUMNS, "user_key", "ts_ms")
        else:
            columns = {"merchant": MERCHANT_STATE_COLUMNS, "device": DEVICE_ROW_COLUMNS}.get(kind, EVENT_ROW_COLUMNS)
            self.rows = KeyedHistory(columns, "key", "ts_ms")
        self.labels = KeyedHistory(LABEL_STATE_COLUMNS, "key", "anchor_ms")
        # A merchant's suspect purchases (``exposure_events``): its visits by cards whose fraud became known since.
        self.exposures = KeyedHistory(LABEL_STATE_COLUMNS, "key", "anchor_ms")
        self.recent = RecentTransactions(len(PASS_OUTPUTS[kind]))
        self.cap = {"user": USER_HISTORY_CAP, "device": DEVICE_HISTORY_CAP}.get(kind, MERCHANT_HISTORY_CAP)
        # The delayed merchant windows reach back to t - delay - 30 days (inclusive): rows and label anchors stay
        # that long; a label anchors at most one delay before it is known, so the known-time windows keep theirs.
        self.label_retention_ms = RETENTION_MS + label_delay_ms + 1
        self.row_retention_ms = {
            "merchant": self.label_retention_ms,
            "device": max(DEVICE_CARD_WINDOWS.values()),
        }.get(kind, RETENTION_MS)
        self.watermark = np.iinfo(np.int64).min + self.label_retention_ms  # the state's clock (see event_time_ms)
        self.latest_times = np.zeros(clock_sample, np.int64)  # a ring of the latest new transactions' times
        self.times_written = 0
        self.rows_since_compact = 0

    def process(self, batch: Rows, applied: np.ndarray | None = None) -> np.ndarray:
        """``PASS_OUTPUTS[kind]`` of these rows (``txn_key`` + the state columns) given the retained history; new
        transactions then join the state, ones seen before (replays, retries, repeats in the batch) get their
        first outputs again and leave the state as it was. ``applied`` marks rows the state took in before (by
        their stream position): one no longer remembered gets outputs from the state as it is, and stays out."""
        txn_keys = np.asarray(batch["txn_key"], np.int64)
        unique, first, inverse = np.unique(txn_keys, return_index=True, return_inverse=True)
        slots = self.recent.slots(unique)
        values = np.empty((len(unique), len(PASS_OUTPUTS[self.kind])))
        known = slots >= 0
        values[known] = self.recent.values[slots[known]]
        again = ~known & (np.asarray(applied, bool)[first] if applied is not None else False)
        if again.any():
            values[again] = self._passes({c: np.asarray(batch[c], _dtype(c))[first[again]] for c in self.rows.columns})
        fresh = np.flatnonzero(~known & ~again)
        fresh = fresh[np.argsort(first[fresh])]  # in batch order
        if len(fresh):
            rows = {c: np.asarray(batch[c], _dtype(c))[first[fresh]] for c in self.rows.columns}
            values[fresh] = self._passes(rows)
            self.recent.remember(unique[fresh], values[fresh])
            self.rows.append(rows)
            self._observe_times(rows["ts_ms"])
            self.rows_since_compact += len(fresh)
            if self.rows_since_compact >= TAIL_ROWS:
                self.compact()
        return values[inverse.reshape(-1)]

    def _passes(self, rows: Rows) -> np.ndarray:
        keys = rows[self.rows.key]
        history = self.rows.take(keys)
        labels = self.labels.take(keys)
        if self.kind == "user":
            return user_pass_values(history, rows, labels)
        if self.kind == "merchant":
            return merchant_pass_values(history, rows, labels, self.label_delay_ms, self.exposures.take(keys))
        if self.kind == "device":
            return device_pass_values(history, rows)
        return mcc_pass_values(history, rows, labels, self.label_delay_ms)

    def _observe_times(self, times: np.ndarray) -> None:
        capacity = len(self.latest_times)
        times = times[-capacity:]
        self.latest_times[(self.times_written + np.arange(len(times))) % capacity] = times
        self.times_written += len(times)

    def _advance_clock(self) -> None:
        seen = self.latest_times[: min(self.times_written, len(self.latest_times))]
        if len(seen):
            self.watermark = max(self.watermark, int(np.median(seen)))

    def compact(self) -> None:
        self._advance_clock()
        self.rows.evict(self.watermark - self.row_retention_ms, self.cap)
        self.labels.evict(self.watermark - self.label_retention_ms, np.iinfo(np.int64).max)
        self.exposures.evict(self.watermark - self.label_retention_ms, np.iinfo(np.int64).max)
        self.rows_since_compact = 0

    def resolve(self, txn_keys: np.ndarray) -> pd.DataFrame:
        """Time, merchant, category and card of retained transactions (label feedback names only the transaction)."""
        found = np.isin(self.rows.column("txn_key"), txn_keys)
        return pd.DataFrame(
            {
                "txn_key": self.rows.column("txn_key")[found],
                "ts_ms": self.rows.column("ts_ms")[found],
                "merchant_key": self.rows.column("key")[found],
                "mcc_key": self.rows.column("mcc_key")[found],
                "user_key": self.rows.column("user_key")[found],
            }
        )

    def add_labels(self, events: pd.DataFrame) -> int:
        """Remember confirmed frauds (``LABEL_STATE_COLUMNS``); a transaction counts once."""
        fresh = events.drop_duplicates("txn_key")
        fresh = fresh[~np.isin(fresh["txn_key"].to_numpy(np.int64), self.labels.column("txn_key"))]
        self.labels.append(fresh)
        return len(fresh)

    @property
    def event_time_ms(self) -> int | None:
        """The state's clock (None before any transaction): a compaction evicts what the windows no longer see
        from it, whatever the wall clock says. It follows the median time of the latest new transactions, never
        going back, rather than the latest time seen: one transaction dated years ahead (valid input) would
        otherwise move it there and evict every window at the next compaction; moving it takes half the recent
        traffic. Keeping rows a little longer than the windows reach changes no feature, only memory."""
        self._advance_clock()
        return self.watermark if self.watermark > np.iinfo(np.int64).min + self.label_retention_ms else None

    def add_card_frauds(self, card_frauds: pd.DataFrame) -> int:
        """Follow confirmed card frauds (``user_key, ts_ms, known_ms``) to this partition's merchants: the cards'
        retained purchases before each fraud become suspect (``exposure_events``), each purchase once."""
        users = self.rows.column("user_key")
        visited = np.flatnonzero(np.isin(users, card_frauds["user_key"].to_numpy(np.int64)))
        visits = {
            "merchant_key": self.rows.column("key")[visited],
            "user_key": users[visited],
            "ts_ms": self.rows.column("ts_ms")[visited],
            "txn_key": self.rows.column("txn_key")[visited],
        }
        events = exposure_events(card_frauds, visits, self.label_delay_ms)
        fresh = ~np.isin(events["txn_key"], self.exposures.column("txn_key"))
        self.exposures.append({name: values[fresh] for name, values in events.items()})
        return int(fresh.sum())

    def stats(self) -> dict[str, int]:
        return {
            "rows": len(self.rows),
            "keys": self.rows.key_count,
            "labels": len(self.labels),
            "exposures": len(self.exposures),
            "bytes": (
                self.rows.nbytes
                + self.labels.nbytes
                + self.exposures.nbytes
                + self.recent.values.nbytes
                + self.recent.keys.nbytes
            ),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The whole state as named arrays (what a snapshot stores), none of which the state writes afterwards: the
        rings it writes in place are copied, the tables' arrays are replaced on every change, never written. So a
        snapshot can be encoded and uploaded on another thread while the state goes on."""
        self.rows.flush()
        self.labels.flush()
        self.exposures.flush()
        return {
            "watermark": np.int64(self.watermark),
            "clock_times": self.latest_times.copy(),
            "clock_written": np.int64(self.times_written),
            "recent_written": np.int64(self.recent.written),
            "recent_keys": self.recent.keys.copy(),
            "recent_values": self.recent.values.copy(),
            **{f"rows.{c}": v for c, v in self.rows.data.items()},
            **{f"labels.{c}": v for c, v in self.labels.data.items()},
            **{f"exposures.{c}": v for c, v in self.exposures.data.items()},
        }

    def load_arrays(self, arrays: Any) -> None:
        self.watermark = int(arrays["watermark"])
        if "clock_times" in arrays and len(arrays["clock_times"]) == len(self.latest_times):  # else an older one
            self.latest_times, self.times_written = np.array(arrays["clock_times"]), int(arrays["clock_written"])
        self.rows.load(_columns(arrays, "rows", self.rows.columns))
        self.labels.load(_columns(arrays, "labels", self.labels.columns))
        self.exposures.load(_columns(arrays, "exposures", self.exposures.columns))
        if arrays["recent_values"].shape[1] == self.recent.values.shape[1]:  # else an older feature spec's
            self.recent.load(arrays["recent_keys"], arrays["recent_values"], int(arrays["recent_written"]))


def encode_snapshot(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Every kind's arrays and the stream positions as one npz, compressed (``SNAPSHOT_CODEC``)."""
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    raw = buffer.getbuffer()
    return SNAPSHOT_HEADER.pack(len(raw)) + SNAPSHOT_CODEC.compress(raw, asbytes=True)


def decode_snapshot(payload: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the meta of an ``encode_snapshot`` payload."""
    (size,) = SNAPSHOT_HEADER.unpack_from(payload)
    raw = SNAPSHOT_CODEC.decompress(memoryview(payload)[SNAPSHOT_HEADER.size :], decompressed_size=size, asbytes=True)
    with np.load(io.BytesIO(raw)) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return arrays, json.loads(arrays.pop("meta").tobytes())


def _columns(arrays: Any, prefix: str, columns: tuple[str, ...]) -> Rows:
    """A snapshot's columns; one an older snapshot lacks reads as zeros (missing: a key hash of 0), and a table it
    lacks as empty."""
    first = f"{prefix}.{columns[0]}"
    rows = len(arrays[first]) if first in arrays else 0
    return {c: arrays[f"{prefix}.{c}"] if f"{prefix}.{c}" in arrays else np.zeros(rows, _dtype(c)) for c in columns}


def snapshot_folder(name: str) -> str:
    """Where the state named ``name`` keeps its snapshots in the model bucket."""
    return f"{SNAPSHOT_PREFIX}/{name}"


def stream_set(settings: Settings, partitions: int) -> dict[str, Any]:
    """What a state's snapshot covers: the stream its consumers read, the ingest stream its HTTP requests are logged
    to, and how its keys are partitioned. A restore takes only a snapshot of the same stream set: one written by
    another deployment that shares the bucket and the state name holds windows and positions of streams this one
    never reads (and a replay from them would read the wrong streams)."""
    return {
        "streams": [settings.stream_name],
        "ingest_streams": [settings.ingest_stream_name],
        "partitions": partitions,
    }


@dataclass(frozen=True)
class StreamPlacement:
    """Where each row of a stream batch sits: the Kinesis records it came in (each one's shard, as
    ``cluster.kinesis.shard_key``, and the position of its line 0) and each row's record and line; and per shard the
    position the batch was read after (``cluster.kinesis.after_record``). Rows are numpy arrays, so placing a batch
    costs per record, not per row (positions are wider than 64 bits)."""

    records: list[tuple[str, int]]
    record_of_row: np.ndarray
    line_of_row: np.ndarray
    starts: dict[str, int]

    @classmethod
    def of(cls, shards: list[str], positions: list[int], starts: dict[str, int]) -> StreamPlacement:
        """From each row's shard and ``cluster.kinesis.position``."""
        index: dict[tuple[str, int], int] = {}
        record_of_row = np.empty(len(positions), np.int64)
        line_of_row = np.empty(len(positions), np.int64)
        for row, (shard, at) in enumerate(zip(shards, positions)):
            line = at % LINE_SLOTS
            record_of_row[row] = index.setdefault((shard, at - line), len(index))
            line_of_row[row] = line
        return cls(list(index), record_of_row, line_of_row, starts)

    def __len__(self) -> int:
        return len(self.record_of_row)

    def part(self, rows: np.ndarray) -> StreamPlacement:
        return StreamPlacement(self.records, self.record_of_row[rows], self.line_of_row[rows], self.starts)

    def ends(self) -> dict[str, int]:
        """The last position of each shard in the batch."""
        last_line = np.full(len(self.records), -1, np.int64)
        np.maximum.at(last_line, self.record_of_row, self.line_of_row)
        last: dict[str, int] = {}
        for (shard, first), line in zip(self.records, last_line.tolist()):
            if line >= 0:
                last[shard] = max(last.get(shard, first + line), first + line)
        return last

    def applied(self, positions: dict[str, int]) -> np.ndarray:
        """Rows at or before their shard's position in ``positions`` (applied already)."""
        margin = np.array(
            [min(max(positions[shard] - first, -1), LINE_SLOTS) for shard, first in self.records], np.int64
        )
        return self.line_of_row <= margin[self.record_of_row] if len(margin) else np.zeros(len(self), bool)


@dataclass(frozen=True)
class PartitionPlacement:
    """One actor's share of a ``StreamPlacement``: per kind, its rows' placement; and the batch's last positions."""

    starts: dict[str, int]
    ends: dict[str, int]
    rows: dict[str, StreamPlacement]


class Prepared(NamedTuple):
    """A canonical batch as the state actors take it: per kind the state rows, and which partition owns each."""

    column: dict[str, Any]
    users: dict[str, Any]
    merchants: dict[str, Any]
    inputs: dict[str, Rows]
    owners: dict[str, np.ndarray]


def prepare(batch: Columns, user_store: Any, merchant_store: Any, partitions: int) -> Prepared:
    users = aligned_profiles(user_store, batch["user_id"], USER_PROFILE_COLUMNS)
    merchants = aligned_profiles(merchant_store, batch["merchant_id"], MERCHANT_PROFILE_COLUMNS)
    column = prepare_rows(batch, users, merchants)
    inputs = {
        "user": {c: column[c] for c in (*USER_ROW_COLUMNS, "txn_key")},
        "merchant": {
            **event_rows(column, "merchant_key"),
            "txn_key": column["txn_key"],
            "mcc_key": column["mcc_key"],
            "user_key": column["user_key"],
        },
        "mcc": {**event_rows(column, "mcc_key"), "txn_key": column["txn_key"]},
        "device": {**event_rows(column, "device_key"), "txn_key": column["txn_key"], "user_key": column["user_key"]},
    }
    owners = {
        "user": partition_of(column["user_key"], partitions),
        "merchant": partition_of(column["merchant_key"], partitions),
        "mcc": np.where(column["mcc_key"] != 0, partition_of(column["mcc_key"], partitions), -1),
        "device": np.where(column["device_key"] != 0, partition_of(column["device_key"], partitions), -1),
    }
    return Prepared(column, users, merchants, inputs, owners)


def partition_share(
    prepared: Prepared, partition: int, placement: StreamPlacement | None
) -> tuple[dict[str, np.ndarray], dict[str, Rows], PartitionPlacement | None]:
    """The rows of each kind that ``partition`` owns (their indices, the rows), and where they sit in the stream."""
    selected = {kind: np.flatnonzero(owner == partition) for kind, owner in prepared.owners.items()}
    parts = {
        kind: {c: values[selected[kind]] for c, values in prepared.inputs[kind].items()}
        for kind in KINDS
        if len(selected[kind])
    }
    share = (
        None
        if placement is None
        else PartitionPlacement(
            placement.starts, placement.ends(), {kind: placement.part(selected[kind]) for kind in parts}
        )
    )
    return selected, parts, share


class FeatureStateActor:
    """Partition ``i`` of every key kind in one Ray actor, so a batch costs one call per actor, not per kind.

    Snapshots go to ``s3://{model_bucket}/feature-state/{name}/{i}-of-{n}.npz.zst``, every kind and the stream
    positions in one object: each named state (the cluster's, an SDK's) keeps its own, so one never restores or
    overwrites another's. A snapshot names its stream set (``stream_set``); a restore refuses one of another set.
    """

    def __init__(
        self, name: str, partition: int, partitions: int, settings: Settings, restore_from: tuple[str, ...] = ()
    ):
        """``restore_from``: the states whose last snapshot a fresh actor takes, the first one found (its own name
        first); it then replays the stream from that snapshot's positions before it takes any call. An actor Ray
        restarts always recovers, from its own snapshot first, whatever it was created with."""
        self.cores = {kind: FeatureStateCore(kind, label_delay_ms(settings)) for kind in KINDS}
        self.settings = settings
        self.name, self.partition, self.partitions = name, partition, partitions
        self.object_key = self._key(name)
        self.covers = stream_set(settings, partitions)
        self.positions: dict[str, int] = {}  # per shard, the last position applied
        self.logs: set[str] = set()  # the ingest streams (HTTP requests) this state took rows from
        self.covered_at: float | None = None  # when the loaded snapshot was taken: the ingest replay starts there
        self.snapshotted = time.monotonic()
        self.snapshotted_at: float | None = None
        self._uploader = ThreadPoolExecutor(1, thread_name_prefix="snapshot")
        self._upload: Future | None = None  # the periodic snapshot being encoded and uploaded, if any
        self.recoveries, self.replayed, self.replayed_http, self.recovery_s = 0, 0, 0, None
        if ray.get_runtime_context().was_current_actor_reconstructed:
            restore_from = tuple(dict.fromkeys((name, *restore_from)))
        if restore_from:
            self.recover(restore_from)

    def _key(self, name: str) -> str:
        return f"{snapshot_folder(name)}/{self.partition}-of-{self.partitions}.npz.zst"

    @functools.cached_property
    def profile_stores(self) -> tuple[Any, Any]:
        return default_user_store(self.settings), default_merchant_store(self.settings)

    def process(
        self, parts: dict[str, Rows], placement: PartitionPlacement | None = None, logged_in: str | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs for a batch that joins the state; ``placement`` for stream rows, ``logged_in`` for rows the
        caller appends to that ingest stream meanwhile (the first such rows snapshot first, so a replay of the
        stream has a start)."""
        if logged_in is not None and logged_in not in self.logs:
            self.logs.add(logged_in)
            self.snapshot()
        outputs = self._apply(parts, placement)
        self._snapshot_if_due()
        return outputs

    def _apply(self, parts: dict[str, Rows], placement: PartitionPlacement | None) -> dict[str, np.ndarray]:
        if placement is None:
            return {kind: self.cores[kind].process(rows) for kind, rows in parts.items()}
        unseen = {shard: start for shard, start in placement.starts.items() if shard not in self.positions}
        if unseen:  # where these shards start goes to S3 before any of their rows join: a replay begins there
            self.positions.update(unseen)
            self.snapshot()
        outputs = {}
        for kind, rows in parts.items():
            outputs[kind] = self.cores[kind].process(rows, placement.rows[kind].applied(self.positions))
        for shard, last in placement.ends.items():
            self.positions[shard] = max(self.positions.get(shard, last), last)
        return outputs

    def _snapshot_if_due(self) -> None:
        """A snapshot between batches, every ``feature_snapshot_interval_s`` of scoring: it holds exactly the state
        after a batch. The call only compacts and takes the arrays; encoding and the upload run on the snapshot
        thread while scoring goes on (one at a time: while one is in flight, none is due). A failed one is logged
        and tried again an interval later; scoring goes on."""
        interval = self.settings.feature_snapshot_interval_s
        if not interval or time.monotonic() - self.snapshotted < interval:
            return
        if self._upload is not None and not self._upload.done():
            return
        self._settle()
        try:
            contents = self._contents()
        except Exception:
            log.exception("feature-state snapshot failed; the next is due in %.0f s", interval)
        else:
            self._upload = self._uploader.submit(self._write, *contents)
        self.snapshotted = time.monotonic()

    def _settle(self) -> None:
        """Wait for the periodic snapshot in flight, if any (a failed one is logged)."""
        upload, self._upload = self._upload, None
        if upload is None:
            return
        try:
            upload.result()
        except Exception:
            log.exception(
                "feature-state snapshot failed; the next is due in %.0f s", self.settings.feature_snapshot_interval_s
            )

    def resolve(self, txn_keys: np.ndarray) -> pd.DataFrame:
        return self.cores["merchant"].resolve(txn_keys)

    def add_labels(self, kind: str, events: pd.DataFrame) -> int:
        return self.cores[kind].add_labels(events)

    def add_card_frauds(self, card_frauds: pd.DataFrame) -> int:
        return self.cores["merchant"].add_card_frauds(card_frauds)

    def stats(self) -> dict[str, dict[str, int]]:
        return {kind: core.stats() for kind, core in self.cores.items()}

    def summary(self) -> dict[str, Any]:
        """Rows, keys, the last snapshot's time (epoch seconds), the event time (epoch ms) and the recoveries of this
        partition."""
        clocks = [core.event_time_ms for core in self.cores.values() if core.event_time_ms is not None]
        return {
            "rows": sum(len(core.rows) for core in self.cores.values()),
            "event_time_ms": max(clocks, default=None),
            "keys": {kind: self.cores[kind].rows.key_count for kind in ("user", "merchant")},
            "last_snapshot_at": self.snapshotted_at,
            "recoveries": self.recoveries,
            "replayed": self.replayed,
            "replayed_http": self.replayed_http,
            "last_recovery_s": self.recovery_s,
            "shards": len(self.positions),
        }

    def load(self, payload: bytes, *, own: bool = True, source: str | None = None) -> bool:
        """State and positions from a snapshot (``encode_snapshot``); ``own``: this state's snapshot, so its counters
        continue too. False, and nothing loaded, when the snapshot covers another stream set than this state's (a snapshot from before
        stream sets were recorded loads)."""
        arrays, meta = decode_snapshot(payload)
        covers = meta.get("covers")
        if covers is not None and covers != self.covers:
            log.warning(
                "feature state %s partition %d of %d refuses the snapshot of %s: it covers %s, this state "
                "covers %s (another deployment sharing the bucket and the state name?); starting from "
                "the next snapshot, if any, else empty",
                self.name,
                self.partition,
                self.partitions,
                source or self.name,
                covers,
                self.covers,
            )
            return False
        for kind, core in self.cores.items():
            stored = {
                name.removeprefix(f"{kind}."): values for name, values in arrays.items() if name.startswith(f"{kind}.")
            }
            if stored:  # a snapshot from before a kind existed leaves that kind empty
                core.load_arrays(stored)
        self.positions = {shard: int(at) for shard, at in meta["positions"].items()}
        self.logs, self.covered_at = set(meta.get("logs", ())), meta["taken_at"]
        if own:
            self.snapshotted_at = meta["taken_at"]
            self.recoveries, self.replayed, self.recovery_s = meta["recoveries"], meta["replayed"], meta["recovery_s"]
            self.replayed_http = meta.get("replayed_http", 0)
        return True

    def snapshot(self) -> list[str]:
        """The state to S3 now, stored when this returns (a shard's start, a recovery): a periodic snapshot still in
        flight is waited for first, so an older state never lands after this one."""
        self._settle()
        self._write(*self._contents())
        self.snapshotted = time.monotonic()
        return [self.object_key]

    def _contents(self) -> tuple[float, dict[str, np.ndarray], dict[str, Any]]:
        """The compacted state's arrays and what the snapshot says of itself, taken now."""
        for core in self.cores.values():
            core.compact()
        taken_at = time.time()
        arrays = {
            f"{kind}.{name}": values for kind, core in self.cores.items() for name, values in core.arrays().items()
        }
        meta = {
            "covers": self.covers,
            "positions": {shard: str(at) for shard, at in self.positions.items()},
            "logs": sorted(self.logs),
            "taken_at": taken_at,
            "recoveries": self.recoveries,
            "replayed": self.replayed,
            "replayed_http": self.replayed_http,
            "recovery_s": self.recovery_s,
        }
        return taken_at, arrays, meta

    def _write(self, taken_at: float, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        client("s3", self.settings).put_object(
            Bucket=self.settings.model_bucket, Key=self.object_key, Body=encode_snapshot(arrays, meta)
        )
        self.snapshotted_at = taken_at

    def restore(self, source: str | None = None) -> bool:
        """Reload the last snapshot of the state named ``source`` (this one's by default); False when there was
        none or it covers another stream set. A snapshot from before positions were kept (one object per kind)
        loads without them."""
        s3 = client("s3", self.settings)
        name = source or self.name
        try:
            payload = s3.get_object(Bucket=self.settings.model_bucket, Key=self._key(name))["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in MISSING_OBJECT:
                raise
            return self._restore_per_kind(s3, name)
        return self.load(payload, own=name == self.name, source=name)

    def _restore_per_kind(self, s3: Any, name: str) -> bool:
        restored = False
        for kind, core in self.cores.items():
            key = f"{snapshot_folder(name)}/{kind}-{self.partition}-of-{self.partitions}.npz"
            try:
                payload = s3.get_object(Bucket=self.settings.model_bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] in MISSING_OBJECT:
                    continue
                raise
            with np.load(io.BytesIO(payload)) as arrays:
                core.load_arrays(arrays)
            restored = True
        return restored

    def recover(self, sources: tuple[str, ...] = ()) -> bool:
        """The first of ``sources`` (this state's own by default) with a snapshot, then every shard replayed from
        its positions; the time it took and the rows replayed are counted, logged and snapshotted (so a second
        crash does not replay them again). False when there was nothing to recover."""
        started = time.monotonic()
        restored = any(self.restore(source) for source in sources or (self.name,))
        streamed, logged = self._replay()
        if not restored and not streamed + logged:
            return False
        self.recoveries += 1
        self.replayed += streamed + logged
        self.replayed_http += logged
        self.recovery_s = round(time.monotonic() - started, 3)
        log.warning(
            "feature state %s partition %d of %d recovered in %.2f s: %s, %d stream transactions replayed "
            "from %d shards, %d HTTP-scored ones from %d ingest streams",
            self.name,
            self.partition,
            self.partitions,
            self.recovery_s,
            "its last snapshot" if restored else "no snapshot",
            streamed,
            len(self.positions),
            logged,
            len(self.logs),
        )
        self.snapshot()
        return True

    def _replay(self) -> tuple[int, int]:
        """Every stream transaction after the positions this state has applied, and every ingest-stream one since
        its snapshot's time minus the margin, in arrival order across shards and streams (each shard's stream
        rows in sequence); returns how many of each joined this partition's user state (logged ones the
        snapshot held already are recognised by id and do not)."""
        kinesis = client("kinesis", self.settings)
        sources = []
        for shard, after in list(self.positions.items()):
            try:
                sources.append([(arrival, shard, at, line) for at, line, arrival in lines_after(kinesis, shard, after)])
            except ClientError as exc:
                log.error(
                    "cannot replay %s after position %d (%s): its transactions are missing from the state",
                    shard,
                    after,
                    exc.response["Error"]["Code"],
                )
        if self.covered_at is not None:
            since = datetime.fromtimestamp(self.covered_at, timezone.utc) - timedelta(
                seconds=self.settings.feature_ingest_margin_s
            )
            for stream in sorted(self.logs):
                try:
                    logged = [(arrival, None, 0, line) for arrival, line in lines_since(kinesis, stream, since)]
                    sources.append(sorted(logged, key=lambda item: item[0]))  # its shards' lines interleaved
                except ClientError as exc:
                    log.error(
                        "cannot replay ingest stream %s since %s (%s): HTTP-scored transactions are missing "
                        "from the state",
                        stream,
                        since.isoformat(),
                        exc.response["Error"]["Code"],
                    )
        pending = list(heapq.merge(*sources, key=lambda item: item[0]))
        joined = {"stream": 0, "logged": 0}
        for start in range(0, len(pending), RECOVERY_BATCH):
            chunk = pending[start : start + RECOVERY_BATCH]
            for from_log, run in itertools.groupby(chunk, key=lambda item: item[1] is None):
                joined["logged" if from_log else "stream"] += self._replay_run(list(run), from_log)
        return joined["stream"], joined["logged"]

    def _replay_run(self, items: list[tuple[datetime, str | None, int, bytes]], logged: bool) -> int:
        """Apply consecutive replayed lines of one kind of source (stream shards, or ingest streams); returns how
        many transactions joined this partition's user state."""
        decoded = [(decode_transaction(line), shard, at) for _, shard, at, line in items]
        valid = [(tx, shard, at) for tx, shard, at in decoded if tx is not None]
        users = self.cores["user"].recent
        before = users.written
        if valid:
            placement = (
                None if logged else StreamPlacement.of([shard for _, shard, _ in valid], [at for _, _, at in valid], {})
            )
            prepared = prepare(
                canonical_columns([scoring_record(tx) for tx, _, _ in valid]), *self.profile_stores, self.partitions
            )
            _, parts, share = partition_share(prepared, self.partition, placement)
            self._apply(parts, share)
        if not logged:
            for _, shard, at, _ in items:  # invalid lines too: nothing before them is left to replay
                self.positions[shard] = max(self.positions[shard], at)
        return users.written - before


def snapshot_time(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, timezone.utc).isoformat()


def label_delay_ms(settings: Settings) -> int:
    """The configured label delay, which the delayed merchant windows step back by."""
    return duration_ms(settings.label_delay)


def aligned_profiles(store: Any, ids: Any, columns: dict[str, str]) -> dict[str, Any]:
    """The store's profile columns aligned with ``ids`` as plain arrays (what ``prepare_rows`` and ``assemble``
    take; pandas per call is the cost of a micro-batch); an id without a profile gets missing values."""
    ids = list(ids)
    found = store.get_many(ids)
    rows = [found.get(i) or {} for i in ids]
    aligned: dict[str, Any] = {}
    for name, dtype in columns.items():
        values = [row.get(name) for row in rows]
        if dtype.startswith("datetime"):
            aligned[name] = pd.DatetimeIndex([None if v is None else _instant(v) for v in values])
        elif dtype in ("float64", "int64"):
            aligned[name] = np.array([np.nan if v is None else v for v in values], np.float64)
        else:
            aligned[name] = np.array(values, dtype=object)
    return aligned


@functools.lru_cache(maxsize=65_536)
def _instant(text: str) -> pd.Timestamp:
    """A profile time, parsed once (the same parse ``conform`` gives the offline tables)."""
    return pd.to_datetime(text, utc=True)


class OnlineFeatures:
    """Features for micro-batches through the state actors: the same numbers ``build_features`` gives offline.

    Actors are named (``{name}-{i}`` in namespace ``fraud``; ``feature_state_name`` by default) and shared by every
    coordinator in the cluster; actor ``i`` owns partition ``i`` of the users, the merchants and the merchant
    categories, so a batch costs one call per actor. A fresh actor restores its partitions from its state's last S3
    snapshot, or if there is none from ``restore_from``'s (an SDK can start from a copy of the cluster's state); a
    snapshot of another stream set is refused (``stream_set``). The actors are detached, so they outlive whichever
    consumer or replica happened to create them (a downscaled or lost replica would otherwise take the shared state
    with it); ``shutdown`` stops them. Ray restarts one that is killed or whose node is lost: it loads
    its snapshot and replays the stream from the snapshot's positions (and the ingest stream from its time), then
    Ray retries the calls in flight on it (a retried batch is already in the replayed state and gets the features
    it got first).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        partitions: int | None = None,
        name: str | None = None,
        actor_cpus: float = 0.2,
        user_store: Any = None,
        merchant_store: Any = None,
        restore: bool = True,
        restore_from: str | None = None,
    ):
        """``name``: the state's (``feature_state_name``, the cluster's, by default)."""
        self.settings = settings or get_settings()
        self.name, self.actor_cpus = name or self.settings.feature_state_name, actor_cpus
        self.restore_from = tuple(dict.fromkeys(n for n in (self.name, restore_from) if n)) if restore else ()
        self.partitions = partitions or self.settings.feature_partitions
        self.user_store = user_store or default_user_store(self.settings)
        self.merchant_store = merchant_store or default_merchant_store(self.settings)
        self.actors = [self._actor(i) for i in range(self.partitions)]

    def _actor(self, partition: int) -> Any:
        remote = ray.remote(FeatureStateActor).options(
            name=f"{self.name}-{partition}",
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            num_cpus=self.actor_cpus,
            max_concurrency=1,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=-1,
            scheduling_strategy="SPREAD",
        )  # partitions over as many nodes as possible: a lost node takes few
        return remote.remote(self.name, partition, self.partitions, self.settings, self.restore_from)

    def compute(self, batch: Columns) -> pd.DataFrame:
        """``transaction_id`` + ``FEATURE_NAMES`` for a canonical batch, in its order (see ``matrix``)."""
        return feature_frame(batch["transaction_id"], self.matrix(batch))

    def matrix(
        self, batch: Columns, placement: StreamPlacement | None = None, logged_in: str | None = None
    ) -> np.ndarray:
        """The (rows x ``FEATURE_NAMES``) matrix of a canonical batch (a DataFrame or column arrays), in its order;
        new transactions join the state, and one seen recently gets the features it got then. ``placement``:
        where a stream batch's rows sit in their shards, so a replayed row never joins twice and a restarted
        actor can replay what its snapshot misses; ``logged_in``: the ingest stream the caller appends this batch
        to meanwhile (HTTP requests), which a restarted actor replays by time."""
        prepared = prepare(batch, self.user_store, self.merchant_store, self.partitions)
        column, users, merchants = prepared.column, prepared.users, prepared.merchants
        count = len(column["txn_key"])
        requests = []
        for partition, actor in enumerate(self.actors):
            selected, parts, share = partition_share(prepared, partition, placement)
            if parts:
                requests.append((selected, actor.process.remote(parts, share, logged_in)))
        outputs = {kind: np.zeros((count, len(PASS_OUTPUTS[kind]))) for kind in KINDS}  # no category/device: zeros
        for (selected, _), result in zip(requests, ray.get([ref for _, ref in requests])):
            for kind, values in result.items():
                outputs[kind][selected[kind]] = values
        passes = {kind: dict(zip(PASS_OUTPUTS[kind], values.T)) for kind, values in outputs.items()}
        return assemble(column, passes, users, merchants)

    def record_labels(self, events: pd.DataFrame) -> int:
        """Apply label feedback (``transaction_id, is_fraud, known_at``, optional ``merchant_id``, ``user_id``) to
        merchant risk, card state and the compromise point (each card's fraud sent to every partition, whose
        merchants' retained purchases by that card become suspect).

        Confirmed frauds count from their ``known_at``; genuine verdicts change nothing. Returns how many frauds
        were applied to merchants (a transaction no longer retained and without ``merchant_id`` cannot be placed;
        likewise a card without ``user_id``).
        """
        require_columns(events.columns, LABEL_EVENT_COLUMNS, "label events")
        fraud = events[label_values(events["is_fraud"].to_numpy(dtype=object)) == 1]
        if fraud.empty:
            return 0

        def named(column: str) -> np.ndarray:
            return stable_hash(fraud[column]) if column in fraud else np.zeros(len(fraud), np.int64)

        labels = pd.DataFrame(
            {
                "txn_key": stable_hash(fraud["transaction_id"]),
                "known_ms": epoch_ms(fraud["known_at"]),
                "named_merchant": named("merchant_id"),
                "named_user": named("user_id"),
            }
        )
        named = labels["named_merchant"].to_numpy()
        targets = partition_of(named, self.partitions)
        refs = [
            actor.resolve.remote(labels["txn_key"].to_numpy()[(named == 0) | (targets == i)])
            for i, actor in enumerate(self.actors)
        ]
        resolved = pd.concat(ray.get(refs), ignore_index=True).drop_duplicates("txn_key")
        labels = labels.merge(resolved, on="txn_key", how="left")
        labels["merchant_key"] = np.where(
            labels["named_merchant"] != 0, labels["named_merchant"], labels["merchant_key"].fillna(0)
        ).astype(np.int64)
        labels["mcc_key"] = labels["mcc_key"].fillna(0).astype(np.int64)
        labels["user_key"] = np.where(
            labels["named_user"] != 0, labels["named_user"], labels["user_key"].fillna(0)
        ).astype(np.int64)
        delay_ms, known_ms = label_delay_ms(self.settings), labels["known_ms"].to_numpy(np.int64)
        resolved_ms = labels["ts_ms"].to_numpy(np.float64)  # NaN: no longer retained, so too old to matter
        tx_ms = np.where(np.isnan(resolved_ms), known_ms - delay_ms, resolved_ms).astype(np.int64)
        labels["anchor_ms"] = label_anchor(tx_ms, known_ms, delay_ms)
        applied = []
        for kind, key in (("merchant", "merchant_key"), ("mcc", "mcc_key"), ("user", "user_key")):
            placed = labels[labels[key] != 0]
            owner = partition_of(placed[key].to_numpy(np.int64), self.partitions)
            for partition, actor in enumerate(self.actors):
                part = placed[owner == partition]
                if len(part):
                    ref = actor.add_labels.remote(
                        kind,
                        pd.DataFrame(
                            {
                                "key": part[key],
                                "known_ms": part["known_ms"],
                                "anchor_ms": part["anchor_ms"],
                                "txn_key": part["txn_key"],
                            }
                        ),
                    )
                    applied.append((kind, ref))
        carded = labels["user_key"].to_numpy(np.int64) != 0  # a card's fraud makes its earlier purchases suspect
        if carded.any():
            card_frauds = pd.DataFrame(
                {
                    "user_key": labels["user_key"].to_numpy(np.int64)[carded],
                    "ts_ms": tx_ms[carded],
                    "known_ms": known_ms[carded],
                }
            )
            applied += [("exposure", actor.add_card_frauds.remote(card_frauds)) for actor in self.actors]
        counts = ray.get([ref for _, ref in applied])
        return int(sum(count for (kind, _), count in zip(applied, counts) if kind == "merchant"))

    def snapshot(self) -> list[str]:
        """Write every partition's state to S3; returns the object keys."""
        return [key for keys in ray.get([actor.snapshot.remote() for actor in self.actors]) for key in keys]

    def restore(self) -> list[bool]:
        """Reload every partition from its last snapshot and replay the stream from its positions (a partition
        without a snapshot keeps its state)."""
        return ray.get([actor.recover.remote() for actor in self.actors])

    def summary(self) -> dict[str, Any]:
        """The state summed over its partitions (``GET /api/state``): rows, keys per kind, recoveries and the
        transactions they replayed (``replayed_http`` of them from the ingest stream); ``last_snapshot_at`` is the
        oldest partition's last snapshot (null while one has none), the time from which a crash replays;
        ``event_time`` the latest transaction time any partition has seen, from which retention counts back."""
        parts = ray.get([actor.summary.remote() for actor in self.actors])
        taken = [p["last_snapshot_at"] for p in parts]
        clocks = [p["event_time_ms"] for p in parts if p["event_time_ms"] is not None]
        recovery_s = [p["last_recovery_s"] for p in parts if p["last_recovery_s"] is not None]
        return {
            "rows": sum(p["rows"] for p in parts),
            "keys": {kind: sum(p["keys"][kind] for p in parts) for kind in ("user", "merchant")},
            "last_snapshot_at": snapshot_time(None if None in taken else min(taken)),
            "event_time": None if not clocks else (EPOCH + timedelta(milliseconds=max(clocks))).isoformat(),
            "recoveries": sum(p["recoveries"] for p in parts),
            "replayed": sum(p["replayed"] for p in parts),
            "replayed_http": sum(p["replayed_http"] for p in parts),
            "last_recovery_s": max(recovery_s, default=None),
            "partitions": self.partitions,
            "shards": max(p["shards"] for p in parts),
        }

    def stats(self) -> dict[str, dict[str, int]]:
        parts = ray.get([actor.stats.remote() for actor in self.actors])
        return {kind: {name: sum(p[kind][name] for p in parts) for name in parts[0][kind]} for kind in KINDS}

    def shutdown(self) -> None:
        """Stop the actors (state not snapshotted is lost)."""
        for actor in self.actors:
            ray.kill(actor)
