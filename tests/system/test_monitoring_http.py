"""GET /api/monitoring on the session's Serve app: a scored batch shows up as scored rows and per-feature figures
against the champion's reference, a rejected request counts its field, and feedback moves the labelled count; the
stream's consumers report to the same monitoring actor, invalid records by field."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import ray
import requests

from cluster.aws import client
from cluster.config import Settings
from cluster.features import FEATURE_NAMES
from cluster.kinesis import put_records_reliably, read_stream, to_entries
from cluster.waiting import wait_until
from serve.monitoring import monitoring_actor
from serve.stream import StreamScoring
from tests.conftest import API_KEY
from tests.streams import own_streams, stop_feature_state


def _monitoring(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/api/monitoring", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_scored_rows_feature_drift_rejected_fields_and_labels_show_in_monitoring(
    served: tuple[str, Settings], champion_model: str, small_history: Any
) -> None:
    url, _ = served
    before = _monitoring(url)
    frame = small_history.transactions.tail(300).drop(columns=["is_fraud", "fraud_scenario"])
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    run = uuid.uuid4().hex[:8]
    batch = [
        {key: value for key, value in row.items() if value is not None and value == value}
        | {"transaction_id": f"mon-{run}-{i}"}
        for i, row in enumerate(frame.to_dict(orient="records"))
    ]
    scored = requests.post(f"{url}/api/check-fraud/batch", json={"transactions": batch}, timeout=120)
    assert scored.status_code == 200, scored.text
    bad = requests.post(f"{url}/api/check-fraud", json={**batch[0], "amount": -5}, timeout=30)
    assert bad.status_code == 422

    def counted() -> dict[str, Any] | None:
        view = _monitoring(url)
        return view if view["scored"] >= before["scored"] + len(batch) else None

    view = wait_until(counted, timeout_s=30, interval_s=0.5, what="the batch counted in /api/monitoring")
    assert view["reference"]["rows"] > 0 and view["window_s"] > 0
    assert view["compared_rows"] >= len(batch)
    assert set(view["features"]) == set(FEATURE_NAMES)
    assert all(np.isfinite(view["features"][name]["psi"]) for name in FEATURE_NAMES)
    assert view["features"]["amount"]["missing_rate"] == 0.0 and view["score"]["psi"] is not None
    assert (
        view["rejected_inputs"]["by_field"].get("amount", 0)
        >= before["rejected_inputs"]["by_field"].get("amount", 0) + 1
    )
    assert set(view["labelled"]) >= {"count", "coverage", "precision", "recall", "average_precision"}

    labels = {item["transaction_id"]: i % 2 for i, item in enumerate(scored.json()["results"][:6])}
    for transaction_id, label in labels.items():
        accepted = requests.post(
            f"{url}/api/feedback",
            json={"transaction_id": transaction_id, "is_fraud": label},
            headers={"X-API-Key": API_KEY},
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
    labelled = wait_until(
        lambda: (v := _monitoring(url))["labelled"]["count"] >= view["labelled"]["count"] + 6 and v,
        timeout_s=30,
        interval_s=0.5,
        what="the labels joined in /api/monitoring",
    )
    assert labelled["labelled"]["coverage"] > 0 and labelled["labelled"]["recall"] is not None


def test_stream_scored_rows_and_invalid_records_reach_the_monitoring_actor(
    ray_session: Settings, champion_model: str, small_history: Any
) -> None:
    settings = own_streams(ray_session, 1, "mon-in")
    actor = monitoring_actor(settings)
    before = ray.get(actor.view.remote())
    frame = small_history.transactions.tail(200).reset_index(drop=True).copy()
    frame["transaction_id"] = [f"mon-stream-{uuid.uuid4().hex[:6]}-{i}" for i in range(len(frame))]
    kinesis = client("kinesis", settings)
    put_records_reliably(kinesis, settings.stream_name, to_entries(frame))
    put_records_reliably(
        kinesis, settings.stream_name, [{"Data": b'{"transaction_id": "bad", "amount": -1}', "PartitionKey": "bad"}]
    )
    stream = StreamScoring(settings, poll_shards_s=0.5).start()
    try:
        wait_until(
            lambda: len(read_stream(settings, settings.decisions_stream_name)) >= len(frame),
            timeout_s=240,
            interval_s=1.0,
            what="a decision for every streamed transaction",
        )
    finally:
        stream.stop()  # a stopping consumer flushes what it noted
        stop_feature_state(settings)
    view = wait_until(
        lambda: (v := ray.get(actor.view.remote()))["scored"] >= before["scored"] + len(frame) and v,
        timeout_s=30,
        interval_s=0.5,
        what="the stream's rows in the monitoring actor",
    )
    assert view["compared_rows"] >= before["compared_rows"] + len(frame)
    by_field, earlier = view["rejected_inputs"]["by_field"], before["rejected_inputs"]["by_field"]
    assert by_field.get("amount", 0) == earlier.get("amount", 0) + 1
    assert by_field.get("user_id", 0) == earlier.get("user_id", 0) + 1
