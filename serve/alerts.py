"""HIGH decisions to SNS as JSON, exactly once per transaction_id even when a request is retried.

A conditional put on the alert ledger (DynamoDB, ``attribute_not_exists``) claims the transaction before
publishing; a retried request finds the claim and publishes nothing. If publishing fails, the claim is released so
a retry can alert. A batch's claims go out concurrently, one ``PutItem`` each (``TransactWriteItems`` would take 100
per call, but moto copies the whole table on every transaction: a growing ledger made it quadratic), and its
messages in one ``PublishBatch`` per 10.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from cluster.aws import client
from cluster.config import Settings
from cluster.schema import LABEL_COLUMN, SCENARIO_COLUMN, Transaction

log = logging.getLogger(__name__)

CLAIM_THREADS = 8       # conditional puts of one batch in flight at once
MESSAGES_PER_CALL = 10  # PublishBatch limit


def alert_record(transaction: Transaction) -> dict[str, Any]:
    """The transaction as an alert carries it: canonical JSON, without any ground truth it came with."""
    return transaction.model_copy(update={LABEL_COLUMN: None, SCENARIO_COLUMN: None}).to_record()


class AlertPublishError(RuntimeError):
    """Some alerts could not be published; their claims were released so a retry alerts."""


class AlertPublisher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.dynamodb = client("dynamodb", settings)
        self.sns = client("sns", settings)
        self.topic_arn = self.sns.create_topic(Name=settings.alert_topic)["TopicArn"]  # idempotent: the ARN
        self._pool = ThreadPoolExecutor(CLAIM_THREADS, thread_name_prefix="alert-claims")  # threads start on demand

    def publish_high(self, decisions: Sequence[dict[str, Any]], transactions: Sequence[Transaction]) -> int:
        """Publish every HIGH decision of a batch (transactions align with decisions); returns how many were new."""
        high: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        for decision, transaction in zip(decisions, transactions):
            if decision["risk_level"] == "HIGH" and decision["transaction_id"] not in high:
                high[decision["transaction_id"]] = (decision, alert_record(transaction))
        pairs = list(high.values())
        outcomes = list(self._pool.map(self._claim, pairs) if len(pairs) > 1 else map(self._claim, pairs))
        claimed = [pair for pair, outcome in zip(pairs, outcomes) if outcome is True]
        failed = [pair for start in range(0, len(claimed), MESSAGES_PER_CALL)
                  for pair in self._publish(claimed[start:start + MESSAGES_PER_CALL])]
        if failed:
            self._release([decision["transaction_id"] for decision, _ in failed])
            raise AlertPublishError(f"{len(failed)} of {len(claimed)} alerts were not published")
        errors = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
        if errors:  # the claimed ones went out; these were never claimed, so a retry alerts
            raise AlertPublishError(f"{len(errors)} alert claims failed: {errors[0]}") from errors[0]
        return len(claimed)

    def _claim(self, pair: tuple[dict[str, Any], dict[str, Any]]) -> bool | Exception:
        """True if this call claimed the transaction, False if it was alerted before, or the error."""
        decision, _ = pair
        try:
            self.dynamodb.put_item(
                TableName=self.settings.alert_ledger_table,
                Item={"transaction_id": {"S": decision["transaction_id"]},
                      "alerted_at": {"S": datetime.now(timezone.utc).isoformat()},
                      "model_version": {"S": decision.get("model_version") or "unknown"}},
                ConditionExpression="attribute_not_exists(transaction_id)")
            return True
        except Exception as exc:
            taken = isinstance(exc, ClientError) and exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
            return False if taken else exc

    def _publish(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Publish up to ``MESSAGES_PER_CALL`` alerts; returns the pairs that failed."""
        if not pairs:
            return []
        entries = [{"Id": str(index), "Subject": "Fraud alert",
                    "Message": json.dumps({"transaction": record, "fraud_score": decision["fraud_score"],
                                           "risk_level": decision["risk_level"], "factors": decision["factors"],
                                           "model_version": decision["model_version"]}, default=str),
                    "MessageAttributes": {"risk_level": {"DataType": "String", "StringValue": decision["risk_level"]}}}
                   for index, (decision, record) in enumerate(pairs)]
        try:
            response = self.sns.publish_batch(TopicArn=self.topic_arn, PublishBatchRequestEntries=entries)
        except Exception:
            log.exception("publishing %d alerts failed", len(pairs))
            return pairs
        failed = {int(entry["Id"]) for entry in response.get("Failed", [])}
        for index, (decision, _) in enumerate(pairs):
            if index not in failed:
                log.info("alert published for transaction %s", decision["transaction_id"])
        return [pairs[index] for index in sorted(failed)]

    def _release(self, transaction_ids: list[str]) -> None:
        for start in range(0, len(transaction_ids), 25):
            pending = {self.settings.alert_ledger_table: [
                {"DeleteRequest": {"Key": {"transaction_id": {"S": tid}}}} for tid in transaction_ids[start:start + 25]]}
            while pending:
                pending = self.dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
