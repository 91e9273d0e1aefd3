"""Test helpers for AWS over HTTP: throwaway Kinesis streams, and an SQS queue that catches the SNS alerts."""

from __future__ import annotations

import json
import uuid
from typing import Any

from cluster.aws import client
from cluster.config import Settings


def create_stream(settings: Settings, shards: int, prefix: str = "test") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    kinesis = client("kinesis", settings)
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    return name


def subscribe_alert_queue(settings: Settings, name: str, topic: str | None = None) -> str:
    """An SQS queue subscribed to the alert topic (or ``topic``): every message published from now on lands there."""
    sqs, sns = client("sqs", settings), client("sns", settings)
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic_arn = sns.create_topic(Name=topic or settings.alert_topic)["TopicArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    return queue_url


def drain_alerts(settings: Settings, queue_url: str) -> list[dict[str, Any]]:
    """Every alert message waiting in the queue (removed from it), decoded."""
    sqs, messages = client("sqs", settings), []
    while True:
        page = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not page.get("Messages"):
            return messages
        for message in page["Messages"]:
            messages.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
