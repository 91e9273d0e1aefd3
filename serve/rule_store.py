"""The rule set in DynamoDB, and the cache every ingress replica and stream consumer scores with.

One item (``name = "rule_set"``) holds the current body and its version; a put writes version + 1 on condition
that the version it read is still there, so two concurrent writers never both publish the same version. Each
version is also kept as its own item (``rule_set#v<version>``) for audit and rollback by hand.

``RuleCache.current()`` re-reads the item at most every ``rules_refresh_s`` (at most 4 s, so a change applies
everywhere within 5 s with no restart) and compiles a new version once. A failed read keeps the last rule set: a
store outage must not stop scoring, and the next refresh tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

import orjson
from botocore.exceptions import ClientError

from cluster.aws import client
from cluster.config import Settings
from serve.lists import ListCache, Lists
from training.rules import CompiledRules, RuleError, RuleSet, RuleSetBody, lenient_lists

log = logging.getLogger(__name__)

CURRENT = "rule_set"
MAX_PUT_ATTEMPTS = 5


class RuleStore:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.dynamodb = client("dynamodb", settings)

    def get(self) -> RuleSet:
        """The stored rule set; version 0 with no rules when none was ever put."""
        item = self.dynamodb.get_item(
            TableName=self.settings.rules_table, Key={"name": {"S": CURRENT}}, ConsistentRead=True
        ).get("Item")
        if item is None:
            return RuleSet()
        return RuleSet.model_validate({**orjson.loads(item["body"]["S"]), "version": int(item["version"]["N"])})

    def version(self) -> int:
        item = self.dynamodb.get_item(
            TableName=self.settings.rules_table,
            Key={"name": {"S": CURRENT}},
            ProjectionExpression="version",
            ConsistentRead=True,
        ).get("Item")
        return int(item["version"]["N"]) if item else 0

    def put(self, body: RuleSetBody) -> RuleSet:
        """Store ``body`` as the next version; returns it with that version."""
        payload = orjson.dumps(body.model_dump(mode="json")).decode()
        for _ in range(MAX_PUT_ATTEMPTS):
            version = self.version() + 1
            item = {
                "body": {"S": payload},
                "version": {"N": str(version)},
                "updated_at": {"S": datetime.now(timezone.utc).isoformat()},
            }
            try:
                self.dynamodb.put_item(
                    TableName=self.settings.rules_table,
                    Item={"name": {"S": CURRENT}, **item},
                    ConditionExpression="attribute_not_exists(version) OR version = :previous",
                    ExpressionAttributeValues={":previous": {"N": str(version - 1)}},
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                continue  # another writer published this version first: build on theirs
            self.dynamodb.put_item(
                TableName=self.settings.rules_table, Item={"name": {"S": f"{CURRENT}#v{version:08d}"}, **item}
            )
            return RuleSet.model_validate({**body.model_dump(), "version": version})
        raise RuntimeError(f"rule set not stored: {MAX_PUT_ATTEMPTS} concurrent writers won the race")


class RuleCache:
    """The compiled current rule set, re-read every ``rules_refresh_s`` by whichever caller finds it stale, bound
    to the current lists (``ListCache``): compiled again when a list's kind changes, re-bound when its values do."""

    def __init__(self, settings: Settings, store: RuleStore | None = None, lists: ListCache | None = None):
        self.store = store or RuleStore(settings)
        self.lists = lists or ListCache(settings)
        self.refresh_s = settings.rules_refresh_s
        self._compiled = CompiledRules(RuleSet())
        self._bound, self._bound_to = self._compiled, Lists()
        self._checked = -float("inf")
        self._failing = False
        self._lock = threading.Lock()

    def current(self) -> CompiledRules:
        lists = self.lists.current()
        if time.monotonic() - self._checked >= self.refresh_s:
            with self._lock:
                if time.monotonic() - self._checked >= self.refresh_s:
                    self._refresh(lists)
        if lists is not self._bound_to or self._bound.version != self._compiled.version:
            with self._lock:
                self._bind(lists)
        return self._bound

    def install(self, rule_set: RuleSet) -> CompiledRules:
        """Use ``rule_set`` at once (the replica that stored it need not wait for its next refresh)."""
        with self._lock:
            if rule_set.version >= self._compiled.version:
                self._compiled = CompiledRules(rule_set, lists=lenient_lists(self._bound_to.kinds))
            self._checked = time.monotonic()
            self._bind(self._bound_to)
            return self._bound

    def _bind(self, lists: Lists) -> None:
        if lists.kinds != self._compiled.list_kinds:
            try:
                self._compiled = CompiledRules(self._compiled.rule_set, lists=lenient_lists(lists.kinds))
            except RuleError as exc:  # a list changed kind under a rule: keep the rules as they compiled
                log.warning(
                    "rule set version %s does not compile with the current lists (%s); keeping it as it was compiled",
                    self._compiled.version,
                    exc,
                )
        self._bound, self._bound_to = self._compiled.with_values(lists.values), lists

    def _refresh(self, lists: Lists) -> None:
        try:
            if self.store.version() != self._compiled.version:
                self._compiled = CompiledRules(self.store.get(), lists=lenient_lists(lists.kinds))
            self._failing = False
        except Exception as exc:  # keep scoring with the last rule set; the next refresh tries again
            if not self._failing:  # once per outage, not once per refresh
                log.warning(
                    "rule set refresh from %s failed (%s); still applying version %s",
                    self.store.settings.rules_table,
                    exc,
                    self._compiled.version,
                )
            self._failing = True
        self._checked = time.monotonic()
