"""Test helpers for AWS over HTTP: throwaway Kinesis streams, and an SQS queue that catches the SNS alerts."""

from __future__ import annotations

import json
import uuid
from typing import Any

from cluster.aws import client
from cluster.config import Settings
from cluster.feature_state import OnlineFeatures


def create_stream(settings: Settings, shards: int, prefix: str = "test") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    kinesis = client("kinesis", settings)
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    return name


def own_streams(settings: Settings, shards: int, prefix: str = "in") -> Settings:
    """Settings for stream scoring of a test's own: input and decision streams of its own, and a feature state named
    after them, so its consumers never join (nor snapshot over) the session app's state. The anomaly lane keeps its
    trained level there: these tests compare the stream's decisions with ones computed before it ran, while a live
    level moves with the session's traffic in between (``tests/system/test_anomaly_lane_live.py`` tests it)."""
    stream = create_stream(settings, shards, prefix)
    return settings.model_copy(
        update={
            "stream_name": stream,
            "decisions_stream_name": create_stream(settings, shards, f"{prefix}-out"),
            "feature_state_name": f"state-{stream}",
            "anomaly_review_live": False,
        }
    )


def stop_feature_state(settings: Settings) -> None:
    """Stop the actors of a test's own feature state: they are detached, so they would keep their CPU share for the
    rest of the session."""
    OnlineFeatures(settings, restore=False).shutdown()


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
