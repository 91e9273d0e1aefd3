"""User and merchant profiles: the enrichment data held in DynamoDB (single home of their columns).

The simulator writes them; scoring reads them through ``ProfileStore``, whose in-process TTL cache keeps
DynamoDB off the hot path (one ``BatchGetItem`` per batch of cache misses, never one call per transaction).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from boto3.dynamodb.table import BatchWriter
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from cachetools import TTLCache

from cluster.aws import client, until_processed
from cluster.config import Settings, get_settings

USER_PROFILE_COLUMNS = {
    "user_id": "string",
    "home_lat": "float64",
    "home_lon": "float64",
    "home_country": "string",
    "account_opened": "datetime64[ns, UTC]",
    "credit_limit": "float64",
    "kyc_level": "int64",
    "segment": "string",
}
MERCHANT_PROFILE_COLUMNS = {
    "merchant_id": "string",
    "mcc": "string",
    "lat": "float64",
    "lon": "float64",
    "country": "string",
    "typical_ticket": "float64",
}
_BATCH_GET_LIMIT = 100
_PARALLEL_GETS = 8  # BatchGetItem calls in flight for one cold lookup (a restarted state actor's replay)
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def profile_paths(history: Path) -> tuple[Path, Path]:
    """The files beside a history file that hold its user and merchant profiles."""
    history = Path(history)
    return history.with_name(f"{history.stem}.users.parquet"), history.with_name(f"{history.stem}.merchants.parquet")


def conform(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Keep the profile columns in their dtypes; absent columns become missing values."""
    out = pd.DataFrame(index=frame.index)
    for name, dtype in columns.items():
        absent = np.nan if dtype == "float64" else pd.NA  # a float column absent from every row is NaN
        values = frame[name] if name in frame.columns else pd.Series(absent, index=frame.index, dtype=object)
        out[name] = (pd.to_datetime(values, utc=True) if dtype.startswith("datetime") else values).astype(dtype)
    return out.reset_index(drop=True)


def _to_item(row: dict[str, Any]) -> dict[str, Any]:
    item = {}
    for key, value in row.items():
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            continue
        if isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif isinstance(value, float):
            value = Decimal(repr(value))
        elif hasattr(value, "item"):
            value = value.item()
            value = Decimal(repr(value)) if isinstance(value, float) else value
        item[key] = _serializer.serialize(value)
    return item


def _from_item(item: dict[str, Any]) -> dict[str, Any]:
    row = {key: _deserializer.deserialize(value) for key, value in item.items()}
    return {key: float(value) if isinstance(value, Decimal) else value for key, value in row.items()}


def put_profiles(table: str, frame: pd.DataFrame, settings: Settings | None = None) -> int:
    """Write every row with ``BatchWriteItem`` (25 per call), retrying unprocessed items."""
    rows = frame.to_dict(orient="records")
    with BatchWriter(table, client("dynamodb", settings or get_settings())) as writer:
        for row in rows:
            writer.put_item(_to_item(row))
    return len(rows)


class ProfileStore:
    """Reads profiles by key with an in-process TTL cache; unknown keys are cached as misses too."""

    def __init__(
        self, table: str, key: str, settings: Settings | None = None, ttl_s: float = 300.0, max_entries: int = 200_000
    ):
        self.table = table
        self.key = key
        self._settings = settings or get_settings()
        self._cache: TTLCache = TTLCache(maxsize=max_entries, ttl=ttl_s)
        self._lock = threading.Lock()
        self.dynamodb_calls = 0

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        wanted = list(dict.fromkeys(keys))
        with self._lock:
            found = {k: self._cache[k] for k in wanted if k in self._cache}
        missing = [k for k in wanted if k not in found]
        if missing:
            fetched = self._fetch(missing)
            with self._lock:
                for k in missing:
                    self._cache[k] = fetched.get(k)
                    found[k] = fetched.get(k)
        return found

    def _fetch(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Batches of ``_BATCH_GET_LIMIT`` keys, up to ``_PARALLEL_GETS`` at once (one round trip each)."""
        dynamodb = client("dynamodb", self._settings)

        def fetch(chunk: list[str]) -> list[dict[str, Any]]:
            wanted = {self.table: {"Keys": [{self.key: {"S": k}} for k in chunk]}}
            return until_processed(dynamodb.batch_get_item, wanted, unprocessed="UnprocessedKeys")

        chunks = [keys[start : start + _BATCH_GET_LIMIT] for start in range(0, len(keys), _BATCH_GET_LIMIT)]
        if len(chunks) == 1:
            answers = [fetch(chunks[0])]
        else:
            with ThreadPoolExecutor(min(_PARALLEL_GETS, len(chunks)), thread_name_prefix="profiles") as pool:
                answers = list(pool.map(fetch, chunks))
        rows: dict[str, dict[str, Any]] = {}
        for responses in answers:
            self.dynamodb_calls += len(responses)
            for response in responses:
                for item in response["Responses"].get(self.table, []):
                    row = _from_item(item)
                    rows[row[self.key]] = row
        return rows


def user_store(settings: Settings | None = None) -> ProfileStore:
    settings = settings or get_settings()
    return ProfileStore(settings.user_table, "user_id", settings)


def merchant_store(settings: Settings | None = None) -> ProfileStore:
    settings = settings or get_settings()
    return ProfileStore(settings.merchant_table, "merchant_id", settings)


def scan_profiles(table: str, columns: dict[str, str], settings: Settings | None = None) -> pd.DataFrame:
    """Every profile in a table (offline feature building reads them all at once)."""
    paginator = client("dynamodb", settings or get_settings()).get_paginator("scan")
    rows = [_from_item(item) for page in paginator.paginate(TableName=table) for item in page.get("Items", [])]
    return conform(pd.DataFrame(rows), columns)
