"""The anomaly review lane's live level through real actors: scoring reports anomaly scores to a monitoring actor,
the scorer reads the level back, the lane stays closed until it can hold its budget, then sends about its rate of
the traffic to review whatever the trained level would have done on a cold feature state."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import replace
from typing import Any

import numpy as np
import ray

from cluster.config import Settings
from cluster.waiting import wait_until
from serve.monitoring import LaneLevels, MonitoringCollector, MonitoringReporter
from serve.scoring import ModelSet
from serve.sdk import FraudDetector
from training.policy import LANE_MIN_REVIEWS

BATCH = 500
TRAINED_LEVEL = 0.9  # a validation period quieter than live traffic: this level would review far beyond the rate


def test_the_live_lane_opens_once_it_can_hold_its_rate_and_then_holds_it(
    ray_session: Settings, champion_model: str, small_history: Any
) -> None:
    settings = ray_session.model_copy(update={"rules_refresh_s": 0.01})
    collector = ray.remote(MonitoringCollector).options(num_cpus=0).remote(settings)  # this test's own window
    reporter = MonitoringReporter(settings, actor=collector)
    lanes = LaneLevels(settings, actor=collector)
    detector = FraudDetector(settings, feature_state=f"lane-{uuid.uuid4().hex[:8]}", monitor=reporter, lanes=lanes)
    assert detector.bundle.ensemble.policy.live_lane, "the session's bundles are trained with a lane rate"
    policy = replace(detector.bundle.ensemble.policy, anomaly_review=TRAINED_LEVEL)
    detector.bundle = replace(detector.bundle, ensemble=replace(detector.bundle.ensemble, policy=policy))
    to_open = policy.lane_min_rows()
    assert to_open == math.ceil(LANE_MIN_REVIEWS / policy.anomaly_review_rate)
    frame = small_history.transactions.drop(columns=["is_fraud", "fraud_scenario"]).reset_index(drop=True)
    assert len(frame) >= to_open + 4 * BATCH

    def score(rows: Any) -> list[dict[str, Any]]:
        decisions = detector.predict_batch(rows)
        ray.get(reporter.flush())  # recorded, and the level read back, before the next batch
        kept = ray.get(collector.lane_levels.remote())[detector.version]
        wait_until(lambda: lanes.level(detector.bundle) == kept, timeout_s=10, interval_s=0.02, what="the level read")
        return decisions

    try:
        warm = FraudDetector(  # the same feature state, warmed on the earlier rows without reporting them
            settings,
            feature_state=detector.features.name,
            lanes=LaneLevels(settings.model_copy(update={"anomaly_review_live": False})),
        )
        for start in range(0, len(frame) - to_open - 4 * BATCH, 2000):
            warm.predict_batch(frame.iloc[start : start + 2000])
        frame = frame.iloc[len(frame) - to_open - 4 * BATCH :]
        before = [d for start in range(0, to_open, BATCH) for d in score(frame.iloc[start : start + BATCH])]
        assert not any(d["anomaly_review"] for d in before), "closed while fewer rows than the lane needs were seen"
        anomaly = np.array([d["anomaly_score"] for d in before])
        trained_share = float(policy.in_anomaly_lane(anomaly).mean())

        level = lanes.level(detector.bundle)
        assert np.isfinite(level) and level >= policy.anomaly_review
        assert level == max(policy.anomaly_review, float(np.quantile(anomaly, 1 - policy.anomaly_review_rate)))
        after = [
            d for start in range(to_open, to_open + 4 * BATCH, BATCH) for d in score(frame.iloc[start : start + BATCH])
        ]
        reviewed = [d for d in after if d["anomaly_review"]]
        in_lane = float(np.mean([d["anomaly_score"] >= level for d in after]))
        assert trained_share > 10 * policy.anomaly_review_rate, "the trained level alone floods the queue"
        assert in_lane <= 4 * policy.anomaly_review_rate, (in_lane, trained_share)
        assert reviewed and all(d["risk_level"] == "MEDIUM" and not d["is_fraud"] for d in reviewed)
        assert all("Unusual pattern (autoencoder)" in d["factors"] for d in reviewed)
        assert all(d["anomaly_score"] >= policy.anomaly_review for d in reviewed)
        view = ray.get(collector.view.remote())["anomaly_review"][detector.version]
        assert view["open"] and view["window_rows"] == to_open + 4 * BATCH and view["rows_to_open"] == to_open
    finally:
        detector.features.shutdown()
        ray.kill(collector)


def test_lane_levels_keep_the_last_read_through_a_lost_actor_and_close_without_monitoring(
    ray_session: Settings, champion_model: str
) -> None:
    settings = ray_session.model_copy(update={"rules_refresh_s": 0.01})
    collector = ray.remote(MonitoringCollector).options(num_cpus=0).remote(settings)
    bundle = ModelSet(settings).scorer(champion_model).bundle
    policy = bundle.ensemble.policy
    scores = np.linspace(0.0, 1.0, policy.lane_min_rows())
    ray.get(collector.record.remote(anomaly={bundle.version: (policy.to_dict(), scores)}))
    lanes = LaneLevels(settings, actor=collector)
    want = max(policy.anomaly_review, float(np.quantile(scores, 1 - policy.anomaly_review_rate)))
    assert lanes.level(bundle) == want  # the first read waits for the cluster's level
    ray.kill(collector)
    for _ in range(25):  # reads fail from now on: the last level stays
        assert lanes.level(bundle) == want
        time.sleep(0.02)
    assert np.isinf(LaneLevels(settings.model_copy(update={"monitoring_enabled": False})).level(bundle))
    assert LaneLevels(settings.model_copy(update={"anomaly_review_live": False})).level(bundle) is None
