"""The review queue: every decision whose final action is "review" opens one case (DynamoDB ``cases_table``), once
per transaction_id however often a request is retried or the stream replays a shard; an analyst closes it with a
label.

A case's key, ``case_id``, is derived from its transaction_id, and a case is written only where none exists (how,
below): a replay finds its case already there and changes nothing, so it neither duplicates a case nor reopens a
closed one. Closing is a conditional update (``status = open`` -> ``closed``), so a
case is decided once even when two analysts race.

Reads never scan the table. Two global secondary indexes are keyed by ``status``: ``by-risk`` sorts by
``risk_rank`` (the fraud score, then the amount, zero-padded so that text order is number order; the anomaly review
lane's cases first, by anomaly score: the lane is a budget of unusual rows the model cannot judge, worked before
the model's doubtful ones), so the open queue in review order is one bounded ``Query`` of ``limit`` items; ``by-since`` sorts by ``since`` (``opened_at`` while open,
``closed_at`` once closed), which gives the oldest open case (one item) and the latest closed ones. The open count
is a ``COUNT`` query on the open cases of ``by-since``: it reads the open queue, never the closed history. Both
indexes have two partition keys only, which holds while cases open at an analyst team's pace (not thousands a second).

Cases are opened by one writer per cluster, the ``CaseDesk`` actor (found or started by ``CaseOpener``, as the
alert desk is): every ingress replica and stream consumer hands it the review decisions of a batch. Being the only
opener, the desk opens with batch calls: ``BatchGetItem`` (consistent) tells which cases exist and ``BatchWriteItem``
puts the rest, 25 a call, where racing openers would need a conditional ``PutItem`` per case (a round trip each: the
cost that bounded a batch of transactions); a pass of one or two cases still takes the conditional puts
(``attribute_not_exists(case_id)``), fewer calls. Nothing else creates a case, and an analyst closes only a case
that exists, so a case the desk finds absent stays absent until the desk writes it. Concurrent callers share a pass (``serve.coalesce``), one pass at a time, so a retry racing its
original opens its case once. The stream consumers wait for the desk before they checkpoint (a case that could not
be opened fails the batch, which the restarted consumer replays); the HTTP ingress does not wait (its answer does
not depend on the case). A failed pass is retried with backoff; cases still not stored are logged by transaction_id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
import ray
from botocore.exceptions import ClientError

from cluster.aws import CASES_BY_RISK, CASES_BY_SINCE, chunks, client, until_processed
from cluster.config import Settings
from cluster.runtime import cluster_desk, desk_name
from cluster.schema import Transaction, format_timestamp
from cluster.waiting import backoff_s
from serve.coalesce import Coalescer
from training.rules import REVIEW

log = logging.getLogger(__name__)

OPEN, CLOSED = "open", "closed"
STATUSES = (OPEN, CLOSED)
CASE_ID_PATTERN = r"^case-[0-9a-f]{20}$"
OPEN_ATTEMPTS = 6  # per pass, on top of boto3's own retries of throttling and unprocessed items
READS_PER_CALL = 100  # BatchGetItem limit
WRITES_PER_CALL = 25  # BatchWriteItem limit
CASES_PER_PASS = 1_000  # cases the desk opens in one pass
LOGGED_IDS = 10  # transaction ids named when cases cannot be opened
PUT_SINGLY_UP_TO = 2  # cases of a pass put one by one: fewer calls than a read and a batch write
AMOUNT_WIDTH = 16  # characters of a zero-padded amount: the schema's largest, 1000000.0000, takes 12


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


LANE_RANK = "L"  # sorts after every digit, so a lane case comes first in the descending queue


def risk_rank(fraud_score: float, amount: float, anomaly_score: float | None = None) -> str:
    """Text that sorts as (fraud_score, amount) do; a lane case (``anomaly_score`` given) above all of them, as
    (anomaly_score, amount)."""
    if anomaly_score is not None:
        return f"{LANE_RANK}{anomaly_score:.12f}#{amount:0{AMOUNT_WIDTH}.4f}"
    return f"{fraud_score:.12f}#{amount:0{AMOUNT_WIDTH}.4f}"


def new_cases(
    decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction], opened_at: datetime
) -> list[dict[str, Any]]:
    """A case for each review decision (``transactions`` align with ``decisions``), each transaction once."""
    opened = format_timestamp(opened_at)
    cases: dict[str, dict[str, Any]] = {}
    for decision, transaction in zip(decisions, transactions):
        if decision["action"] != REVIEW or decision["transaction_id"] in cases:
            continue
        cases[decision["transaction_id"]] = {
            "case_id": case_id(decision["transaction_id"]),
            "transaction_id": decision["transaction_id"],
            "opened_at": opened,
            "fraud_score": decision["fraud_score"],
            "risk_level": decision["risk_level"],
            "factors": decision["factors"],
            "rules": decision["rules"],
            "action": decision["action"],
            "anomaly_review": bool(decision.get("anomaly_review", False)),
            "anomaly_score": decision.get("anomaly_score"),
            "user_id": transaction.user_id,
            "merchant_id": transaction.merchant_id,
            "amount": transaction.amount,
            "currency": transaction.currency,
            "timestamp": format_timestamp(transaction.timestamp),
            **({"reasons": decision["reasons"]} if decision.get("reasons") else {}),
        }
    return list(cases.values())


class CaseStore:
    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.table = settings.cases_table
        self.dynamodb = client("dynamodb", settings)
        self.clock = clock

    # -- opening (only the case desk opens: see the module's docstring) -------------------------------------------

    def open_many(self, decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> int:
        """Open a case for each review decision not opened before; returns how many are new."""
        return len(self.open_cases(new_cases(decisions, transactions, self.clock())))

    def open_cases(self, cases: Sequence[dict[str, Any]]) -> set[str]:
        """Store the cases that do not exist yet; returns the transaction_ids opened now. Raises
        ``CasesNotOpened`` once retries are exhausted (the caller replays: opening is idempotent)."""
        pending = list({case["case_id"]: case for case in cases}.values())
        opened: set[str] = set()
        for attempt in range(OPEN_ATTEMPTS):
            try:
                self._store_absent(pending, opened)
                return opened
            except Exception as exc:  # the endpoint unreachable, no table, a timeout: the pass is retried
                error = exc
                pending = [case for case in pending if case["transaction_id"] not in opened]
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(backoff_s(attempt, base_s=0.2, cap_s=30.0))
        ids = [case["transaction_id"] for case in pending]
        log.error(
            "%d case(s) not opened after %d attempts (%s), for transactions %s",
            len(ids),
            OPEN_ATTEMPTS,
            type(error).__name__,
            ", ".join(ids[:LOGGED_IDS]) + (" ..." if len(ids) > LOGGED_IDS else ""),
        )
        raise CasesNotOpened(f"{len(ids)} case(s) not opened, e.g. for transaction {ids[0]}") from error

    def _store_absent(self, cases: Sequence[dict[str, Any]], opened: set[str]) -> None:
        """Write the cases not stored yet, adding each one written to ``opened``. One or two cases are put
        conditionally, a call each; more are read (which exist) and the rest written in batches: two calls per 25."""
        if len(cases) <= PUT_SINGLY_UP_TO:
            opened.update(case["transaction_id"] for case in cases if self._put_if_absent(case))
            return
        existing = self._existing([case["case_id"] for case in cases])
        for chunk in chunks([case for case in cases if case["case_id"] not in existing], WRITES_PER_CALL):
            until_processed(
                self.dynamodb.batch_write_item,
                {self.table: [{"PutRequest": {"Item": _item(case)}} for case in chunk]},
                unprocessed="UnprocessedItems",
            )
            opened.update(case["transaction_id"] for case in chunk)

    def _put_if_absent(self, case: dict[str, Any]) -> bool:
        try:
            self.dynamodb.put_item(
                TableName=self.table, Item=_item(case), ConditionExpression="attribute_not_exists(case_id)"
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False  # opened before (a retry or a replay): left as it is, open or closed
            raise

    def _existing(self, case_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in chunks(case_ids, READS_PER_CALL):
            request = {
                self.table: {
                    "Keys": [{"case_id": {"S": cid}} for cid in chunk],
                    "ProjectionExpression": "case_id",
                    "ConsistentRead": True,
                }
            }
            for response in until_processed(self.dynamodb.batch_get_item, request, unprocessed="UnprocessedKeys"):
                found.update(item["case_id"]["S"] for item in response["Responses"].get(self.table, []))
        return found

    # -- reading --------------------------------------------------------------------------------------------------

    def get(self, case_id: str) -> dict[str, Any]:
        item = self.dynamodb.get_item(TableName=self.table, Key={"case_id": {"S": case_id}}, ConsistentRead=True).get(
            "Item"
        )
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
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":s": {"S": status}},
            **extra,
        }
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
        values = {
            ":open": {"S": OPEN},
            ":closed": {"S": CLOSED},
            ":at": {"S": closed_at},
            ":analyst": {"S": analyst},
            ":fraud": {"BOOL": bool(is_fraud)},
        }
        update = "SET #s = :closed, since = :at, closed_at = :at, analyst = :analyst, is_fraud = :fraud"
        if note is not None:
            update += ", note = :note"
            values[":note"] = {"S": note}
        try:
            attributes = self.dynamodb.update_item(
                TableName=self.table,
                Key={"case_id": {"S": case_id}},
                UpdateExpression=update,
                ConditionExpression="#s = :open",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            raise CaseClosed(self.get(case_id)) from None  # CaseNotFound when there was no case at all
        return _case(attributes)

    def reopen(self, case_id: str) -> None:
        """Undo ``decide`` (its label could not be applied), so that the analyst's retry closes it."""
        self.dynamodb.update_item(
            TableName=self.table,
            Key={"case_id": {"S": case_id}},
            UpdateExpression="SET #s = :open, since = opened_at REMOVE closed_at, analyst, is_fraud, note",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":open": {"S": OPEN}},
        )


