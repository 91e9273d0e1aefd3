"""HIGH decisions to SNS as JSON, exactly once per transaction_id even when a request is retried.

The alert ledger (DynamoDB) has one writer: the cluster's ``AlertDesk`` actor, named after the ledger, topic and endpoint,
to which every ingress replica and stream consumer hands its HIGH decisions. Being the only writer, the desk claims
with batch calls: ``BatchGetItem`` tells which transactions were alerted before and ``BatchWriteItem`` claims the
rest, 25 a call. Writers racing each other would need a conditional ``PutItem`` per alert instead (measured on the
embedded DynamoDB: 5.3 ms a put, 11 ms for a batch of 25, 12 ms to read 100 keys). The claims of concurrent callers
are decided one pass at a time (a pass takes everything queued meanwhile, ``serve.coalesce``), so a retry racing its
original still alerts once. Messages go out in ``PublishBatch`` calls of 10, shared by concurrent callers
(single-transaction requests alerting together do not make a call each). If publishing fails the claims are
released so a retry alerts; a desk lost between claiming and publishing loses those alerts rather than repeating
them (Ray restarts the desk and retries the call, which finds them claimed).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import ray

from cluster.aws import chunks, client, until_processed
from cluster.config import Settings
from cluster.runtime import cluster_desk, desk_name
from cluster.schema import LABEL_COLUMN, SCENARIO_COLUMN, Transaction
from serve.coalesce import Coalescer
from training.policy import HIGH

log = logging.getLogger(__name__)

MESSAGES_PER_CALL = 10  # PublishBatch limit
WRITES_PER_CALL = 25  # BatchWriteItem limit
READS_PER_CALL = 100  # BatchGetItem limit
CLAIMS_PER_PASS = 1_000  # alerts decided in one claim pass
IO_THREADS = 8  # batch calls of one pass in flight at once

Alert = tuple[dict[str, Any], dict[str, Any]]  # (decision, alert record)


def alert_record(transaction: Transaction) -> dict[str, Any]:
    """The transaction as an alert carries it: canonical JSON, without any ground truth it came with."""
    return transaction.model_copy(update={LABEL_COLUMN: None, SCENARIO_COLUMN: None}).to_record()


def high_alerts(decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> list[Alert]:
    """The batch's HIGH decisions with their alert records (transactions align with decisions), each id once."""
    high: dict[str, Alert] = {}
    for decision, transaction in zip(decisions, transactions):
        if decision["risk_level"] == HIGH and decision["transaction_id"] not in high:
            high[decision["transaction_id"]] = (decision, alert_record(transaction))
    return list(high.values())


class AlertPublishError(RuntimeError):
    """Some alerts could not be claimed or published; none of them is claimed now, so a retry alerts."""


