"""HIGH alerts against the embedded SNS and DynamoDB over HTTP, through the cluster's alert desk: once per
transaction (retries and racing callers included), batched, and retried whole when publishing fails."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.aws import client
from cluster.config import Settings
from cluster.schema import Transaction
from serve.alerts import AlertPublisher, AlertPublishError
from tests.streams import drain_alerts, subscribe_alert_queue


def _decisions(prefix: str, levels: list[str]) -> tuple[list[dict], list[Transaction]]:
    decisions = [
        {
            "transaction_id": f"{prefix}-{i}",
            "fraud_score": 0.99 if level == "HIGH" else 0.1,
            "risk_level": level,
            "factors": ["Amount 6.2× this user's 30-day average"],
            "model_version": "v1",
        }
        for i, level in enumerate(levels)
    ]
    transactions = [
        Transaction(
            transaction_id=d["transaction_id"],
            user_id="u-1",
            merchant_id="m-1",
            amount=10.0,
            timestamp="2026-01-05T10:00:00Z",
            is_fraud=1,
        )
        for d in decisions
    ]
    return decisions, transactions


@pytest.fixture()
def alert_settings(ray_session: Settings) -> Settings:
    return ray_session.model_copy(update={"alert_topic": f"alerts-{uuid.uuid4().hex[:8]}"})


def test_each_high_decision_alerts_once_however_often_it_is_published(alert_settings: Settings) -> None:
    queue = subscribe_alert_queue(alert_settings, f"q-{uuid.uuid4().hex[:8]}")
    publisher = AlertPublisher(alert_settings)
    decisions, records = _decisions(uuid.uuid4().hex[:8], ["HIGH"] * 23 + ["LOW", "MEDIUM"])
    assert publisher.publish_high(decisions, records) == 23  # three PublishBatch calls
    assert publisher.publish_high(decisions[:5] * 2, records[:5] * 2) == 0  # a retry, repeats within it too
    messages = drain_alerts(alert_settings, queue)
    assert sorted(m["transaction"]["transaction_id"] for m in messages) == sorted(
        d["transaction_id"] for d in decisions[:23]
    )
    assert {m["risk_level"] for m in messages} == {"HIGH"} and all(m["model_version"] == "v1" for m in messages)
    assert not any("is_fraud" in m["transaction"] for m in messages)  # ground truth never rides along


def test_a_failed_publish_releases_its_claims_so_the_retry_alerts(alert_settings: Settings) -> None:
    publisher = AlertPublisher(alert_settings)
    decisions, records = _decisions(uuid.uuid4().hex[:8], ["HIGH"] * 4)
    assert publisher.publish_high(decisions[:1], records[:1]) == 1  # the desk is up and publishing
    decisions, records = decisions[1:], records[1:]
    sns = client("sns", alert_settings)
    sns.delete_topic(TopicArn=sns.create_topic(Name=alert_settings.alert_topic)["TopicArn"])  # publishing now fails
    with pytest.raises(AlertPublishError):
        publisher.publish_high(decisions, records)
    queue = subscribe_alert_queue(alert_settings, f"q-{uuid.uuid4().hex[:8]}")  # the topic is back
    assert publisher.publish_high(decisions, records) == 3
    assert len(drain_alerts(alert_settings, queue)) == 3


def test_callers_racing_with_the_same_transactions_alert_each_once(alert_settings: Settings) -> None:
    queue = subscribe_alert_queue(alert_settings, f"q-{uuid.uuid4().hex[:8]}")
    publishers = [AlertPublisher(alert_settings) for _ in range(2)]  # e.g. two replicas: one desk behind both
    decisions, records = _decisions(uuid.uuid4().hex[:8], ["HIGH"] * 40)
    with ThreadPoolExecutor(8) as pool:
        new = list(pool.map(lambda i: publishers[i % 2].publish_high(decisions[i % 3 :], records[i % 3 :]), range(8)))
    assert sum(new) == 40
    assert sorted(m["transaction"]["transaction_id"] for m in drain_alerts(alert_settings, queue)) == sorted(
        d["transaction_id"] for d in decisions
    )
