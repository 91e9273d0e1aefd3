"""One keyed feature state behind every scoring path: a card whose transactions go in turn to one ingress replica,
to another, and through the stream consumers gets velocity windows that count every one of them, as if a single
process had scored the card."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import requests
from ray import serve

from cluster.aws import client
from cluster.config import Settings
from cluster.feature_state import OnlineFeatures
from cluster.features import FEATURE_NAMES
from cluster.kinesis import put_records_reliably, read_stream
from cluster.schema import format_timestamp
from cluster.waiting import wait_until
from serve.app import build_app
from serve.stream import StreamScoring
from tests.system.test_state_recovery import columns_of
from tests.system.test_stream import stream_settings

PATHS = ("first replica", "second replica", "stream")
TURNS = 9


@pytest.fixture()
def second_ingress(served: tuple[str, Settings]) -> Iterator[str]:
    """A second app beside the session's on the same feature state (the default name): its ingress is another
    replica process, with a coordinator of its own, as a replica added by autoscaling would be."""
    url, settings = served
    serve.run(build_app(settings), name="fraud-second-replica", route_prefix="/second")
    try:
        wait_until(
            lambda: requests.get(f"{url}/second/healthz", timeout=30).status_code == 200,
            timeout_s=120,
            interval_s=0.5,
            what="the second replica healthy",
        )
        yield f"{url}/second"
    finally:
        serve.delete("fraud-second-replica")


def _card_transactions(tag: str, start: pd.Timestamp) -> list[dict[str, Any]]:
    """One card buying every 4 minutes at two shops of its own (no other test's rows share its windows)."""
    return [
        {
            "transaction_id": f"{tag}-{turn}",
            "user_id": f"{tag}-card",
            "merchant_id": f"{tag}-shop{turn % 2}",
            "amount": 30.0 + turn,
            "timestamp": format_timestamp(start + pd.Timedelta(minutes=4 * turn)),
            "channel": "online",
            "device_id": f"{tag}-device",
            "country": "US",
            "lat": 40.7,
            "lon": -74.0,
        }
        for turn in range(TURNS)
    ]


def _decided(settings: Settings, transaction_id: str) -> bool:
    return any(d["transaction_id"] == transaction_id for d in read_stream(settings, settings.decisions_stream_name))


def test_two_replicas_and_the_stream_see_the_same_velocity_windows_for_one_user(
    served: tuple[str, Settings], second_ingress: str, small_history: Any
) -> None:
    url, settings = served
    # streams of the test's own, but the session's feature state: the one the two replicas share
    on_stream = stream_settings(settings, shards=1).model_copy(
        update={"feature_state_name": settings.feature_state_name}
    )
    tag = f"velocity-{uuid.uuid4().hex[:8]}"
    transactions = _card_transactions(tag, small_history.transactions["timestamp"].max() + pd.Timedelta(hours=2))
    kinesis = client("kinesis", on_stream)
    stream = StreamScoring(on_stream, poll_shards_s=0.5).start()
    try:
        for turn, transaction in enumerate(transactions):  # one at a time: each path sees the others' rows first
            path = PATHS[turn % len(PATHS)]
            if path == "stream":
                put_records_reliably(
                    kinesis,
                    on_stream.stream_name,
                    [{"Data": orjson.dumps(transaction), "PartitionKey": transaction["user_id"]}],
                )
                wait_until(
                    lambda t=transaction["transaction_id"]: _decided(on_stream, t),
                    timeout_s=120,
                    interval_s=0.5,
                    what=f"the stream's decision for turn {turn}",
                )
            else:
                base = url if path == "first replica" else second_ingress
                response = requests.post(f"{base}/api/check-fraud", json=transaction, timeout=120)
                assert response.status_code == 200, response.text
    finally:
        stream.stop()

    features = OnlineFeatures(settings, restore=False).matrix(columns_of([transactions]))  # what each one got
    column = {name: features[:, list(FEATURE_NAMES).index(name)] for name in FEATURE_NAMES}
    assert column["user_count_1h"].tolist() == list(range(1, TURNS + 1)), "every path counted the others' rows"
    np.testing.assert_allclose(column["user_sum_1h"], np.cumsum([t["amount"] for t in transactions]), rtol=1e-6)
    assert column["user_distinct_merchants_1h"].tolist() == [1.0] + [2.0] * (TURNS - 1)
    assert column["first_time_at_merchant"].tolist() == [1.0, 1.0] + [0.0] * (TURNS - 2)
