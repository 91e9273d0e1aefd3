"""GET /api/monitoring on the session's Serve app: a scored batch shows up as scored rows and per-feature figures
against the champion's reference, a rejected request counts its field, and feedback moves the labelled count."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import requests

from cluster.config import Settings
from cluster.features import FEATURE_NAMES
from cluster.waiting import wait_until
from tests.conftest import API_KEY


def _monitoring(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/api/monitoring", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_scored_rows_feature_drift_rejected_fields_and_labels_show_in_monitoring(
        served: tuple[str, Settings], champion_model: str, small_history: Any) -> None:
    url, _ = served
    before = _monitoring(url)
    frame = small_history.transactions.tail(300).drop(columns=["is_fraud", "fraud_scenario"])
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    run = uuid.uuid4().hex[:8]
    batch = [{key: value for key, value in row.items() if value is not None and value == value}
             | {"transaction_id": f"mon-{run}-{i}"} for i, row in enumerate(frame.to_dict(orient="records"))]
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
    assert view["rejected_inputs"]["by_field"].get("amount", 0) >= before["rejected_inputs"]["by_field"].get(
        "amount", 0) + 1
    assert set(view["labelled"]) >= {"count", "coverage", "precision", "recall", "average_precision"}

    labels = {item["transaction_id"]: i % 2 for i, item in enumerate(scored.json()["results"][:6])}
    for transaction_id, label in labels.items():
        accepted = requests.post(f"{url}/api/feedback", json={"transaction_id": transaction_id, "is_fraud": label},
                                 headers={"X-API-Key": API_KEY}, timeout=30)
        assert accepted.status_code == 202, accepted.text
    labelled = wait_until(lambda: (v := _monitoring(url))["labelled"]["count"] >= view["labelled"]["count"] + 6
                          and v, timeout_s=30, interval_s=0.5, what="the labels joined in /api/monitoring")
    assert labelled["labelled"]["coverage"] > 0 and labelled["labelled"]["recall"] is not None
