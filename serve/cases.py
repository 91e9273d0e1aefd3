"""The review queue: every decision whose final action is "review" opens one case (DynamoDB ``cases_table``), once
per transaction_id however often a request is retried or the stream replays a shard; an analyst closes it with a
label.

A case's key, ``case_id``, is derived from its transaction_id, and a case is opened by a conditional put
(``attribute_not_exists(case_id)``): a replay finds its case already there and changes nothing, so it neither
duplicates a case nor reopens a closed one. Closing is a conditional update (``status = open`` -> ``closed``), so a
case is decided once even when two analysts race.

Reads never scan the table. Two global secondary indexes are keyed by ``status``: ``by-risk`` sorts by
``risk_rank`` (the fraud score, then the amount, zero-padded so that text order is number order), so the open queue
in review order is one bounded ``Query`` of ``limit`` items; ``by-since`` sorts by ``since`` (``opened_at`` while open,
``closed_at`` once closed), which gives the oldest open case (one item) and the latest closed ones. The open count
is a ``COUNT`` query on the open cases of ``by-since``: it reads the open queue, never the closed history. Both
indexes have two partition keys only, which holds while cases open at an analyst team's pace (not thousands a second).

Opening a case is I/O on a small thread pool: the stream consumers wait for it before they checkpoint (a case that
could not be opened fails the batch, which the restarted consumer replays), the HTTP ingress does not wait (its
answer does not depend on the case). Each put is retried with backoff; one still failing is logged by its
transaction_id.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import orjson
from botocore.exceptions import ClientError

from cluster.aws import CASES_BY_RISK, CASES_BY_SINCE, client
from cluster.config import Settings
from cluster.schema import Transaction, format_timestamp
from cluster.waiting import backoff_s
from training.rules import REVIEW

log = logging.getLogger(__name__)

OPEN, CLOSED = "open", "closed"
STATUSES = (OPEN, CLOSED)
CASE_ID_PATTERN = r"^case-[0-9a-f]{20}$"
IO_THREADS = 4
PUT_ATTEMPTS = 6           # per case, on top of boto3's own retries of throttling
BACKGROUND_ATTEMPTS = 12   # the ingress's cases: nobody waits for them, so they may wait longer for DynamoDB
AMOUNT_WIDTH = 16          # characters of a zero-padded amount: the schema's largest, 1000000.0000, takes 12


class CaseNotFound(KeyError):
    """No case with that id."""


class CaseClosed(RuntimeError):
    """The case was decided already."""

    def __init__(self, case: dict[str, Any]):
        super().__init__(f"case {case['case_id']} was closed at {case.get('closed_at')}")
        self.case = case


class CasesNotOpened(RuntimeError):
    """Some cases are still not stored after every retry (their transaction ids are logged)."""


def case_id(transaction_id: str) -> str:
    """The case of a transaction: the same id however often the transaction is scored."""
    return f"case-{hashlib.blake2b(transaction_id.encode(), digest_size=10).hexdigest()}"


def risk_rank(fraud_score: float, amount: float) -> str:
    """Text that sorts as (fraud_score, amount) do."""
    return f"{fraud_score:.12f}#{amount:0{AMOUNT_WIDTH}.4f}"


def new_cases(decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction],
              opened_at: datetime) -> list[dict[str, Any]]:
    """A case for each review decision (``transactions`` align with ``decisions``), each transaction once."""
    opened = format_timestamp(opened_at)
    cases: dict[str, dict[str, Any]] = {}
    for decision, transaction in zip(decisions, transactions):
        if decision["action"] != REVIEW or decision["transaction_id"] in cases:
            continue
        cases[decision["transaction_id"]] = {
            "case_id": case_id(decision["transaction_id"]), "transaction_id": decision["transaction_id"],
            "opened_at": opened, "fraud_score": decision["fraud_score"], "risk_level": decision["risk_level"],
            "factors": decision["factors"], "rules": decision["rules"], "action": decision["action"],
            "user_id": transaction.user_id, "merchant_id": transaction.merchant_id, "amount": transaction.amount,
            "currency": transaction.currency, "timestamp": format_timestamp(transaction.timestamp),
            **({"reasons": decision["reasons"]} if decision.get("reasons") else {})}
    return list(cases.values())


class CaseStore:
    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.table = settings.cases_table
        self.dynamodb = client("dynamodb", settings)
        self.clock = clock
        self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="cases")  # threads start on demand

    def close(self) -> None:
        """Wait for the cases still being opened (with their retries): a stopping replica calls it last."""
        self._pool.shutdown(wait=True)

    # -- opening --------------------------------------------------------------------------------------------------

    def open_many(self, decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> int:
        """Open a case for each review decision not opened before; returns how many are new. Raises
        ``CasesNotOpened`` once retries are exhausted (the caller replays: opening is idempotent)."""
        futures = self._submit(new_cases(decisions, transactions, self.clock()), PUT_ATTEMPTS)
        failed = [tid for tid, future in futures if future.exception() is not None]
        if failed:
            raise CasesNotOpened(f"{len(failed)} case(s) not opened, e.g. for transaction {failed[0]}")
        return sum(future.result() for _, future in futures)

    def open_later(self, decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> list[Future]:
        """``open_many`` without waiting: the puts run (and are retried) on the pool; a case still failing is
        logged by its transaction_id. Returns the puts' futures (True: opened now, False: opened before)."""
        return [future for _, future in
                self._submit(new_cases(decisions, transactions, self.clock()), BACKGROUND_ATTEMPTS)]

    def _submit(self, cases: list[dict[str, Any]], attempts: int) -> list[tuple[str, Future]]:
        return [(case["transaction_id"], self._pool.submit(self._open, case, attempts)) for case in cases]

    def _open(self, case: dict[str, Any], attempts: int) -> bool:
        item = {"case_id": {"S": case["case_id"]}, "transaction_id": {"S": case["transaction_id"]},
                "status": {"S": OPEN}, "opened_at": {"S": case["opened_at"]}, "since": {"S": case["opened_at"]},
                "risk_rank": {"S": risk_rank(case["fraud_score"], case["amount"])},
                "opened": {"S": orjson.dumps(case).decode()}}
        for attempt in range(attempts):
            try:
                self.dynamodb.put_item(TableName=self.table, Item=item,
                                       ConditionExpression="attribute_not_exists(case_id)")
                return True
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                    return False  # opened before (a retry or a replay): left as it is, open or closed
                error: Exception = exc
            except Exception as exc:  # the endpoint unreachable, a timeout: retried like throttling
                error = exc
            if attempt + 1 < attempts:
                time.sleep(backoff_s(attempt, base_s=0.2, cap_s=30.0))
        log.error("case for transaction %s not opened after %d attempts: %s", case["transaction_id"], attempts,
                  type(error).__name__)
        raise CasesNotOpened(case["transaction_id"]) from error

    # -- reading --------------------------------------------------------------------------------------------------

    def get(self, case_id: str) -> dict[str, Any]:
        item = self.dynamodb.get_item(TableName=self.table, Key={"case_id": {"S": case_id}},
                                      ConsistentRead=True).get("Item")
        if item is None:
            raise CaseNotFound(case_id)
        return _case(item)

    def list(self, status: str = OPEN, limit: int = 50) -> list[dict[str, Any]]:
        """Open cases by fraud score then amount, highest first; closed cases latest closed first."""
        index = CASES_BY_RISK if status == OPEN else CASES_BY_SINCE
        return [_case(item) for item in self._query(index, status, limit=limit, newest_first=True)]

    def open_count(self) -> int:
        return sum(page["Count"] for page in self._pages(CASES_BY_SINCE, OPEN, Select="COUNT"))

    def oldest_open_at(self) -> str | None:
        oldest = self._query(CASES_BY_SINCE, OPEN, limit=1, newest_first=False)
        return _case(oldest[0])["opened_at"] if oldest else None

    def queue(self, status: str = OPEN, limit: int = 50) -> dict[str, Any]:
        """``GET /api/cases``: the cases asked for, and how many cases are open since when."""
        return {"cases": self.list(status, limit), "open": self.open_count(), "oldest_open_at": self.oldest_open_at()}

    def _query(self, index: str, status: str, *, limit: int, newest_first: bool) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in self._pages(index, status, Limit=limit, ScanIndexForward=not newest_first):
            items.extend(page.get("Items", []))
            if len(items) >= limit:
                break
        return items[:limit]

    def _pages(self, index: str, status: str, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {"TableName": self.table, "IndexName": index, "KeyConditionExpression": "#s = :s",
                                  "ExpressionAttributeNames": {"#s": "status"},
                                  "ExpressionAttributeValues": {":s": {"S": status}}, **extra}
        while True:
            page = self.dynamodb.query(**kwargs)
            yield page
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # -- deciding -------------------------------------------------------------------------------------------------

    def decide(self, case_id: str, is_fraud: bool, analyst: str, note: str | None = None) -> dict[str, Any]:
        """Close an open case with the analyst's label; returns the closed case. ``CaseNotFound`` for an unknown
        id, ``CaseClosed`` when it was decided before."""
        closed_at = format_timestamp(self.clock())
        values = {":open": {"S": OPEN}, ":closed": {"S": CLOSED}, ":at": {"S": closed_at},
                  ":analyst": {"S": analyst}, ":fraud": {"BOOL": bool(is_fraud)}}
        update = "SET #s = :closed, since = :at, closed_at = :at, analyst = :analyst, is_fraud = :fraud"
        if note is not None:
            update += ", note = :note"
            values[":note"] = {"S": note}
        try:
            attributes = self.dynamodb.update_item(
                TableName=self.table, Key={"case_id": {"S": case_id}}, UpdateExpression=update,
                ConditionExpression="#s = :open", ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values, ReturnValues="ALL_NEW")["Attributes"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            raise CaseClosed(self.get(case_id)) from None  # CaseNotFound when there was no case at all
        return _case(attributes)

    def reopen(self, case_id: str) -> None:
        """Undo ``decide`` (its label could not be applied), so that the analyst's retry closes it."""
        self.dynamodb.update_item(
            TableName=self.table, Key={"case_id": {"S": case_id}},
            UpdateExpression="SET #s = :open, since = opened_at REMOVE closed_at, analyst, is_fraud, note",
            ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":open": {"S": OPEN}})


def _case(item: dict[str, Any]) -> dict[str, Any]:
    """A stored item as the API shows it: the case as opened, its status, and once closed the analyst's label."""
    case = {**orjson.loads(item["opened"]["S"]), "status": item["status"]["S"]}
    for name in ("closed_at", "analyst", "note"):
        if name in item:
            case[name] = item[name]["S"]
    if "is_fraud" in item:
        case["is_fraud"] = item["is_fraud"]["BOOL"]
    return case
