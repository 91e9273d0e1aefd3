"""Rollout state transitions, the guard's and the promotion's decisions, per-model stats and the retraining join:
pure functions, no cluster; the stored state on the embedded S3 and a folder."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from cluster.config import Settings
from serve.champion import in_canary
from serve.retrain import training_history
from serve.rollout import (
    MAX_EVENTS,
    GuardBounds,
    RolloutState,
    RolloutStore,
    guard_verdict,
    promotion_verdict,
    record_promotion,
    roll_back,
    start_rollout,
)
from serve.stats import StatsCollector, StatsReporter
from training.registry import ModelRegistry, StaleWrite

BOUNDS = GuardBounds(
    min_rows=100, rate_factor=2.0, rate_slack=0.02, error_slack=0.01, latency_factor=3.0, latency_slack_ms=100.0
)


def test_a_rollout_moves_through_its_states_and_logs_each_change() -> None:
    shadow = start_rollout(None, "v2", 0.0, "retrained", "2026-12-01T10:00:00+00:00")
    assert (shadow.mode, shadow.share, shadow.serving, shadow.served_share) == ("shadow", 0.0, True, 0.0)
    canary = start_rollout(shadow, "v2", 0.3, "by hand", "2026-12-01T11:00:00+00:00")
    assert (canary.mode, canary.share, canary.since) == ("canary", 0.3, "2026-12-01T11:00:00+00:00")
    back = roll_back(canary, "guardrail: alert rate", "2026-12-01T11:05:00+00:00")
    assert (back.mode, back.share, back.version, back.serving) == ("rolled_back", 0.0, "v2", False)
    assert [(e["from"], e["to"], e["reason"]) for e in back.events] == [
        (None, "shadow", "retrained"),
        ("shadow", "canary", "by hand"),
        ("canary", "rolled_back", "guardrail: alert rate"),
    ]
    promoted = record_promotion(back, "v3", "by hand", "2026-12-02T09:00:00+00:00")
    assert (promoted.mode, promoted.version, promoted.serving) == ("promoted", "v3", False)
    assert RolloutState.from_dict(promoted.to_dict()) == promoted


def test_invalid_transitions_are_refused_and_events_stay_bounded() -> None:
    with pytest.raises(ValueError, match="share"):
        start_rollout(None, "v2", 1.5, "typo", "t")
    back = roll_back(start_rollout(None, "v2", 0.5, "go", "t"), "breach", "t")
    with pytest.raises(ValueError, match="nothing to roll back"):
        roll_back(back, "again", "t")
    state = None
    for i in range(MAX_EVENTS + 20):
        state = start_rollout(state, "v2", 0.1, f"change {i}", "t")
    assert len(state.events) == MAX_EVENTS and state.events[-1]["reason"] == f"change {MAX_EVENTS + 19}"


def _figures(
    rows: int, alert: float = 0.03, review: float = 0.05, errors: float = 0.0, p99: float | None = 20.0
) -> dict:
    return {"rows": rows, "alert_rate": alert, "review_rate": review, "error_rate": errors, "latency_p99_ms": p99}


def test_the_guard_waits_for_enough_rows_then_judges_each_bound() -> None:
    champion = _figures(5_000)
    assert guard_verdict(champion, _figures(99, alert=1.0), BOUNDS) is None  # too few challenger rows
    assert guard_verdict(_figures(50), _figures(500, alert=1.0), BOUNDS) is None  # too few champion rows
    assert guard_verdict(champion, None, BOUNDS) is None
    assert guard_verdict(champion, _figures(500, alert=0.08), BOUNDS) is None  # 0.08 <= 2 x 0.03 + 0.02
    assert "alert (HIGH) rate" in guard_verdict(champion, _figures(500, alert=0.081), BOUNDS)
    assert "review (MEDIUM) rate" in guard_verdict(champion, _figures(500, review=0.5), BOUNDS)
    assert "error rate" in guard_verdict(champion, _figures(500, errors=0.02), BOUNDS)
    assert guard_verdict(champion, _figures(500, p99=160.0), BOUNDS) is None  # 160 <= 3 x 20 + 100
    assert "latency p99" in guard_verdict(champion, _figures(500, p99=161.0), BOUNDS)
    assert guard_verdict(champion, _figures(500, p99=None), BOUNDS) is None


def _report(labelled: int, only_champion: int, only_challenger: int, p_value: float) -> dict:
    return {
        "labelled": labelled,
        "significance": {
            "only_champion_correct": only_champion,
            "only_challenger_correct": only_challenger,
            "p_value": p_value,
            "alpha": 0.05,
            "significant": p_value < 0.05,
        },
    }


def test_promotion_needs_enough_labels_significance_and_a_better_challenger() -> None:
    assert "McNemar" in promotion_verdict(_report(300, 2, 30, 0.0001), min_labels=200)
    assert promotion_verdict(_report(150, 2, 30, 0.0001), min_labels=200) is None  # too few labels
    assert promotion_verdict(_report(300, 12, 18, 0.36), min_labels=200) is None  # not significant
    assert promotion_verdict(_report(300, 30, 2, 0.0001), min_labels=200) is None  # the champion is better
    assert promotion_verdict({"labelled": 0, "note": "none yet"}, min_labels=1) is None


def test_stats_count_decisions_alerts_reviews_errors_and_latency_per_model() -> None:
    wall = [1_000.0]
    collector = StatsCollector(wall_clock=lambda: wall[0])

    class Direct:  # the reporter's actor, called in-process
        class record:  # noqa: N801 - mimics an actor method's .remote
            @staticmethod
            def remote(**kwargs):
                collector.record(**kwargs)

    reporter = StatsReporter(flush_every_s=3600, actor=Direct)
    decisions = [
        {
            "transaction_id": f"t{i}",
            "is_fraud": level == "HIGH",
            "risk_level": level,
            "fraud_score": 0.5,
            "model_version": version,
        }
        for i, (level, version) in enumerate([("HIGH", "v2"), ("MEDIUM", "v2"), ("LOW", "v1"), ("LOW", "v1")])
    ]
    reporter.add(scored=4, alerts=1, latency_ms=12.0, decisions=decisions)
    reporter.model_errors("v2", 2)
    reporter.flush()
    wall[0] = 1_010.0
    reporter.add(scored=1, alerts=0, latency_ms=30.0, decisions=[{**decisions[2], "transaction_id": "late"}])
    reporter.flush()
    figures = collector.models_since(0.0)
    assert figures["v2"] == {
        "rows": 4,
        "decisions": 2,
        "high": 1,
        "review": 1,
        "errors": 2,
        "alert_rate": 0.5,
        "review_rate": 0.5,
        "error_rate": 0.5,
        "latency_p99_ms": 12.0,
    }
    assert figures["v1"]["decisions"] == 3 and figures["v1"]["alert_rate"] == 0.0
    assert set(collector.models_since(1_005.0)) == {"v1"}  # only what was served since then


def test_the_canary_draw_is_stable_and_near_its_share() -> None:
    ids = [f"tx-{i}" for i in range(10_000)]
    drawn = [in_canary(tid, 0.3) for tid in ids]
    assert drawn == [in_canary(tid, 0.3) for tid in ids]
    assert abs(sum(drawn) / len(ids) - 0.3) < 0.02
    assert not any(in_canary(tid, 0.0) for tid in ids)


def test_training_history_labels_from_feedback_and_the_label_delay() -> None:
    as_of = datetime(2026, 3, 1, tzinfo=timezone.utc)
    kept = pd.DataFrame(
        {
            "transaction_id": ["old-fraud", "old-quiet", "new-labelled", "new-quiet", "old-quiet"],
            "user_id": "u",
            "merchant_id": "m",
            "amount": 10.0,
            "timestamp": [
                "2026-02-01T10:00:00.000000Z",
                "2026-02-02T10:00:00.000000Z",
                "2026-02-28T10:00:00.000000Z",
                "2026-02-28T11:00:00.000000Z",
                "2026-02-02T10:00:00.000000Z",
            ],
            "fraud_score": 0.1,
            "model_version": "v1",
        }
    )
    feedback = pd.DataFrame(
        {
            "transaction_id": ["old-fraud", "new-labelled", "old-fraud"],
            "is_fraud": [0, 0, 1],
            "reported_at": ["2026-02-03T00:00:00", "2026-02-28T12:00:00", "2026-02-05T00:00:00"],
        }
    )
    history, counts = training_history(kept, feedback, as_of=as_of, label_delay=timedelta(days=7))
    labels = dict(zip(history["transaction_id"], history["is_fraud"]))
    assert labels == {"old-fraud": 1, "old-quiet": 0, "new-labelled": 0}  # the latest report wins; new-quiet waits
    assert counts == {"kept": 4, "labelled": 2, "assumed_genuine": 1, "awaiting_label": 1}
    assert "fraud_score" not in history.columns


@pytest.fixture(params=["s3", "folder"])
def registry(request: pytest.FixtureRequest, tmp_path) -> ModelRegistry:
    """The registry on the embedded S3 (moto's server) and on a local folder: both refuse a stale write."""
    if request.param == "folder":
        return ModelRegistry(root=tmp_path)
    registry = ModelRegistry(request.getfixturevalue("aws_settings"))
    registry.clear_rollout()
    return registry


def test_a_rollout_write_refuses_to_overwrite_a_state_it_did_not_read(registry: ModelRegistry) -> None:
    assert registry.rollout() == (None, None)
    registry.put_rollout({"version": "v1"}, expected=None)
    with pytest.raises(StaleWrite):
        registry.put_rollout({"version": "v2"}, expected=None)  # written by someone else since "none stored"
    stored, tag = registry.rollout()
    registry.put_rollout({"version": "v3"}, expected=tag)
    with pytest.raises(StaleWrite):
        registry.put_rollout({"version": "v4"}, expected=tag)
    assert registry.rollout()[0] == {"version": "v3"}
    registry.clear_rollout()


def test_the_guards_verdict_on_one_rollout_never_undoes_an_operators_newer_one(tmp_path) -> None:
    store = RolloutStore(Settings(data_dir=tmp_path))
    store.write_if_unchanged(start_rollout(None, "v2", 0.3, "by hand", "t0"), None)
    measured, tag = store.read()  # the guard reads the v2 canary and measures it ...
    store.write_if_unchanged(start_rollout(measured, "v3", 0.1, "by hand", "t1"), tag)  # ... an operator moves on
    with pytest.raises(StaleWrite):
        store.write_if_unchanged(roll_back(measured, "guardrail: alert rate", "t2"), tag)
    assert (store.current().version, store.current().mode) == ("v3", "canary")
    assert store.roll_back("by hand").mode == "rolled_back"  # a change re-reads: it applies to the newest state
    assert [e["version"] for e in store.current().events] == ["v2", "v3", "v3"]