class AlertDesk:
    """The ledger's one writer (run as a named Ray actor: ``AlertPublisher`` finds or starts it)."""

    def __init__(self, settings: Settings):
        self.table = settings.alert_ledger_table
        self.dynamodb = client("dynamodb", settings)
        self.sns = client("sns", settings)
        self.topic_arn = self.sns.create_topic(Name=settings.alert_topic)["TopicArn"]  # idempotent: the ARN
        self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="alert-io")  # threads start on demand
        self._claims = Coalescer(self._claim_pass, max_size=CLAIMS_PER_PASS, size=len)
        self._messages = Coalescer(self._publish_pass, max_size=CLAIMS_PER_PASS, size=len, concurrency=2)

    async def publish(self, alerts: list[Alert]) -> int:
        """Claim and publish; returns how many were new (the rest were alerted before)."""
        claimed = await self._claims(alerts)
        failed = await self._messages(claimed) if claimed else []
        if failed:
            await asyncio.to_thread(self._release, [decision["transaction_id"] for decision, _ in failed])
            raise AlertPublishError(f"{len(failed)} of {len(claimed)} alerts were not published")
        return len(claimed)

    async def _claim_pass(self, requests: list[list[Alert]]) -> list[list[Alert]]:
        return await asyncio.to_thread(self._claim, requests)

    async def _publish_pass(self, requests: list[list[Alert]]) -> list[list[Alert]]:
        """The callers' messages share full ``PublishBatch`` calls; returns each caller's failed alerts."""
        failed = {id(alert) for alert in await asyncio.to_thread(self._publish, [a for r in requests for a in r])}
        return [[alert for alert in request if id(alert) in failed] for request in requests]

    def _claim(self, requests: list[list[Alert]]) -> list[list[Alert]]:
        """Each request's alerts that this pass claimed: neither in the ledger nor earlier in the pass."""
        ids = list(dict.fromkeys(decision["transaction_id"] for request in requests for decision, _ in request))
        alerted = set().union(*self._pool.map(self._alerted, chunks(ids, READS_PER_CALL)))
        claimed: list[list[Alert]] = []
        for request in requests:
            mine = [alert for alert in request if alert[0]["transaction_id"] not in alerted]
            alerted.update(decision["transaction_id"] for decision, _ in mine)
            claimed.append(mine)
        new = [alert for request in claimed for alert in request]
        now = datetime.now(timezone.utc).isoformat()
        items = [
            {
                "transaction_id": {"S": decision["transaction_id"]},
                "alerted_at": {"S": now},
                "model_version": {"S": decision.get("model_version") or "unknown"},
            }
            for decision, _ in new
        ]
        writes = [
            self._pool.submit(self._write, [{"PutRequest": {"Item": item}} for item in chunk])
            for chunk in chunks(items, WRITES_PER_CALL)
        ]
        errors = [future.exception() for future in writes if future.exception() is not None]
        if errors:  # claims of a failed pass would block the retry's alerts: take them all back
            self._release([decision["transaction_id"] for decision, _ in new])
            raise AlertPublishError(f"claiming {len(new)} alerts failed: {errors[0]}") from errors[0]
        return claimed

    def _alerted(self, ids: Sequence[str]) -> set[str]:
        pending: dict[str, Any] = {
            self.table: {
                "Keys": [{"transaction_id": {"S": tid}} for tid in ids],
                "ProjectionExpression": "transaction_id",
                "ConsistentRead": True,
            }
        }
        return {
            item["transaction_id"]["S"]
            for response in until_processed(self.dynamodb.batch_get_item, pending, unprocessed="UnprocessedKeys")
            for item in response["Responses"].get(self.table, [])
        }

    def _write(self, requests: list[dict[str, Any]]) -> None:
        until_processed(self.dynamodb.batch_write_item, {self.table: requests}, unprocessed="UnprocessedItems")

    def _release(self, transaction_ids: list[str]) -> None:
        for chunk in chunks(transaction_ids, WRITES_PER_CALL):
            self._write([{"DeleteRequest": {"Key": {"transaction_id": {"S": tid}}}} for tid in chunk])

    def _publish(self, alerts: list[Alert]) -> list[Alert]:
        """Publish in batches of ``MESSAGES_PER_CALL``, concurrently; returns the alerts that failed."""
        return [
            alert
            for failed in self._pool.map(self._publish_batch, chunks(alerts, MESSAGES_PER_CALL))
            for alert in failed
        ]

    def _publish_batch(self, alerts: Sequence[Alert]) -> list[Alert]:
        entries = [
            {
                "Id": str(index),
                "Subject": "Fraud alert",
                "Message": json.dumps(
                    {
                        "transaction": record,
                        "fraud_score": decision["fraud_score"],
                        "risk_level": decision["risk_level"],
                        "factors": decision["factors"],
                        "model_version": decision["model_version"],
                    },
                    default=str,
                ),
                "MessageAttributes": {"risk_level": {"DataType": "String", "StringValue": decision["risk_level"]}},
            }
            for index, (decision, record) in enumerate(alerts)
        ]
        try:
            response = self.sns.publish_batch(TopicArn=self.topic_arn, PublishBatchRequestEntries=entries)
        except Exception:
            log.exception("publishing %d alerts failed", len(alerts))
            return list(alerts)
        failed = {int(entry["Id"]) for entry in response.get("Failed", [])}
        for index, (decision, _) in enumerate(alerts):
            if index not in failed:
                log.info("alert published for transaction %s", decision["transaction_id"])
        return [alerts[index] for index in sorted(failed)]


def alert_desk_name(settings: Settings) -> str:
    """One desk per ledger, topic, endpoint and region in a cluster."""
    return desk_name("alert", settings, settings.alert_ledger_table, settings.alert_topic)


class AlertPublisher:
    """Hands a batch's HIGH decisions to the cluster's alert desk (``cluster.runtime.cluster_desk``)."""

    def __init__(self, settings: Settings):
        self.desk = cluster_desk(AlertDesk, alert_desk_name(settings), settings)

    def submit(self, decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> Any:
        """The desk's call for the batch's HIGH decisions (an ObjectRef to how many were new), or None if none."""
        alerts = high_alerts(decisions, transactions)
        return self.desk.publish.remote(alerts) if alerts else None

    def publish_high(self, decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> int:
        """Publish every HIGH decision of a batch; returns how many were new. Raises ``AlertPublishError``."""
        call = self.submit(decisions, transactions)
        return ray.get(call) if call is not None else 0
