"""HIGH decisions to SNS as JSON, exactly once per transaction_id even when a request is retried.

A conditional put on the alert ledger (DynamoDB, ``attribute_not_exists``) claims the transaction before
publishing; a retried request finds the claim and publishes nothing. If publishing fails, the claim is released so
a retry can alert.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from cluster.aws import client
from cluster.config import Settings

log = logging.getLogger(__name__)

PUBLISH_THREADS = 8  # alerts of one batch go out concurrently: each is two round trips (ledger claim, publish)


class AlertPublisher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.dynamodb = client("dynamodb", settings)
        self.sns = client("sns", settings)
        self.topic_arn = self.sns.create_topic(Name=settings.alert_topic)["TopicArn"]  # idempotent: the ARN
        self._pool = ThreadPoolExecutor(PUBLISH_THREADS, thread_name_prefix="alerts")  # threads start on demand

    def _claim(self, transaction_id: str, model_version: str | None) -> bool:
        try:
            self.dynamodb.put_item(
                TableName=self.settings.alert_ledger_table,
                Item={"transaction_id": {"S": transaction_id},
                      "alerted_at": {"S": datetime.now(timezone.utc).isoformat()},
                      "model_version": {"S": model_version or "unknown"}},
                ConditionExpression="attribute_not_exists(transaction_id)")
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise

    def publish(self, decision: dict[str, Any], transaction: dict[str, Any]) -> bool:
        """Alert once for a HIGH decision; returns whether this call published."""
        transaction_id = decision["transaction_id"]
        if not self._claim(transaction_id, decision.get("model_version")):
            return False
        message = {"transaction": transaction, "fraud_score": decision["fraud_score"],
                   "risk_level": decision["risk_level"], "factors": decision["factors"],
                   "model_version": decision["model_version"]}
        try:
            self.sns.publish(TopicArn=self.topic_arn, Message=json.dumps(message, default=str),
                             Subject="Fraud alert", MessageAttributes={
                                 "risk_level": {"DataType": "String", "StringValue": decision["risk_level"]}})
        except Exception:
            self.dynamodb.delete_item(TableName=self.settings.alert_ledger_table,
                                      Key={"transaction_id": {"S": transaction_id}})
            raise
        log.info("alert published for transaction %s", transaction_id)
        return True

    def publish_high(self, decisions: list[dict[str, Any]], records: list[dict[str, Any]]) -> int:
        """Publish every HIGH decision of a batch (records align with decisions); returns how many were new."""
        high = [(decision, record) for decision, record in zip(decisions, records) if decision["risk_level"] == "HIGH"]
        if len(high) <= 1:
            return sum(self.publish(decision, record) for decision, record in high)
        return sum(self._pool.map(lambda pair: self.publish(*pair), high))
