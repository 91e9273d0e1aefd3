"""The dashboard's Monitoring tab helpers, on a view the monitoring actor's own code produced."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from cluster.config import Settings
from serve.monitoring import MonitoringCollector, Reference, count_rows
from simulation.dashboard import DriftHistory, inputs_table, monitoring_summary, rejected_table, worst_features
from training.policy import RiskPolicy
from training.reference import build_reference

NAMES = ("amount", "hour_of_day", "device_missing")


LANE = RiskPolicy(threshold=0.5, medium=0.2, anomaly_review=0.99, anomaly_review_rate=0.005)


def _view(shift: float, lane_rows: int = 0) -> dict:
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.lognormal(3, 1, 5000), rng.integers(0, 24, 5000), rng.random(5000) < 0.05])
    stored = build_reference(x, NAMES, rng.random(5000), inputs={"device_id": 0.05})
    monitor = MonitoringCollector(
        Settings(aws_mode="embedded"), references=lambda version: stored, notify=lambda message: None
    )
    live = x.copy()
    live[:, 0] *= shift
    monitor.record(
        counts={
            "v1": count_rows(
                Reference.parse("v1", stored), live, rng.random(5000), {"device_id": ["d"] * 4000 + [None] * 1000}
            )
        },
        scored=5000,
        rejected={"amount": 3},
        anomaly={"v1": (LANE.to_dict(), np.linspace(0, 1, lane_rows))} if lane_rows else None,
    )
    return monitor.view()


def test_monitoring_tab_ranks_the_worst_features_and_reads_missing_and_rejected_inputs() -> None:
    view = _view(shift=3.0)
    worst = worst_features(view)
    assert list(worst["feature"])[0] == "amount" and worst["psi"].iloc[0] > worst["psi"].iloc[1]
    assert inputs_table(view).to_dict(orient="records") == [
        {"field": "device_id", "missing_rate": 0.2, "at training": 0.05}
    ]
    assert rejected_table(view).to_dict(orient="records") == [{"field": "amount", "rejected": 3}]
    summary = monitoring_summary(view)
    assert "5,000" in summary and "v1" in summary and "precision n/a" in summary


def test_monitoring_tab_says_whether_the_anomaly_lane_is_open_and_at_which_level() -> None:
    assert "Anomaly review lane" not in monitoring_summary(_view(shift=1.0))  # a model without a live lane
    closed = monitoring_summary(_view(shift=1.0, lane_rows=1_000))
    assert "closed until it has seen 4,000 transactions (1,000 so far" in closed
    opened = monitoring_summary(_view(shift=1.0, lane_rows=5_000))
    assert "the 0.50% most unusual of the newest 5,000 transactions" in opened
    assert "live level **0.9950** (trained 0.9900)" in opened


def test_worst_features_show_every_drifted_feature_even_beyond_the_table_length() -> None:
    psi = {f"feature_{i}": 1.0 - i / 20 for i in range(12)}
    drifted = ["feature_1", "feature_10"]  # one inside the top rows, one below them (hysteresis lags the PSI)
    view = {"features": {name: {"psi": value, "missing_rate": 0.0} for name, value in psi.items()}, "drifted": drifted}
    worst = worst_features(view, count=4)
    assert list(worst["feature"]) == ["feature_0", "feature_1", "feature_2", "feature_3", "feature_10"]
    assert list(worst["drifted"]) == [False, True, False, False, True]
    assert worst["psi"].is_monotonic_decreasing


def test_drift_history_gives_a_long_frame_per_feature() -> None:
    history = DriftHistory(points=2)
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    for minute, shift in enumerate((1.0, 2.0, 3.0)):
        history.observe(_view(shift), start + timedelta(minutes=minute))
    frame = history.frame(["amount", "hour_of_day"])
    assert len(frame) == 4 and set(frame["feature"]) == {"amount", "hour_of_day"}  # the oldest point dropped
    amount = frame[frame["feature"] == "amount"]["psi"].tolist()
    assert amount[0] < amount[1]
