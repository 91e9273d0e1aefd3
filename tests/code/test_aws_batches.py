"""DynamoDB batch calls resend what DynamoDB left unprocessed (partial throttling) until all is done."""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd
import pytest

from cluster.aws import client, until_processed
from cluster.config import Settings
from cluster.profiles import put_profiles, scan_profiles


def test_unprocessed_items_are_resent_until_none_are_left() -> None:
    sent: list[list[str]] = []

    def throttled(RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803 (boto3's keyword)
        items = RequestItems["t"]
        sent.append(items)
        return {"UnprocessedItems": {"t": items[1:]} if len(items) > 1 else {}}

    responses = until_processed(throttled, {"t": ["a", "b", "c"]}, unprocessed="UnprocessedItems")
    assert sent == [["a", "b", "c"], ["b", "c"], ["c"]]
    assert len(responses) == 3


def test_items_still_unprocessed_after_every_attempt_raise() -> None:
    def stuck(RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        return {"UnprocessedKeys": RequestItems}

    with pytest.raises(RuntimeError, match="unprocessed after 3 attempts"):
        until_processed(stuck, {"t": {"Keys": [1]}}, unprocessed="UnprocessedKeys", max_attempts=3)


def test_profiles_round_trip_through_the_batch_writer(aws_settings: Settings) -> None:
    """60 profiles (more than one BatchWriteItem of 25) into a table of this test's own."""
    table = f"fraud-batch-writer-{uuid.uuid4().hex[:8]}"
    dynamodb = client("dynamodb", aws_settings)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "merchant_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "merchant_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    frame = pd.DataFrame({"merchant_id": [f"m{i}" for i in range(60)], "typical_ticket": [float(i) for i in range(60)]})
    try:
        assert put_profiles(table, frame, aws_settings) == 60
        stored = scan_profiles(table, {"merchant_id": "string", "typical_ticket": "float64"}, aws_settings)
        assert sorted(stored["typical_ticket"].tolist()) == [float(i) for i in range(60)]
    finally:
        dynamodb.delete_table(TableName=table)