def _item(case: dict[str, Any]) -> dict[str, Any]:
    return {
        "case_id": {"S": case["case_id"]},
        "transaction_id": {"S": case["transaction_id"]},
        "status": {"S": OPEN},
        "opened_at": {"S": case["opened_at"]},
        "since": {"S": case["opened_at"]},
        "risk_rank": {
            "S": risk_rank(
                case["fraud_score"], case["amount"], case["anomaly_score"] if case.get("anomaly_review") else None
            )
        },
        "opened": {"S": orjson.dumps(case).decode()},
    }


def _case(item: dict[str, Any]) -> dict[str, Any]:
    """A stored item as the API shows it: the case as opened, its status, and once closed the analyst's label."""
    case = {"anomaly_review": False, "anomaly_score": None}  # cases opened before the lane flag
    case |= {**orjson.loads(item["opened"]["S"]), "status": item["status"]["S"]}
    for name in ("closed_at", "analyst", "note"):
        if name in item:
            case[name] = item[name]["S"]
    if "is_fraud" in item:
        case["is_fraud"] = item["is_fraud"]["BOOL"]
    return case


class CaseDesk:
    """The cases table's one opener (run as a named Ray actor: ``CaseOpener`` finds or starts it)."""

    def __init__(self, settings: Settings):
        self.store = CaseStore(settings)
        self._passes = Coalescer(self._open_pass, max_size=CASES_PER_PASS, size=len)

    async def open(self, cases: list[dict[str, Any]]) -> int:
        """Open the cases not opened before; returns how many of this call's are new."""
        return await self._passes(cases)

    async def _open_pass(self, requests: list[list[dict[str, Any]]]) -> list[int]:
        opened = await asyncio.to_thread(self.store.open_cases, [case for request in requests for case in request])
        counts = []
        for request in requests:  # a case two callers of the pass both hand in counts for the first one
            mine = {case["transaction_id"] for case in request} & opened
            opened -= mine
            counts.append(len(mine))
        return counts


def case_desk_name(settings: Settings) -> str:
    """One desk per cases table, endpoint and region in a cluster."""
    return desk_name("case", settings, settings.cases_table)


class CaseOpener:
    """Hands a batch's review decisions to the cluster's case desk (``cluster.runtime.cluster_desk``)."""

    def __init__(self, settings: Settings):
        self.desk = cluster_desk(CaseDesk, case_desk_name(settings), settings)

    def submit(self, decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> Any:
        """The desk's call for the batch's review decisions (an ObjectRef to how many were new), or None if none."""
        cases = new_cases(decisions, transactions, datetime.now(timezone.utc))
        return self.desk.open.remote(cases) if cases else None

    def open_many(self, decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> int:
        """Open the batch's cases and wait; returns how many were new. Raises ``CasesNotOpened``."""
        call = self.submit(decisions, transactions)
        return ray.get(call) if call is not None else 0
