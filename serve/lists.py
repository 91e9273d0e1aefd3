"""Allow/deny lists in DynamoDB (``@name`` in a rule), and the in-process cache every scorer reads them from.

The table (``lists_table``) is keyed by (``list``, ``value``): one item per list value, so a list of 100k values is
100k small items, read a page at a time by ``Query``. Each list's kind and version live in a catalog item
(``list = "#lists"``, ``value = <name>``; ``#`` is in no valid list name or value): every write bumps the version,
so a refresh reads the small catalog and re-reads only the lists that changed. A value may carry ``expires_at``
(epoch seconds, from ``ttl_s``); an expired value is ignored at read time, whether or not it is still stored
(the table's DynamoDB TTL on that attribute deletes it eventually, within days on AWS).

``ListCache.current()`` re-reads the catalog at most every ``rules_refresh_s`` (bounded staleness, as for the rule
set) and re-filters the expired values whenever the next expiry passes. A failed read keeps the last lists.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from cluster.aws import LIST_EXPIRY_ATTRIBUTE as EXPIRES
from cluster.aws import client, until_processed
from cluster.config import Settings
from training.rules import LIST_KINDS

log = logging.getLogger(__name__)

CATALOG = "#lists"
BATCH = 25  # DynamoDB's batch_write_item limit


@dataclass(frozen=True)
class ListInfo:
    name: str
    kind: str
    version: int


class ListStore:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.table = settings.lists_table
        self.dynamodb = client("dynamodb", settings)
        self.clock = clock

    # -- reads ----------------------------------------------------------------------------------------------------

    def catalog(self) -> dict[str, ListInfo]:
        """Every list's kind and version."""
        return {
            item["value"]["S"]: ListInfo(item["value"]["S"], item["kind"]["S"], int(item["version"]["N"]))
            for item in self._query(CATALOG, "#v, kind, version")
        }

    def kinds(self) -> dict[str, str]:
        return {name: info.kind for name, info in self.catalog().items()}

    def entries(self, name: str) -> list[tuple[str, float]]:
        """A list's stored values and when each expires (``inf``: never), expired ones included."""
        return [
            (item["value"]["S"], float(item[EXPIRES]["N"]) if EXPIRES in item else math.inf)
            for item in self._query(name, f"#v, {EXPIRES}")
        ]

    def values(self, name: str) -> list[str]:
        """A list's values that have not expired."""
        now = self.clock()
        return [value for value, expires in self.entries(name) if expires > now]

    def summary(self) -> list[dict[str, Any]]:
        """``GET /api/lists``: each list's name, kind and number of values that have not expired."""
        return [
            {"name": info.name, "kind": info.kind, "size": len(self.values(info.name))}
            for info in sorted(self.catalog().values(), key=lambda i: i.name)
        ]

    def _query(self, key: str, projection: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#l = :l",
            "ConsistentRead": True,
            "ExpressionAttributeNames": {"#l": "list", "#v": "value"},
            "ProjectionExpression": projection,
            "ExpressionAttributeValues": {":l": {"S": key}},
        }
        while True:
            page = self.dynamodb.query(**kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # -- writes ---------------------------------------------------------------------------------------------------

    def put(self, name: str, kind: str, values: Iterable[str], ttl_s: float | None = None) -> ListInfo:
        """Replace list ``name`` (created if new) by ``values`` of ``kind``."""
        if kind not in LIST_KINDS:
            raise ValueError(f"a list's kind is one of {', '.join(LIST_KINDS)}")
        wanted = list(dict.fromkeys(values))
        stale = {value for value, _ in self.entries(name)} - set(wanted)
        self._write(name, wanted, ttl_s)
        self._batch([{"DeleteRequest": {"Key": self._key(name, value)}} for value in sorted(stale)])
        return self._bump(name, kind)

    def add(self, name: str, values: Iterable[str], ttl_s: float | None = None) -> ListInfo:
        """Add (or renew) ``values`` in the existing list ``name``; ``KeyError`` when there is no such list."""
        info = self.catalog().get(name)
        if info is None:
            raise KeyError(name)
        self._write(name, list(dict.fromkeys(values)), ttl_s)
        return self._bump(name, info.kind)

    def remove(self, name: str, value: str) -> bool:
        """Remove one value; False when the list or the value was not there. ``KeyError`` when no such list."""
        info = self.catalog().get(name)
        if info is None:
            raise KeyError(name)
        old = self.dynamodb.delete_item(TableName=self.table, Key=self._key(name, value), ReturnValues="ALL_OLD").get(
            "Attributes"
        )
        self._bump(name, info.kind)
        return old is not None

    def _write(self, name: str, values: list[str], ttl_s: float | None) -> None:
        # whole epoch seconds, rounded up: the form DynamoDB's TTL documents
        extra = {} if ttl_s is None else {EXPIRES: {"N": str(math.ceil(self.clock() + ttl_s))}}
        self._batch([{"PutRequest": {"Item": {**self._key(name, value), **extra}}} for value in values])

    def _batch(self, requests: list[dict[str, Any]]) -> None:
        for start in range(0, len(requests), BATCH):
            until_processed(
                self.dynamodb.batch_write_item,
                {self.table: requests[start : start + BATCH]},
                unprocessed="UnprocessedItems",
            )

    def _bump(self, name: str, kind: str) -> ListInfo:
        attributes = self.dynamodb.update_item(
            TableName=self.table,
            Key=self._key(CATALOG, name),
            ReturnValues="ALL_NEW",
            UpdateExpression="SET kind = :kind, updated_at = :at ADD version :one",
            ExpressionAttributeValues={
                ":kind": {"S": kind},
                ":one": {"N": "1"},
                ":at": {"S": datetime.now(timezone.utc).isoformat()},
            },
        )["Attributes"]
        return ListInfo(name, kind, int(attributes["version"]["N"]))

    @staticmethod
    def _key(name: str, value: str) -> dict[str, Any]:
        return {"list": {"S": name}, "value": {"S": value}}


@dataclass(frozen=True)
class Lists:
    """The lists at one moment: each one's kind and its values that have not expired (numpy str arrays)."""

    kinds: dict[str, str] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Cached:
    info: ListInfo
    values: np.ndarray
    expires: np.ndarray


class ListCache:
    """The current lists, the catalog re-read every ``rules_refresh_s`` by whichever caller finds it stale."""

    def __init__(self, settings: Settings, store: ListStore | None = None, *, clock: Callable[[], float] | None = None):
        self.store = store or ListStore(settings)
        self.clock = clock or self.store.clock
        self.refresh_s = settings.rules_refresh_s
        self._cached: dict[str, _Cached] = {}
        self._lists = Lists()
        self._next_expiry = math.inf
        self._checked = -float("inf")
        self._failing = False
        self._lock = threading.Lock()

    def current(self) -> Lists:
        if time.monotonic() - self._checked < self.refresh_s and self.clock() < self._next_expiry:
            return self._lists
        with self._lock:
            if time.monotonic() - self._checked >= self.refresh_s:
                self._refresh()
            if self.clock() >= self._next_expiry:
                self._publish()
        return self._lists

    def _refresh(self) -> None:
        try:
            catalog = self.store.catalog()
            changed = False
            for name, info in catalog.items():
                cached = self._cached.get(name)
                if cached is None or cached.info != info:
                    entries = self.store.entries(name)
                    self._cached[name] = _Cached(
                        info,
                        np.array([v for v, _ in entries], dtype=str),
                        np.array([e for _, e in entries], dtype=np.float64),
                    )
                    changed = True
            for name in set(self._cached) - set(catalog):
                del self._cached[name]
                changed = True
            if changed:
                self._publish()
            self._failing = False
        except Exception as exc:  # keep the last lists; the next refresh tries again
            if not self._failing:
                log.warning("list refresh from %s failed (%s); still applying the last lists", self.store.table, exc)
            self._failing = True
        self._checked = time.monotonic()

    def _publish(self) -> None:
        now = self.clock()
        kinds, values, next_expiry = {}, {}, math.inf
        for name, cached in self._cached.items():
            live = cached.expires > now
            kinds[name] = cached.info.kind
            values[name] = cached.values[live]
            if live.any():
                next_expiry = min(next_expiry, float(cached.expires[live].min()))
        self._lists, self._next_expiry = Lists(kinds, values), next_expiry
